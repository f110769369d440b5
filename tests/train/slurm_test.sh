#!/usr/bin/env bash
# smp-train under Slurm (issue 6: "the same under Slurm's srun"). Needs a reachable Slurm
# cluster with Slurm's PMIx plugin; exits 77 (ctest's "skipped") when there is none.
#   1. `srun --mpi=pmix -n 4` trains pp=2 x tp=2 with a checkpoint at step 4: its losses equal
#      the same run under mpirun bit for bit;
#   2. a run resumed under srun from the mpirun run's checkpoint continues its curve bit for bit;
#   3. examples/slurm/smp-train.sbatch, submitted with `sbatch --wait`, finishes the run;
#   4. a rank count that does not fit the layout ends every task with the layout message.
#   slurm_test.sh <smp-train> <mpiexec> <repository root>
source "$(dirname "${BASH_SOURCE[0]}")/../testing/preamble.sh"
train=$(realpath "$1")
mpiexec=$2
root=$3
if ! command -v srun >/dev/null || ! timeout 20 sinfo -h -t idle,mix,alloc -o %n 2>/dev/null | grep -q .; then
  echo "skipped: no Slurm cluster answers here (srun/sinfo)"; exit 77
fi
make_work_dir slurm_test
write_text "$work/text.txt"

config() {  # config <name> <checkpoint json>
  cat > "$work/$1.json" <<JSON
{"model": {"name": "tiny", "num_layers": 2, "max_seq_len": 32},
 "data": {"text": "$work/text.txt"},
 "training": {"steps": 8, "global_batch": 8, "seq_len": 32, "val_every": 4, "val_batches": 1,
              "sample_tokens": 4},
 "checkpoint": $2,
 "smp": {"pipeline_parallel_degree": 2, "tensor_parallel_degree": 2, "ddp": true,
         "microbatches": 2, "comm_timeout_s": 20},
 "run_dir": "$work/runs/$1"}
JSON
}

same_losses() {  # same_losses <reference run> <run>: every step the run made, bit for bit
  python3 - "$work/runs/$1/metrics.jsonl" "$work/runs/$2/metrics.jsonl" <<'PY'
import json, sys
def losses(path):
    return {j["step"]: j["loss"] for j in map(json.loads, open(path)) if "tokens_per_s" in j}
ref, got = losses(sys.argv[1]), losses(sys.argv[2])
bad = [s for s in got if got[s] != ref.get(s)]
if not got or bad:
    print(f"steps {sorted(got)}; differing: {[(s, got[s], ref.get(s)) for s in bad]}"); sys.exit(1)
print(f"steps {min(got)}-{max(got)} equal bit for bit")
PY
}

report() {  # report <name> <rc> <output>: the run must have succeeded
  if [ "$2" -ne 0 ]; then echo "FAIL $1: exit $2"; echo "$3" | tail -20; failed=1; return 1; fi
}

export OMP_NUM_THREADS=1
config mpirun '{"every": 4, "keep": 0}'
out=$(timeout 180 "$mpiexec" "${mpirun_flags[@]}" -np 4 "$train" --config "$work/mpirun.json" 2>&1)
report mpirun $? "$out" || exit 1

# 1. The same run under srun.
config srun '{"every": 4, "keep": 0}'
out=$(timeout 180 srun --mpi=pmix -n 4 "$train" --config "$work/srun.json" 2>&1)
if report srun $? "$out"; then
  if v=$(same_losses mpirun srun); then ok "srun: $v"; else fail "srun: $v"; fi
fi

# 2. Resumed under srun from the mpirun run's checkpoint.
config resumed "{\"dir\": \"$work/runs/mpirun/checkpoints\", \"resume\": \"step_4\"}"
out=$(timeout 180 srun --mpi=pmix -n 4 "$train" --config "$work/resumed.json" 2>&1)
if report resumed $? "$out"; then
  if v=$(same_losses mpirun resumed); then ok "resumed: $v"; else fail "resumed: $v"; fi
fi

# 3. The batch script.
config batch '{"every": 0}'
out=$(cd "$work" && SMP_TRAIN=$train timeout 300 sbatch --wait --ntasks=4 \
      "$root/examples/slurm/smp-train.sbatch" "$work/batch.json" 2>&1)
if report sbatch $? "$out"; then
  if [ -s "$work/runs/batch/summary.json" ] && grep -q "run directory: $work/runs/batch" "$work"/smp-train-*.out; then
    ok "sbatch: the job finished the run"
  else echo "FAIL sbatch: no summary.json or no run directory line"; cat "$work"/smp-train-*.out; failed=1; fi
fi

# 4. Three ranks for a four-rank layout.
out=$(timeout 120 srun --mpi=pmix -n 3 "$train" --config "$work/srun.json" 2>&1)
rc=$?
if [ "$rc" -eq 0 ] || [ "$rc" -eq 124 ] || ! grep -qF "does not divide the world size (3)" <<< "$out"; then
  echo "FAIL bad layout: exit $rc:"; echo "$out"; failed=1
else ok "bad layout: exit $rc, the layout message"; fi

finish
