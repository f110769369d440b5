#!/usr/bin/env bash
# Benchmark: how well smp-plan predicts. Two parts, in one run:
#   published  smp-plan --validate on tests/plan/published_runs.json: Megatron-LM's and
#              DeepSpeed's published runs (Narayanan et al. 2021, Tables 1 and 2; Korthikanti
#              et al. 2022) and ZeRO's model-state figures, each predicted from the run's
#              stated layout (target: median relative error <= 0.10)
#   measured   this machine: bench/planner/machine_probe measures its compute and links
#              (the "this machine, measured" cluster), bench/planner/measure.sh trains 12
#              smp-train layouts (1, 2 and 4 ranks; pp, tp, dp, sdp, microbatches, schedules,
#              activation checkpointing), and smp-plan --fit predicts each run's step time and
#              peak memory from constants fitted to the other runs (leave one out; target:
#              median relative error <= 0.15)
# About 2 minutes. The fitted cluster stays in $SMP_PLANNER_OUT (default: a temporary folder).
# Ends with: RESULT planner published_median_rel_err=<x> measured_median_rel_err=<x> cases=<n>
set -euo pipefail
script=planner.sh
source "$(dirname "$0")/common.sh"  # cd to the root; build, mpi_flags, OMP_NUM_THREADS=1
for exe in apps/smp-plan apps/smp-train bench/planner/machine_probe; do
  [ -x "$build/$exe" ] || bash scripts/setup.sh
done
if [ -n "${SMP_PLANNER_OUT:-}" ]; then out=$SMP_PLANNER_OUT; mkdir -p "$out"; else make_out_dir; fi

"$build/apps/smp-plan" --validate tests/plan/published_runs.json | tee "$out/published.txt"
mpirun "${mpi_flags[@]}" -np 2 "$build/bench/planner/machine_probe" --out "$out/local.json" > /dev/null
echo "this machine, measured ($out/local.json):"; cat "$out/local.json"
bash bench/planner/measure.sh "$out/measured.jsonl" > /dev/null
"$build/apps/smp-plan" --fit "$out/measured.jsonl" --cluster "$out/local.json" \
  --out "$out/local_fitted.json" | tee "$out/measured.txt"

published=$(sed -n 's/^published runs: \([0-9]*\), median relative error \([0-9.]*\).*/\1 \2/p' "$out/published.txt")
measured=$(sed -n 's/^measured runs: \([0-9]*\), median relative error \([0-9.]*\).*/\1 \2/p' "$out/measured.txt")
read -r n_published err_published <<< "$published"
read -r n_measured err_measured <<< "$measured"
echo "RESULT planner published_median_rel_err=$err_published measured_median_rel_err=$err_measured" \
     "cases=$((n_published + 2 * n_measured))"
