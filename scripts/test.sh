#!/usr/bin/env bash
# Set up (if needed) and run every smp test: unit tests and multi-rank tests under mpirun, then
# (with no arguments) every multi-rank test a second time under NCCL's rules (SMP_EMULATE_NCCL=1,
# see docs/architecture.md). Exits non-zero if any test fails; the summary is the last lines.
#   scripts/test.sh [ctest args...]     e.g. scripts/test.sh -L unit,  scripts/test.sh -R p2p
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export OMP_NUM_THREADS=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
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
