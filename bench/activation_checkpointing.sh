#!/usr/bin/env bash
# Benchmark: activation checkpointing of a GPT's blocks (hidden 256, 6 layers, 8 heads,
# sequence 512, batch 8, one rank, one thread), against Hugging Face transformers' GPT2LMHeadModel
# of the same shape with gradient_checkpointing_enable() (torch.utils.checkpoint per block), the
# peer a PyTorch user would pick. Each side is measured without and with checkpointing:
#   - activation memory: peak RSS during the steps minus RSS before them, with glibc's mmap
#     threshold pinned at 64 KiB (MALLOC_MMAP_THRESHOLD_) so that freed tensors leave the RSS
#     and the peak is the peak of live tensors, not of a fragmented heap;
#   - time: the median forward+backward step, in a second run with malloc's defaults.
# Ends with: RESULT activation_checkpointing memory_ratio=<smp with/without>
#   time_ratio=<smp with/without> vs_hf_memory=<smp's memory / HF's, both checkpointed>
#   vs_hf_speed=<HF's step time / smp's, both checkpointed>
set -euo pipefail
source "$(dirname "$0")/common.sh"  # cd to the root; build, python, OMP_NUM_THREADS=1
[ -x "$build/bench/activation_checkpointing/recompute_bench" ] || bash scripts/setup.sh
shape=(256 6 8 512 8)
steps=${SMP_BENCH_STEPS:-5}
field() { sed -n "s/.*$1=\([0-9.]*\).*/\1/p"; }
declare -A mem time
for mode in none each; do
  out=$(MALLOC_MMAP_THRESHOLD_=65536 "$build/bench/activation_checkpointing/recompute_bench" "$mode" "${shape[@]}" "$steps")
  mem[smp_$mode]=$(field activation_mb <<< "$out")
  out=$("$build/bench/activation_checkpointing/recompute_bench" "$mode" "${shape[@]}" "$steps")
  time[smp_$mode]=$(field step_s <<< "$out")
  out=$(MALLOC_MMAP_THRESHOLD_=65536 .venv/bin/python bench/activation_checkpointing/hf_recompute.py "$mode" "${shape[@]}" "$steps")
  mem[hf_$mode]=$(field activation_mb <<< "$out")
  out=$(.venv/bin/python bench/activation_checkpointing/hf_recompute.py "$mode" "${shape[@]}" "$steps")
  time[hf_$mode]=$(field step_s <<< "$out")
  echo "checkpointing $mode: smp ${mem[smp_$mode]} MB, ${time[smp_$mode]} s/step;" \
       "HF transformers ${mem[hf_$mode]} MB, ${time[hf_$mode]} s/step"
done
python3 - "${mem[smp_none]}" "${mem[smp_each]}" "${time[smp_none]}" "${time[smp_each]}" \
          "${mem[hf_none]}" "${mem[hf_each]}" "${time[hf_none]}" "${time[hf_each]}" <<'PY'
import sys
sm0, sm1, st0, st1, hm0, hm1, ht0, ht1 = map(float, sys.argv[1:])
print(f"HF's own: memory_ratio={hm1 / hm0:.2f} time_ratio={ht1 / ht0:.2f}")
print(f"RESULT activation_checkpointing memory_ratio={sm1 / sm0:.2f} time_ratio={st1 / st0:.2f} "
      f"vs_hf_memory={sm1 / hm1:.2f} vs_hf_speed={ht1 / st1:.2f}")
PY
