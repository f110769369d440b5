#!/usr/bin/env bash
# Set up (if needed) and run every smp test: unit tests and multi-rank tests under mpirun, then
# (with no arguments) every multi-rank test a second time under NCCL's rules (SMP_EMULATE_NCCL=1,
# see docs/architecture.md). Exits non-zero if any test fails; the summary is the last lines.
#   scripts/test.sh [ctest args...]     e.g. scripts/test.sh -L unit,  scripts/test.sh -R p2p
#   scripts/test.sh --sanitize [ctest args...]
#       builds the tests with AddressSanitizer (LeakSanitizer) + UBSan into build-sanitize/ and
#       runs the unit tests and the two-rank (*_np2) dist tests there, or the tests the ctest
#       args select (e.g. --sanitize -R p2p_test_np2); any sanitizer report fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."
sanitize=0
if [ "${1:-}" = "--sanitize" ]; then
  sanitize=1
  shift
fi
bash scripts/setup.sh
export OMP_NUM_THREADS=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

if [ $sanitize -eq 1 ]; then
  # --- ASan + UBSan (cmake/sanitize.cmake), in build-sanitize/ beside build/ -----------------
  root=$(pwd)
  dir=build-sanitize
  export CCACHE_DIR=${CCACHE_DIR:-$HOME/.cache/smp-ccache}  # as setup.sh: one cache for both
  export CCACHE_BASEDIR=$root CCACHE_NOHASHDIR=1
  export CCACHE_SLOPPINESS=pch_defines,time_macros,include_file_mtime,include_file_ctime
  export CUDACXX=${CUDACXX:-/usr/local/cuda/bin/nvcc}
  if ! grep -qs '^SMP_SANITIZE:BOOL=ON$' $dir/CMakeCache.txt || [ ! -f $dir/build.ninja ]; then
    prefix=$(.venv/bin/python -c "import torch.utils; print(torch.utils.cmake_prefix_path)")
    nice -n 10 cmake -S . -B $dir -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
          -DCMAKE_PREFIX_PATH="$prefix" -DPython3_EXECUTABLE="$root/.venv/bin/python" \
          -DCUDAToolkit_ROOT=/usr/local/cuda -DSMP_SANITIZE=ON
  fi
  # The tests: without args, label unit and the dist tests on two ranks (not the Python front's,
  # whose uninstrumented interpreter cannot load an ASan smp._C without preloading libasan, nor
  # the GPU-only ones); then only the executables those tests run are built (not apps, benches,
  # smp._C). Targets: a test's executable, or its name less _np<n> (before the first build
  # ctest does not resolve a command whose file is missing).
  nice -n 10 ninja -C $dir build.ninja >/dev/null  # re-run CMake if a CMakeLists changed
  ninja -C $dir -t targets all | sed -n 's/^\([A-Za-z0-9_.+-]*\): phony$/\1/p' > $dir/targets.txt
  ctest --test-dir $dir -N --show-only=json-v1 "$@" > $dir/selection.json
  mapfile -t sel < <(.venv/bin/python - "$dir" $# <<'PY'
import json, os, re, sys
d, nargs = os.path.abspath(sys.argv[1]), int(sys.argv[2])
targets = set(open(os.path.join(d, "targets.txt")).read().split())
names, build = [], set()
for t in json.load(open(os.path.join(d, "selection.json")))["tests"]:
    labels = next((p["value"] for p in t.get("properties", []) if p["name"] == "LABELS"), [])
    if nargs == 0 and not ("unit" in labels or ("dist" in labels and t["name"].endswith("_np2"))):
        continue
    if nargs == 0 and t["name"] in ("nccl_test_np1", "loss_parity_test_gpu"):
        continue
    names.append(t["name"])
    cands = {re.sub(r"_np[0-9]+$", "", t["name"])}
    cands |= {os.path.basename(a) for a in (t.get("command") or []) if a.startswith(d + "/")}
    build |= cands & targets
print("^(" + "|".join(map(re.escape, names)) + ")$" if names else "^$")
print(" ".join(sorted(build)))
PY
)
  regex=${sel[0]}
  read -r -a targets <<< "${sel[1]:-}"
  if [ ${#targets[@]} -gt 0 ]; then
    nice -n 10 cmake --build $dir -j "${SMP_JOBS:-2}" --target "${targets[@]}"
  fi
  # Every finding ends its process (ASan halts on the first; UBSan too, -fno-sanitize-recover=
  # undefined; abort_on_error so a rank's death is a signal mpiexec reports), so its test fails,
  # and --output-on-failure prints the report with it. Open MPI hands mpiexec's environment to its
  # ranks. LeakSanitizer's suppressions name third-party libraries only (lsan.supp says why);
  # they match only whole stacks, which the uninstrumented libraries' missing frame pointers cut
  # short unless malloc unwinds slowly (fast_unwind_on_malloc=0).
  export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:halt_on_error=1:fast_unwind_on_malloc=0:check_initialization_order=1:strict_init_order=1"
  export LSAN_OPTIONS="suppressions=$root/tests/sanitize/lsan.supp:print_suppressions=0"
  export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:abort_on_error=1"
  status=0
  # The tests' own TIMEOUTs (300-600 s) are kept: the slowest here, pipeline_test_np2, takes about
  # 2 minutes under the sanitizers (8 s without; most of it is the slow unwinding of mallocs).
  if [ $# -eq 0 ]; then
    ctest --test-dir $dir --output-on-failure --timeout 600 -R "$regex" | tee $dir/last-test.log || status=$?
  else
    ctest --test-dir $dir --output-on-failure --timeout 600 "$@" | tee $dir/last-test.log || status=$?
  fi
  pattern='ERROR: (AddressSanitizer|LeakSanitizer)|runtime error: '
  reports=$(grep -cE "$pattern" $dir/last-test.log || true)
  [ "$reports" -eq 0 ] || status=1
  echo
  echo "smp tests under ASan+UBSan ($dir): $(grep -E 'tests passed' $dir/last-test.log || echo 'no summary (ctest failed to run)');" \
       "$reports sanitizer report(s)$([ "$reports" -eq 0 ] || echo " (above: grep -E '$pattern' $dir/last-test.log)")"
  exit $status
fi

status=0
ctest --test-dir build --output-on-failure --timeout 600 "$@" | tee build/last-test.log || status=$?
emulated="not run (arguments given)"
if [ $# -eq 0 ]; then
  # The GPU-only tests and Slurm's would only skip again.
  SMP_EMULATE_NCCL=1 ctest --test-dir build --output-on-failure --timeout 600 -L dist \
    -E '^(nccl_test_np1|loss_parity_test_gpu|slurm_test)$' | tee build/last-emulated.log \
    || status=$?
  emulated=$(grep -E 'tests passed' build/last-emulated.log || echo 'no summary (ctest failed to run)')
fi
echo
skipped=$(grep -cE '^[[:space:]]*[0-9]+ - .* \(Skipped\)$' build/last-test.log || true)
echo "smp tests: $(grep -E 'tests passed' build/last-test.log || echo 'no summary (ctest failed to run)');" \
     "$skipped skipped (listed above: they could not run here, they did not pass)"
echo "under NCCL's rules (SMP_EMULATE_NCCL=1), the multi-rank tests: $emulated"
exit $status
