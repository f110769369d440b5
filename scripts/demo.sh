#!/usr/bin/env bash
# The README's first command: set up, then train a small GPT on the King James Bible on 4 ranks
# as pp=2 x tp=2 (configs/bible.json): the pipeline and tensor parallelism both at work, each
# rank holding a quarter of the model. A few minutes on 2 cores. It prints the validation loss
# beside the corpus's unigram entropy, a sample, and the run directory (runs/bible) with the
# loss curves and a pipeline timeline as SVG.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
mkdir -p runs
[ -s runs/kjv.txt ] || bible "gen1:1-rev22:21" > runs/kjv.txt
export OMP_NUM_THREADS=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
rm -rf runs/bible
mpirun --oversubscribe --bind-to none -np 4 build/apps/smp-train --config "${1:-configs/bible.json}"
