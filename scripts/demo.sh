#!/usr/bin/env bash
# The README's first command: set up, then run smp's main job on 4 ranks.
# Until smp-train exists (issue: the main job) this is the communication demo: a pp=2 x tp=2
# layout, every group exercised and checked.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export OMP_NUM_THREADS=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
mpirun --oversubscribe --bind-to none -np "${SMP_RANKS:-4}" build/apps/smp-comm-demo "$@"
