#!/usr/bin/env bash
# Fuzz smp's parsers with libFuzzer (docs/fuzzing.md): builds the fuzz targets alone with clang
# and AddressSanitizer + UndefinedBehaviorSanitizer in build-fuzz/, runs each for N inputs, and
# ends with one line:
#   RESULT fuzz targets=<n> execs=<total> crashes=<c> timeouts=<t>
# Exits non-zero on any crash (a finding, an escaped exception, a sanitizer report, an
# out-of-memory) or timeout (one input running longer than SMP_FUZZ_TIMEOUT seconds).
#   scripts/fuzz.sh [runs_per_target]          default 1000000
# Environment: SMP_FUZZ_TARGETS="config manifest" (default: all), SMP_JOBS (build jobs, 2),
# SMP_FUZZ_CXX (the clang++ to build with; default: the newest clang++-NN, 16 or later),
# SMP_FUZZ_TIMEOUT (seconds per input, 10), SMP_FUZZ_RSS_MB (memory limit, 4096).
# Each target runs on build-fuzz/fuzz/<name>/corpus, which starts as a copy of its seeds
# (tests/fuzz/corpus/<name>) and keeps what libFuzzer finds there (the checked-in corpus is not
# touched); crash inputs land in build-fuzz/fuzz/<name>/artifacts/, the log in .../fuzz.log.
# A crash input that shows a bug goes to tests/fuzz/corpus/<name>/ once fixed (a regression).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

runs=${1:-1000000}
read -r -a targets <<< "${SMP_FUZZ_TARGETS:-config train_config safetensors token_shard manifest}"
timeout_s=${SMP_FUZZ_TIMEOUT:-10}
rss_mb=${SMP_FUZZ_RSS_MB:-4096}

for t in "${targets[@]}"; do
  if [ -z "$(ls -A tests/fuzz/corpus/"$t" 2>/dev/null)" ]; then
    echo "fuzz: no seeds in tests/fuzz/corpus/$t (targets: config train_config safetensors token_shard manifest)" >&2
    exit 1
  fi
done

# --- build: the targets and what they link, nothing else (mirrors scripts/setup.sh) -------------
export CCACHE_DIR=${CCACHE_DIR:-$HOME/.cache/smp-ccache}
export CCACHE_BASEDIR=$root
export CCACHE_NOHASHDIR=1
export CCACHE_SLOPPINESS=pch_defines,time_macros,include_file_mtime,include_file_ctime
export CUDACXX=${CUDACXX:-/usr/local/cuda/bin/nvcc}
# The compiler: $SMP_FUZZ_CXX, else the newest clang++-NN (16 or later) installed, else clang++.
# Clang before 16 cannot build smp: src/parallel/distributed_model.cpp captures a structured
# binding in a lambda (C++20; g++ and clang 16 accept it in C++17). Debian 12:
# apt-get install clang-16 libclang-rt-16-dev.
cxx=${SMP_FUZZ_CXX:-}
if [ -z "$cxx" ]; then
  for v in 22 21 20 19 18 17 16; do
    if command -v "clang++-$v" >/dev/null; then cxx=clang++-$v; break; fi
  done
fi
cxx=${cxx:-clang++}
command -v "$cxx" >/dev/null || { echo "fuzz: no $cxx; install clang (16 or later) and its libFuzzer" >&2; exit 1; }
cxx=$(command -v "$cxx")
if [ -f build-fuzz/CMakeCache.txt ] && ! grep -qx "CMAKE_CXX_COMPILER:[A-Z]*=$cxx" build-fuzz/CMakeCache.txt; then
  rm -rf build-fuzz/CMakeCache.txt build-fuzz/CMakeFiles build-fuzz/build.ninja  # another compiler
