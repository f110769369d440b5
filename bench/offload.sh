#!/usr/bin/env bash
# Activation offloading benchmark: peak RSS of smp-train with the transformer blocks
# checkpointed, without and with "offload_activations" (the checkpointed blocks' inputs go to a
# file in $TMPDIR, else /tmp, between forward and backward). One rank, one thread, the GPipe
# schedule ("pipeline": "simple": every microbatch's forward before any backward, so every
# microbatch's checkpointed inputs would be held at once), Adam, fp32. glibc's mmap threshold is
# pinned at 64 KiB (MALLOC_MMAP_THRESHOLD_) so that freed tensors leave the RSS and the peak is
# that of live memory, not of a fragmented heap. The two runs' losses must agree exactly.
#
# offload_peak_ratio  the largest max_rss_mb (metrics.jsonl) with offloading over without.
#
# Usage (from anywhere): bash bench/offload.sh
#   SMP_BUILD_DIR           build tree holding apps/smp-train (default build)
#   SMP_OFFLOAD_MODEL       model name (default gpt2-124m)
#   SMP_OFFLOAD_VOCAB       vocab_size (default 257: bytes, so that the head's logits, which
#                           offloading does not touch, do not hide the blocks' activations)
#   SMP_OFFLOAD_HORIZON     activation_loading_horizon (default 4, SMP's)
#   SMP_OFFLOAD_SEQ, SMP_OFFLOAD_BATCH, SMP_OFFLOAD_MICROBATCHES, SMP_OFFLOAD_STEPS
# Ends with: RESULT offload model=<name> peak_mb=<without> offload_peak_mb=<with>
#   offload_peak_ratio=<with/without>
set -euo pipefail
source "$(dirname "$0")/common.sh"  # cd to the root; build, python, OMP_NUM_THREADS=1, mpi_flags
script=offload.sh
train=$build/apps/smp-train
need_exe "$script" "$train" smp-train
make_out_dir
model=${SMP_OFFLOAD_MODEL:-gpt2-124m}
vocab=${SMP_OFFLOAD_VOCAB:-257}
seq=${SMP_OFFLOAD_SEQ:-256}
batch=${SMP_OFFLOAD_BATCH:-16}
microbatches=${SMP_OFFLOAD_MICROBATCHES:-8}
steps=${SMP_OFFLOAD_STEPS:-2}
horizon=${SMP_OFFLOAD_HORIZON:-4}
python3 -c "print('in the beginning god created the heaven and the earth ' * 20000)" > "$out/text.txt"

for mode in kept offloaded; do
  offload=false
  [ "$mode" = offloaded ] && offload=true
  cat > "$out/$mode.json" <<JSON
{"model": {"name": "$model", "vocab_size": $vocab, "max_seq_len": $seq},
 "data": {"text": "$out/text.txt", "val_fraction": 0.01},
 "training": {"steps": $steps, "global_batch": $batch, "seq_len": $seq, "lr": 1e-3,
              "warmup_steps": 1, "val_every": 0, "val_batches": 1, "sample_tokens": 1, "seed": 1,
              "activation_checkpointing": "each"},
 "checkpoint": {"full_at_end": false},
 "smp": {"microbatches": $microbatches, "pipeline": "simple", "offload_activations": $offload,
         "activation_loading_horizon": $horizon},
 "run_dir": "$out/$mode"}
JSON
  echo "$script: smp-train $model (vocab $vocab), batch $batch x $seq, $microbatches microbatches, horizon $horizon, $mode" >&2
  MALLOC_MMAP_THRESHOLD_=65536 mpirun -np 1 "${mpi_flags[@]}" "$train" --config "$out/$mode.json" \
    > "$out/$mode.log" 2>&1 || fail "smp-train ($mode)" "$out/$mode.log"
done

python3 - "$out" "$model" <<'PY'
import json, os, sys
out, model = sys.argv[1], sys.argv[2]
runs = {}
for mode in ("kept", "offloaded"):
    rows = [json.loads(l) for l in open(os.path.join(out, mode, "metrics.jsonl"))]
    runs[mode] = ([r["loss"] for r in rows if "loss" in r], max(r.get("max_rss_mb", 0) for r in rows))
    print(f"{mode}: losses {runs[mode][0]}, peak RSS {runs[mode][1]:.0f} MB", file=sys.stderr)
if runs["kept"][0] != runs["offloaded"][0]:
    sys.exit("offload.sh: the losses differ with offloading")
kept, offloaded = runs["kept"][1], runs["offloaded"][1]
print(f"RESULT offload model={model} peak_mb={kept:.0f} offload_peak_mb={offloaded:.0f} "
      f"offload_peak_ratio={offloaded / kept:.2f}")
PY
