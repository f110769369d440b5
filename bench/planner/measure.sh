#!/usr/bin/env bash
# Measured step time and memory of smp-train layouts, for checking smp-plan's predictions.
#
#   bash bench/planner/measure.sh <out.jsonl>
#
# One small GPT-2 (4 layers, hidden 256, 4 heads, ffn 1024, byte vocabulary 257, seq 128),
# global batch 16, fp32, AdamW, trained for $SMP_PLANNER_STEPS steps (default 8) by
# build/apps/smp-train in each layout below, one after the other (4 ranks on this 2-core
# machine oversubscribe it: expected). Writes one JSON line per layout to <out.jsonl> (written
# once all layouts ran) and to stdout:
#   {"name": "pp2", "ranks": 2, "pp": 2, "tp": 1, "dp": 1, "sdp": 1, "microbatches": 1,
#    "schedule": "1f1b", "activation_checkpointing": false, "model": {...}, "global_batch": 16,
#    "seq_len": 128, "dtype": "fp32", "step_s": ..., "peak_rss_mb": ...,
#    "others": ...}
# where
#   dp           model replicas that each hold a full copy: rdp / sdp, with smp's reduced-DP
#                degree rdp = ranks / (pp * tp) (docs/config.md); sdp is the sharding degree
#                (sharded_data_parallel_degree), so ranks = pp * tp * dp * sdp
#   schedule     "1f1b" for smp's "interleaved" pipeline (its default), "gpipe" for "simple"
#   step_s       median over steps 3..N of global_batch * seq_len / tokens_per_s (metrics.jsonl)
#   peak_rss_mb  max of metrics.jsonl's max_rss_mb: the largest peak resident set (VmHWM) over
#                the ranks since training started (smp-train resets the peak before step 1)
#   others       the share of the machine's CPU time that other jobs took during the run
#                (bench/common.sh): a busy machine makes step_s noisy
# A layout whose run fails stops the script with a message naming it and its log's end.
set -euo pipefail
script=measure.sh
[ $# -eq 1 ] || { echo "usage: bash bench/planner/measure.sh <out.jsonl>" >&2; exit 2; }
case "$1" in /*) dest=$1 ;; *) dest=$PWD/$1 ;; esac  # before common.sh moves to the root
source "$(dirname "$0")/../common.sh"  # cd to the root; build, mpi_flags, OMP_NUM_THREADS=1
need_exe "$script" "$build/apps/smp-train" smp-train
[ -d "$(dirname "$dest")" ] || { echo "$script: no folder for $dest" >&2; exit 2; }
steps=${SMP_PLANNER_STEPS:-8}
[ "$steps" -ge 4 ] || { echo "$script: SMP_PLANNER_STEPS must be >= 4; got $steps" >&2; exit 2; }
limit=${SMP_PLANNER_RUN_LIMIT:-120}  # seconds per run

work=$(mktemp -d /tmp/smp_planner_measure_XXXXXX)
trap 'rm -rf "$work"' EXIT
if command -v bible > /dev/null; then bible "gen1:1-rev22:21" > "$work/text.txt"; else
  python3 -c "print('in the beginning god created the heaven and the earth ' * 40000)" > "$work/text.txt"; fi

model='{"name": "tiny", "num_layers": 4, "hidden": 256, "num_heads": 4, "ffn_hidden": 1024,
        "max_seq_len": 128, "vocab_size": 257}'
global_batch=16
seq_len=128

# layout <name> <ranks> <pp> <tp> <sdp> <microbatches> <pipeline: interleaved|simple>
#        <activation checkpointing: none|each>: trains it, appends its line to $work/out.jsonl.
layout() {
  local name=$1 ranks=$2 pp=$3 tp=$4 sdp=$5 mb=$6 pipeline=$7 ac=$8
  local run=$work/$name log=$work/$name.log smp t0 b0 t1 b1 u s tick line
  smp="\"pipeline_parallel_degree\": $pp, \"tensor_parallel_degree\": $tp, \"microbatches\": $mb,
       \"pipeline\": \"$pipeline\""
  if ((sdp > 1)); then smp+=", \"sharded_data_parallel_degree\": $sdp"; fi
  if ((ranks > pp)); then smp+=", \"ddp\": true"; fi  # tp > 1 or rdp > 1: SMP requires ddp
  cat > "$work/$name.json" <<JSON
{"model": $model,
 "data": {"text": "$work/text.txt", "val_fraction": 0.01},
 "training": {"steps": $steps, "global_batch": $global_batch, "seq_len": $seq_len,
              "optimizer": "adamw", "precision": "fp32", "activation_checkpointing": "$ac",
              "val_every": 0, "val_batches": 1, "sample_tokens": 0},
 "smp": {$smp},
 "run_dir": "$run"}
JSON
  echo "$script: layout $name (ranks $ranks) ..." >&2
  tick=$(getconf CLK_TCK)
  read -r t0 b0 < <(cpu_jiffies)
  if ! /usr/bin/time -f "%U %S" -o "$work/time" timeout "$limit" \
      mpirun "${mpi_flags[@]}" -x OMP_NUM_THREADS -np "$ranks" "$build/apps/smp-train" \
      --config "$work/$name.json" > "$log" 2>&1; then
    echo "$script: layout $name ($ranks ranks: pp $pp, tp $tp, sdp $sdp, microbatches $mb," \
         "pipeline $pipeline, activation checkpointing $ac) failed (or ran past ${limit} s);" \
         "its config and output:" >&2
    cat "$work/$name.json" >&2
    tail -30 "$log" >&2
    exit 1
  fi
  read -r t1 b1 < <(cpu_jiffies)
  read -r u s < <(tail -1 "$work/time")
  others=$(awk -v t="$((t1 - t0))" -v b="$((b1 - b0))" -v tick="$tick" -v u="$u" -v s="$s" \
    'BEGIN { o = t > 0 ? (b - (u + s) * tick) / t : 0; printf "%.3f", (o < 0 ? 0 : o) }')
  line=$(python3 - "$run/metrics.jsonl" "$name" "$ranks" "$pp" "$tp" "$sdp" "$mb" "$pipeline" \
                   "$ac" "$global_batch" "$seq_len" "$others" "$model" <<'PY'
import json, statistics, sys
(path, name, ranks, pp, tp, sdp, mb, pipeline, ac, batch, seq, others, model) = sys.argv[1:]
ranks, pp, tp, sdp, mb, batch, seq = map(int, (ranks, pp, tp, sdp, mb, batch, seq))
steps = [r for r in map(json.loads, open(path)) if "tokens_per_s" in r]
if len(steps) < 3:
    sys.exit(f"{path}: {len(steps)} step lines; need at least 3")
times = [batch * seq / r["tokens_per_s"] for r in steps if r["step"] >= 3]
m = json.loads(model)
print(json.dumps({
    "name": name, "ranks": ranks, "pp": pp, "tp": tp, "dp": ranks // (pp * tp * sdp),
    "sdp": sdp, "microbatches": mb,
    "schedule": {"interleaved": "1f1b", "simple": "gpipe"}[pipeline],
    "activation_checkpointing": ac != "none",
    "model": {"layers": m["num_layers"], "hidden": m["hidden"], "heads": m["num_heads"],
              "ffn": m["ffn_hidden"], "vocab": m["vocab_size"], "seq": m["max_seq_len"]},
    "global_batch": batch, "seq_len": seq, "dtype": "fp32",
    "step_s": round(statistics.median(times), 4),
    "peak_rss_mb": round(max(r["max_rss_mb"] for r in steps), 1),
    "others": float(others)}))
PY
) || { echo "$script: layout $name: cannot read $run/metrics.jsonl" >&2; exit 1; }
  echo "$line" | tee -a "$work/out.jsonl"
}

#      name         ranks pp tp sdp mb pipeline    activation checkpointing
layout plain        1     1  1  1   1  interleaved none
layout ac           1     1  1  1   1  interleaved each
layout pp2          2     2  1  1   1  interleaved none
layout pp2_mb4      2     2  1  1   4  interleaved none
layout pp2_mb4_gpipe 2    2  1  1   4  simple      none
layout tp2          2     1  2  1   1  interleaved none
layout dp2          2     1  1  1   1  interleaved none
layout sdp2         2     1  1  2   1  interleaved none
layout pp2xdp2      4     2  1  1   1  interleaved none
layout pp2xtp2      4     2  2  1   1  interleaved none
layout tp2xdp2      4     1  2  1   1  interleaved none
layout sdp4         4     1  1  4   1  interleaved none
mv "$work/out.jsonl" "$dest"
echo "$script: $(wc -l < "$dest") layouts written to $dest" >&2
