#!/usr/bin/env bash
# Checkpoints through smp-train, across processes and layouts (issue 7's tests):
#   1. a tiny GPT trained 20 steps under pp=2 x tp=2 with a partial checkpoint at step 10;
#   2. resumed at step 10 under the same layout: steps 11-20 equal the uninterrupted run bit
#      for bit;
#   3. resumed under 1 rank, pp=4, tp=4, dp=2 with ZeRO-1 and tp=2 x sharded data parallelism 2:
#      steps 11-20 within 1e-5 relative; a tp=2 x sdp=2 run's checkpoint resumed under pp=2
#      continues that run within 1e-5;
#   4. a rank SIGKILLed in the middle of a save: the run fails, the broken checkpoint is only a
#      *.tmp folder, `newest` still names the previous one, and resuming skips the broken one
#      with a message and loads the previous (again bit for bit).
#   checkpoint_resume_test.sh <smp-train> <mpiexec>
source "$(dirname "${BASH_SOURCE[0]}")/../testing/preamble.sh"
train=$1
mpiexec=$2
make_work_dir checkpoint_resume
write_text "$work/text.txt"

config() {  # config <name> <smp json> <checkpoint json>
  cat > "$work/$1.json" <<JSON
{"model": {"name": "tiny", "num_layers": 4, "hidden": 32, "num_heads": 4, "max_seq_len": 32},
 "data": {"text": "$work/text.txt", "val_fraction": 0.1},
 "training": {"steps": 20, "global_batch": 8, "seq_len": 32, "lr": 0.003, "warmup_steps": 3,
              "val_every": 0, "val_batches": 1, "sample_tokens": 4, "seed": 5},
 "checkpoint": $3, "smp": $2, "run_dir": "$work/runs/$1"}
JSON
}

run() {  # run <name> <ranks> [extra env] -> sets out, rc
  out=$(env ${3:-} timeout 180 "$mpiexec" "${mpirun_flags[@]}" -np "$2" "$train" \
        --config "$work/$1.json" 2>&1)
  rc=$?
}

compare() {  # compare <reference run> <run> <relative tolerance>: steps 11-20
  python3 - "$work/runs/$1/metrics.jsonl" "$work/runs/$2/metrics.jsonl" "$3" <<'PY'
import json, sys
def losses(path):
    return {j["step"]: j["loss"] for j in map(json.loads, open(path)) if "loss" in j}
ref, got, tol = losses(sys.argv[1]), losses(sys.argv[2]), float(sys.argv[3])
if sorted(got) != list(range(11, 21)):
    print(f"steps run: {sorted(got)}, expected 11..20"); sys.exit(1)
worst = max(abs(got[s] - ref[s]) / abs(ref[s]) for s in got)
if worst > tol:
    for s in sorted(got): print(f"  step {s}: {got[s]!r} vs {ref[s]!r}")
    print(f"worst relative difference {worst:.3e} > {tol}"); sys.exit(1)
print(f"worst relative difference {worst:.2e}")
PY
}

check() {  # check <name> <ranks> <reference> <tolerance>
  run "$1" "$2"
  if [ "$rc" -ne 0 ]; then echo "FAIL $1: exit $rc"; echo "$out" | tail -20; failed=1; return; fi
  if verdict=$(compare "$3" "$1" "$4"); then ok "$1: $verdict"; else
    echo "FAIL $1:"; echo "$verdict"; failed=1; fi
}

pp2tp2='{"pipeline_parallel_degree": 2, "tensor_parallel_degree": 2, "ddp": true, "microbatches": 2, "comm_timeout_s": 10}'
ckpt="$work/runs/reference/checkpoints"

# 1. The uninterrupted run.
config reference "$pp2tp2" '{"every": 10, "keep": 0}'
run reference 4
if [ "$rc" -ne 0 ] || [ ! -f "$ckpt/step_10_partial/manifest.json" ]; then
  echo "FAIL reference: exit $rc or no checkpoint"; echo "$out" | tail -20; exit 1
fi
grep -qF "checkpoint $ckpt/step_10_partial saved" <<< "$out" || fail "reference: no save message"

# 2. Stopped at step 10 and resumed, the same layout: bit for bit.
config same "$pp2tp2" "{\"dir\": \"$ckpt\", \"resume\": \"step_10\"}"
check same 4 reference 0

# 3. Resharded: other layouts continue the same curve.
config one_rank '{}' "{\"dir\": \"$ckpt\", \"resume\": \"step_10\"}"
check one_rank 1 reference 1e-5
config pp4 '{"pipeline_parallel_degree": 4, "microbatches": 2}' "{\"dir\": \"$ckpt\", \"resume\": \"step_10\"}"
check pp4 4 reference 1e-5
config tp4 '{"tensor_parallel_degree": 4, "ddp": true}' "{\"dir\": \"$ckpt\", \"resume\": \"step_10\"}"
check tp4 4 reference 1e-5
config dp2_zero1 '{"ddp": true, "shard_optimizer_state": true}' "{\"dir\": \"$ckpt\", \"resume\": \"step_10\"}"
check dp2_zero1 2 reference 1e-5
tp2sdp2='{"tensor_parallel_degree": 2, "ddp": true, "sharded_data_parallel_degree": 2, "sdp_param_persistence_threshold": 0}'
config tp2_sdp2 "$tp2sdp2" "{\"dir\": \"$ckpt\", \"resume\": \"step_10\"}"
check tp2_sdp2 4 reference 1e-5
# ... and a checkpoint saved under sharded data parallelism resumes elsewhere.
config sdp_saved "$tp2sdp2" '{"every": 10, "keep": 0}'
run sdp_saved 4
if [ "$rc" -ne 0 ]; then echo "FAIL sdp_saved: exit $rc"; echo "$out" | tail -20; failed=1; fi
config from_sdp '{"pipeline_parallel_degree": 2, "microbatches": 2}' \
  "{\"dir\": \"$work/runs/sdp_saved/checkpoints\", \"resume\": \"step_10\"}"
check from_sdp 2 sdp_saved 1e-5

# 4. A rank killed during a save.
killed="$work/killed"
mkdir -p "$killed" && cp -r "$ckpt/step_10_partial" "$killed/" && echo step_10 > "$killed/newest"
config crash "$pp2tp2" "{\"dir\": \"$killed\", \"every\": 5, \"resume\": \"newest\", \"test_kill_rank\": 1}"
run crash 4
if [ "$rc" -eq 0 ] || [ "$rc" -eq 124 ]; then fail "crash: exit $rc (expected a failure)"
elif [ -e "$killed/step_15_partial" ] || [ ! -d "$killed/step_15_partial.tmp" ] || [ "$(cat "$killed/newest")" != step_10 ]; then
  echo "FAIL crash: after the killed save:"; ls "$killed"; cat "$killed/newest"; failed=1
else ok "crash: exit $rc, only step_15_partial.tmp left, newest still step_10"; fi
config after_crash "$pp2tp2" "{\"dir\": \"$killed\", \"resume\": \"newest\"}"
check after_crash 4 reference 0
for want in "skipping incomplete checkpoint $killed/step_15_partial.tmp" "resuming from $killed/step_10_partial"; do
  grep -qF -- "$want" <<< "$out" || fail "after_crash: no \"$want\" in the output"
done

finish
