#!/usr/bin/env bash
# Benchmark: tokens/s of smp-train on one rank against (a) the same model in a plain libtorch
# loop (bench/train/plain_loop.cpp: what smp's machinery costs; target >= 0.97) and (b) Hugging
# Face transformers training the same GPT-2 configuration in Python (target >= 1.0). Same
# machine, same run, one thread each, alternating, best of two rounds each.
# Ends with: RESULT train vs_plain_libtorch=<ratio> vs_hf=<ratio>
set -euo pipefail
source "$(dirname "$0")/common.sh"  # cd to the root; build, python, OMP_NUM_THREADS=1
[ -x "$build/apps/smp-train" ] && [ -x "$build/bench/train/plain_loop" ] || bash scripts/setup.sh
work=$(mktemp -d /tmp/smp_bench_train_XXXXXX)
trap 'rm -rf "$work"' EXIT
if command -v bible > /dev/null; then bible "gen1:1-rev22:21" > "$work/text.txt"; else
  python3 -c "print('in the beginning god created the heaven and the earth ' * 40000)" > "$work/text.txt"; fi
steps=${SMP_BENCH_STEPS:-30}
cat > "$work/run.json" <<JSON
{"model": {"name": "tiny", "num_layers": 4, "hidden": 128, "num_heads": 4, "ffn_hidden": 512,
           "max_seq_len": 128, "vocab_size": 257},
 "data": {"text": "$work/text.txt", "val_fraction": 0.01},
 "training": {"steps": $steps, "global_batch": 16, "seq_len": 128, "lr": 1e-3, "val_every": 0,
              "val_batches": 1, "sample_tokens": 0},
 "smp": {}, "run_dir": "$work/run"}
JSON
best() { sort -g | tail -1; }
smp_rates=(); plain_rates=(); hf_rates=()
for round in 1 2; do
  rm -rf "$work/run"
  mpirun --bind-to none -np 1 "$build/apps/smp-train" --config "$work/run.json" > "$work/smp.log"
  smp_rates+=("$(python3 -c "import json; print(json.load(open('$work/run/summary.json'))['tokens_per_s'])")")
  plain_rates+=("$("$build/bench/train/plain_loop" "$work/run.json" | sed -n 's/RESULT_PLAIN tokens_per_s=//p')")
  hf_rates+=("$(.venv/bin/python bench/train/hf_train.py "$work/run.json" 1 | sed -n 's/RESULT_HF tokens_per_s=//p')")
  echo "round $round: smp-train ${smp_rates[-1]} tok/s, plain libtorch ${plain_rates[-1]}, HF transformers ${hf_rates[-1]}"
done
smp=$(printf '%s\n' "${smp_rates[@]}" | best)
plain=$(printf '%s\n' "${plain_rates[@]}" | best)
hf=$(printf '%s\n' "${hf_rates[@]}" | best)
echo "best: smp-train $smp tok/s, plain libtorch $plain, HF transformers $hf"
python3 -c "print(f'RESULT train vs_plain_libtorch={$smp/$plain:.2f} vs_hf={$smp/$hf:.2f}')"
