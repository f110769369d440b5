#!/usr/bin/env bash
# Benchmark: what one smp-train step dispatches, on one rank, on the CPU, for GPT-2 124M and
# llama-125m at their real sizes (bench/step_ops/step_ops.cpp: the model and AdamW over two
# parameter groups built as smp-train builds them, one warm-up step, then one step of
# Trainer::train_step watched by an ATen RecordFunction observer at FUNCTION scope):
#   - aten ops per step: top-level ATen ops (not inside another recorded op); nested ones too
#     in the per-model lines;
#   - host synchronisation points per step (as a GPU run would have them): _local_scalar_dense
#     (item()), copies to the host (aten::to / _to_copy with an explicit CPU device), ops named
#     *synchronize*, and nonzero / masked_select / unique / equal; the item() that the trainer's
#     replica_mean takes of a host tensor is left out;
#   - optimizer ops per step: top-level ops inside clip_master_grads and DistributedOptimizer::step
#     (over both groups; target <= 8 per group);
#   - the loss's peak extra bytes during forward + backward of Model::loss alone on (2048, V)
#     bf16 logits (the logits' gradient included), over the bytes of those logits.
# Figures do not depend on batch or sequence (B=2, T=128 here). A minute or so, one thread.
# Ends with: RESULT step_ops syncs_per_step=<n> optimizer_ops_per_step=<n>
#   aten_ops_per_step=<n> loss_extra_over_logits=<r>   (the larger of the two models' figures)
set -euo pipefail
source "$(dirname "$0")/common.sh"  # cd to the root; build, python, OMP_NUM_THREADS=1
exe=$build/bench/step_ops/step_ops
[ -x "$exe" ] || bash scripts/setup.sh
need_exe step_ops.sh "$exe" step_ops
log=$(mktemp /tmp/smp_bench_step_ops_XXXXXX)
trap 'rm -f "$log"' EXIT
"$exe" "${SMP_BENCH_BATCH:-2}" "${SMP_BENCH_SEQ:-128}" 2048 > "$log" 2>&1 || {
  echo "step_ops.sh: $exe failed; its output:" >&2; tail -30 "$log" >&2; exit 1; }
grep -v '^RESULT ' "$log"
grep '^RESULT step_ops ' "$log" | tail -1
