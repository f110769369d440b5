#!/usr/bin/env bash
# smp-plan's command line: a plan written as JSON that smp reads, a Hugging Face config.json as
# the model, and each bad input answered with exit code 1 and a message naming it.
#   bash smp_plan_cli_test.sh <smp-plan>
set -euo pipefail
plan=$1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failures=0

# expect_error <what the message must contain> args...: exit code 1 and the message on stderr.
expect_error() {
  local want=$1 rc=0
  shift
  "$plan" "$@" > "$work/out" 2> "$work/err" || rc=$?
  if [ "$rc" -ne 1 ] || ! grep -qF -- "$want" "$work/err"; then
    echo "FAIL: smp-plan $* gave exit code $rc and: $(cat "$work/err"); wanted: $want"
    failures=$((failures + 1))
  fi
}

cat > "$work/config.json" <<'JSON'
{"model_type": "llama", "num_hidden_layers": 16, "hidden_size": 2048, "num_attention_heads": 32,
 "num_key_value_heads": 8, "intermediate_size": 8192, "vocab_size": 128256, "hidden_act": "silu"}
JSON
"$plan" --model "$work/config.json" --gpus 8 --cluster a100-efa --global-batch 64 --seq 2048 \
  --top 3 --out "$work/best.json" > "$work/table"
grep -q "^1 " "$work/table" || { echo "FAIL: no ranked table"; cat "$work/table"; failures=$((failures + 1)); }
python3 - "$work/best.json" <<'PY' || failures=$((failures + 1))
import json, sys
best = json.load(open(sys.argv[1]))
smp = best["smp"]
world = smp["pipeline_parallel_degree"] * smp["tensor_parallel_degree"]
assert 8 % world == 0, smp
assert best["training"]["global_batch"] == 64 and best["plan"]["tokens_per_s"] > 0, best
PY
"$plan" --model gpt2-1.5b --gpus 16 --global-batch 64 --seq 1024 --explain pp4.tp1.dp4.mb2.zb.full.DPT \
  | grep -q "memory per device" || { echo "FAIL: --explain"; failures=$((failures + 1)); }

expect_error 'unknown argument "--gpu"' --model gpt2-124m --gpu 8
expect_error '--gpus: got "0"' --model gpt2-124m --gpus 0 --global-batch 8 --seq 1024
expect_error '--seq is required' --model gpt2-124m --gpus 8 --global-batch 8
expect_error 'model name "gpt9" is unknown' --model gpt9 --gpus 8 --global-batch 8 --seq 1024
expect_error 'cluster "tpu-v5" is unknown' --model gpt2-124m --gpus 8 --global-batch 8 --seq 1024 --cluster tpu-v5
expect_error 'part "fast" is unknown' --model gpt2-124m --gpus 8 --global-batch 8 --seq 1024 --explain pp2.fast
expect_error 'precision "fp8" is unknown' --model gpt2-124m --gpus 8 --global-batch 8 --seq 1024 --precision fp8
expect_error 'no layout of tiny on 3 devices is valid' --model tiny --gpus 3 --global-batch 2 --seq 64
echo '{"gpus_per_node": 8, "nics": 4}' > "$work/cluster.json"
expect_error 'cluster key "nics"' --model gpt2-124m --gpus 8 --global-batch 8 --seq 1024 --cluster "$work/cluster.json"
expect_error '--fit: cannot read' --fit "$work/none.jsonl"

[ "$failures" -eq 0 ] && echo "smp_plan_cli_test: all cases passed"
exit "$failures"