fi
if [ ! -f build-fuzz/build.ninja ]; then
  [ -x .venv/bin/python ] || { echo "fuzz: no .venv; run scripts/setup.sh first" >&2; exit 1; }
  prefix=$(.venv/bin/python -c "import torch.utils; print(torch.utils.cmake_prefix_path)")
  # Libraries: coverage for libFuzzer, ASan, UBSan (every report fatal). The targets add
  # -fsanitize=fuzzer (tests/fuzz/CMakeLists.txt, SMP_FUZZ). No NDEBUG: asserts stay on.
  sanitize="-fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer"
  cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
        -DCMAKE_CXX_COMPILER="$cxx" \
        -DCMAKE_CXX_FLAGS="$sanitize" -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -gline-tables-only" \
        -DCMAKE_PREFIX_PATH="$prefix" -DPython3_EXECUTABLE="$root/.venv/bin/python" \
        -DCUDAToolkit_ROOT=/usr/local/cuda -DSMP_FUZZ=ON >/dev/null
fi
names=()
for t in "${targets[@]}"; do names+=("${t}_fuzz"); done
nice -n 10 ninja -C build-fuzz -j "${SMP_JOBS:-2}" "${names[@]}"

# --- run -------------------------------------------------------------------------------------
export OMP_NUM_THREADS=1
export ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1:symbolize=1:allocator_may_return_null=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
total_execs=0 crashes=0 timeouts=0
for t in "${targets[@]}"; do
  work=build-fuzz/fuzz/$t
  mkdir -p "$work/corpus" "$work/artifacts"
  for seed in tests/fuzz/corpus/"$t"/*; do
    [ -e "$work/corpus/${seed##*/}" ] || cp "$seed" "$work/corpus/"
  done
  before=$(ls "$work/artifacts")
  rc=0
  nice -n 10 build-fuzz/tests/fuzz/"${t}_fuzz" -runs="$runs" -timeout="$timeout_s" \
    -rss_limit_mb="$rss_mb" -artifact_prefix="$work/artifacts/" -print_final_stats=1 \
    "$work/corpus" > "$work/fuzz.log" 2>&1 || rc=$?
  # Executions: libFuzzer's final stats, else "Done N runs", else its last "#N" status line.
  execs=$(sed -n 's/^stat::number_of_executed_units: *\([0-9]*\).*/\1/p' "$work/fuzz.log" | tail -1)
  [ -n "$execs" ] || execs=$(sed -n 's/^Done \([0-9]*\) runs.*/\1/p' "$work/fuzz.log" | tail -1)
  [ -n "$execs" ] || execs=$(sed -n 's/^#\([0-9]*\)[[:space:]].*/\1/p' "$work/fuzz.log" | tail -1)
  [ -n "$execs" ] || execs=0
  per_s=$(sed -n 's/^stat::average_exec_per_sec: *\([0-9]*\).*/\1/p' "$work/fuzz.log" | tail -1)
  new=$(comm -13 <(printf '%s\n' "$before" | sort) <(ls "$work/artifacts" | sort) | grep . || true)
  t_timeouts=$(printf '%s\n' "$new" | grep -c '^timeout-' || true)
  t_crashes=$(printf '%s\n' "$new" | grep -cE '^(crash|leak|oom|slow-unit)-' || true)
  if [ "$rc" -ne 0 ] && [ "$t_crashes" -eq 0 ] && [ "$t_timeouts" -eq 0 ]; then
    t_crashes=1  # died without an artifact (a failed start, a signal): still a failure
  fi
  total_execs=$((total_execs + execs))
  crashes=$((crashes + t_crashes))
  timeouts=$((timeouts + t_timeouts))
  echo "fuzz $t: execs=$execs exec/s=${per_s:-?} corpus=$(ls "$work/corpus" | wc -l) crashes=$t_crashes timeouts=$t_timeouts rc=$rc"
  if [ "$t_crashes" -gt 0 ] || [ "$t_timeouts" -gt 0 ]; then
    grep -m1 -A12 -E 'FUZZ FINDING|ERROR: (AddressSanitizer|libFuzzer|LeakSanitizer)|runtime error|ALARM' \
      "$work/fuzz.log" | sed 's/^/    /' || true
    for a in $new; do echo "    input: $work/artifacts/$a"; done
  fi
done
echo "RESULT fuzz targets=${#targets[@]} execs=$total_execs crashes=$crashes timeouts=$timeouts"
[ "$crashes" -eq 0 ] && [ "$timeouts" -eq 0 ]
