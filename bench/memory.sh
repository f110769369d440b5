#!/usr/bin/env bash
# Memory benchmark (issue 19): smp-train on 4 ranks of this machine, sharded data parallelism
# over all 4 (sharded_data_parallel_degree 4), activation checkpointing on every block, fp32,
# Adam, 3 steps of KJV text, 2 sequences a rank in 2 microbatches run as GPipe runs them (both
# forwards, then both backwards: the first microbatch's checkpointed inputs wait), reduce packs
# of 5e7 elements (SMP's 5e8 would hold a 2 GB pack a rank for LLaMA-1B); the per-rank peak is
# metrics' max_rss_mb (VmHWM, reset before step 1, the largest over the ranks).
#
# gpt2_350m_peak_mb     GPT-2 350M, prefetch on (SMP's defaults), no offloading.
# offload_peak_ratio    the same with offload_activations (activation_loading_horizon 1) over
#                       without: the checkpointed blocks' inputs wait on local disk.
# prefetch_time_ratio   median step time with prefetched gathers over without (prefetch off:
#                       sdp_max_live_parameters 1, so only the layer computing is gathered);
#                       < 1 means prefetching hides gathers. Losses of the two must agree.
# llama_1b_trains       1 when LLaMA-1B (sdp 4, delayed initialisation, offloading, activation
#                       checkpointing, Adam's moments in a file: offload_optimizer_state)
#                       finishes its 3 steps; llama_1b_peak_mb its peak.
#
# Usage: bash bench/memory.sh   (about 15 minutes; SMP_BENCH_SEQ, default 128, tokens a sequence;
#        SMP_BENCH_ONLY=llama runs LLaMA-1B alone, SMP_BENCH_ONLY=gpt2 GPT-2 350M alone)
set -euo pipefail
source "$(dirname "$0")/common.sh"  # cd to the root; build, python, OMP_NUM_THREADS=1, mpi_flags
script=memory.sh
train=$build/apps/smp-train
need_exe "$script" "$train" smp-train
need_python "$script"
make_out_dir
seq=${SMP_BENCH_SEQ:-128}
only=${SMP_BENCH_ONLY:-all}
[ -s runs/kjv.txt ] || { mkdir -p runs; bible "gen1:1-rev22:21" > runs/kjv.txt; }

# run <name> <model> <global batch> <extra smp keys>: smp-train on 4 ranks; its log in $out.
run() {
  local name=$1 model=$2 batch=$3 smp=$4
  cat > "$out/$name.json" <<JSON
{"model": {"name": "$model"}, "data": {"text": "runs/kjv.txt", "val_fraction": 0.01},
 "training": {"steps": 3, "global_batch": $batch, "seq_len": $seq, "lr": 1e-3, "warmup_steps": 1,
              "val_every": 0, "val_batches": 1, "sample_tokens": 1, "seed": 1,
              "activation_checkpointing": "each"},
 "checkpoint": {"full_at_end": false},
 "smp": {"ddp": true, "sharded_data_parallel_degree": 4, "microbatches": 2, "pipeline": "simple",
         "sdp_reduce_bucket_size": 50000000$smp},
 "run_dir": "$out/$name"}
JSON
  echo "$script: smp-train $model, 4 ranks, $name" >&2
  mpirun -np 4 "${mpi_flags[@]}" "$train" --config "$out/$name.json" > "$out/$name.log" 2>&1
}
if [ "$only" != llama ]; then
  run gpt2 gpt2-350m 8 "" || fail "gpt2-350m" "$out/gpt2.log"
  run gpt2_offload gpt2-350m 8 ', "offload_activations": true, "activation_loading_horizon": 1' ||
    fail "gpt2-350m with offloading" "$out/gpt2_offload.log"
  run gpt2_noprefetch gpt2-350m 8 ', "sdp_max_live_parameters": 1' ||
    fail "gpt2-350m without prefetch" "$out/gpt2_noprefetch.log"
fi
# LLaMA-1B needs, a rank: its fp32 weights and gradients sharded 4 ways (8 B x 1.205e9 / 4 =
# 2298 MiB; its Adam moments, as much again, wait in a file: offload_optimizer_state) plus what
# GPT-2 350M's run measured above them (the process, a gathered layer, a gradient pack; about
# 1.1 GiB with LLaMA's 268 MB layers). Four such ranks must fit in what the machine has
# available, or the kernel kills one (and whatever else runs).
llama_ok=0
need_mb=$(( 4 * (2298 + 1100) ))
avail_mb=$(awk '/MemAvailable/ {print int($2 / 1024)}' /proc/meminfo)
if [ "$only" = gpt2 ]; then
  :
elif [ "$avail_mb" -lt "$need_mb" ] && [ "${SMP_BENCH_FORCE_LLAMA:-0}" != 1 ]; then
  echo "$script: llama-1b skipped: 4 ranks need about $need_mb MB, $avail_mb MB available" \
       "(SMP_BENCH_FORCE_LLAMA=1 runs it anyway)" >&2
else
  llama_ok=1
  run llama llama-1b 8 ', "delayed_parameter_initialization": true,
    "offload_activations": true, "activation_loading_horizon": 1, "offload_optimizer_state": true' ||
    { llama_ok=0; echo "$script: llama-1b did not finish; its log's end:" >&2; tail -5 "$out/llama.log" >&2; }
fi

"$python" - "$out" "$llama_ok" <<'PY'
import json, statistics, sys
out, llama_ok = sys.argv[1], int(sys.argv[2])

def steps(name):
    try:
        lines = [json.loads(l) for l in open(f"{out}/{name}/metrics.jsonl")]
    except FileNotFoundError:
        return []
    return [l for l in lines if "loss" in l]

def peak(name):
    s = steps(name)
    return max(l["max_rss_mb"] for l in s) if s else 0

def step_time(name):  # the median of steps 2.. (time_s is cumulative)
    t = [l["time_s"] for l in steps(name)]
    return statistics.median(b - a for a, b in zip(t, t[1:])) if len(t) > 1 else float("nan")

def ratio(a, b):
    return a / b if b else float("nan")

base, off, nopf = steps("gpt2"), steps("gpt2_offload"), steps("gpt2_noprefetch")
for other, label in ((off, "offloading"), (nopf, "no prefetch")):
    for a, b in zip(base, other):
        if abs(a["loss"] - b["loss"]) > 1e-4 * max(1.0, abs(a["loss"])):
            sys.exit(f"memory.sh: the losses with {label} differ: {a['loss']} vs {b['loss']}")
llama = steps("llama")
trains = int(llama_ok == 1 and len(llama) == 3)
print(f"gpt2-350m: peak {peak('gpt2'):.0f} MB, with offloading {peak('gpt2_offload'):.0f} MB, "
      f"without prefetch {peak('gpt2_noprefetch'):.0f} MB; step {step_time('gpt2'):.2f} s, "
      f"without prefetch {step_time('gpt2_noprefetch'):.2f} s")
print(f"llama-1b: {len(llama)} steps, peak {peak('llama'):.0f} MB")
print(f"RESULT memory gpt2_350m_peak_mb={peak('gpt2'):.0f} "
      f"offload_peak_ratio={ratio(peak('gpt2_offload'), peak('gpt2')):.3f} "
      f"prefetch_time_ratio={ratio(step_time('gpt2'), step_time('gpt2_noprefetch')):.3f} "
      f"llama_1b_trains={trains} llama_1b_peak_mb={peak('llama'):.0f}")
PY
