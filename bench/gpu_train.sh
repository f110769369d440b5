#!/usr/bin/env bash
# GPU benchmark (a CUDA machine): smp-train on one GPU, GPT-2 124M, bf16, B=16, T=1024 ->
# tokens/s and MFU (against training.peak_tflops: SMP_PEAK_TFLOPS, default 989, an H100 SXM's
# dense bf16), next to Hugging Face transformers' eager GPT2LMHeadModel (bf16 autocast, the same
# batch) in the same run. Reference figures for this exact setting on one H100 (issue 6): HF
# eager 130.6K tokens/s, HF + torch.compile 293K, llm.c (no cuDNN) 319.6K; target >= 320K.
# The text is made up (tokens/s does not depend on it); the byte-level tokenizer feeds a model
# with GPT-2's 50257-token vocabulary.
# Ends with: RESULT gpu_train tokens_per_s=<x> mfu=<x>   (and the HF peer's tokens/s above it)
# SMP_BUILD_DIR and SMP_PYTHON (default .venv/bin/python) say where smp-train and a Python with
# torch and transformers are (scripts/gpu_check.sh sets both on a GPU machine). A dry run of the
# script on a CPU: SMP_BENCH_DEVICE=cpu SMP_BENCH_BATCH=2 SMP_BENCH_SEQ=64 SMP_BENCH_STEPS=3.
set -euo pipefail
source "$(dirname "$0")/common.sh"  # cd to the root; build, python; OMP_NUM_THREADS set below
python=${SMP_PYTHON:-$python}
steps=${SMP_BENCH_STEPS:-30}
peak=${SMP_PEAK_TFLOPS:-989}
device=${SMP_BENCH_DEVICE:-cuda}
batch=${SMP_BENCH_BATCH:-16}
seq=${SMP_BENCH_SEQ:-1024}
[ -x "$build/apps/smp-train" ] || bash scripts/setup.sh
export OMP_NUM_THREADS=4
work=$(mktemp -d /tmp/smp_bench_gpu_XXXXXX)
trap 'rm -rf "$work"' EXIT
"$python" -c "
import random
random.seed(0)
words = [w for w in open('/usr/share/dict/words').read().split()][:5000] if __import__('os').path.exists('/usr/share/dict/words') else 'in the beginning god created the heaven and the earth'.split()
print(' '.join(random.choice(words) for _ in range(800000)))" > "$work/text.txt"
cat > "$work/run.json" <<JSON
{"model": {"name": "gpt2-124m"},
 "data": {"text": "$work/text.txt", "val_fraction": 0.01},
 "training": {"steps": $steps, "global_batch": $batch, "seq_len": $seq, "lr": 6e-4, "min_lr": 6e-5,
              "warmup_steps": 5, "val_every": 0, "val_batches": 1, "sample_tokens": 0,
              "precision": "bf16", "device": "$device", "peak_tflops": $peak},
 "smp": {}, "run_dir": "$work/run"}
JSON
mpirun --bind-to none -np 1 "$build/apps/smp-train" --config "$work/run.json" | tail -4
# The peer reads the run's resolved config.json (the named size spelled out).
hf=$("$python" bench/train/hf_train.py "$work/run/config.json" 4 | sed -n 's/RESULT_HF tokens_per_s=//p')
"$python" - "$work/run/summary.json" "$hf" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
hf = float(sys.argv[2])
print(f"HF transformers eager (bf16 autocast): {hf:.0f} tokens/s; smp-train: {s['tokens_per_s']:.0f} "
      f"({s['tokens_per_s'] / hf:.2f}x)")
print(f"RESULT gpu_train tokens_per_s={s['tokens_per_s']:.0f} mfu={s['mfu']:.3f}")
PY
