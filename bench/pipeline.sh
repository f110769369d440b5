#!/usr/bin/env bash
# Pipeline benchmark: smp's pipeline (DistributedModel + smp::step over MPI) against PyTorch's
# own torch.distributed.pipelining (PipelineStage + Schedule1F1B / ScheduleGPipe on gloo), on
# this machine, in this run. CPU, pp = 2 (2 ranks), one intra-op thread per rank, m = 8.
#
# Model (the same on both sides, same weights: both print the first step's loss, which must
# agree): 8 blocks of Linear(1024, 1024) + GELU, blocks 0-3 on rank 0 and 4-7 on rank 1; batch
# 256 (8 microbatches of 32 rows); MSE loss; forward + backward, no optimizer. One step is
# ~100 ms of compute per rank here, so the step is dominated by compute; the activations sent
# between the stages are 128 KiB per microbatch. See bench/pipeline/pipeline_bench.cpp and
# bench/pipeline/torch_pipeline.py for the method: 3 warm-up steps, then 30 timed steps each
# after a barrier; a step's time is that of the slowest rank; the median step is reported.
#
# Pairs compared (same schedule on both sides):
#   smp "interleaved" (SMP's 1F1B) vs torch Schedule1F1B;  smp "simple" (GPipe) vs ScheduleGPipe.
# And smp's "zero_bubble" (ZB-H1: split backwards, bubble (p-1)/(3m+p-1) in equal-cost units)
# against smp's 1F1B: zb_vs_1f1b = 1F1B step time / zero-bubble step time (torch's zero-bubble
# schedules need several stages per rank, so there is no same-shape peer).
# vs_torch_<x> = torch step time / smp step time: smp's throughput relative to torch's
# (> 1: smp is faster).
#
# Efficiency (smp only; the RESULT's is the interleaved schedule's):
#   per-stage compute  busy(r) = the time rank r spent in forward/backward actions during the
#                      step (DistributedModel::step_stats().busy_s), measured in that step;
#                      the slowest stage's, busy = max over ranks, sets the pace.
#   ideal step time    ideal = busy * (m + p - 1) / m = busy / (1 - theoretical bubble), with
#                      the schedule's theoretical bubble (p - 1) / (m + p - 1) (= 1/9 here):
#                      what a perfect pipeline of equal stages with free communication takes.
#   efficiency         ideal / measured step wall time (around smp::step on the slowest rank),
#                      per step, median over the timed steps. 1.0 = no time lost to
#                      communication, scheduling or framework overhead beyond the bubble.
#   Caveat: the ranks share 2 cores' memory bandwidth; a stage computing alone (in the bubble)
#   runs slightly faster than when both compute, so this can read a little above 1.
# For torch the table shows smp's ideal / torch's step time: the same measure, with smp's
# compute profile (both run the same GEMMs). The table also shows the CPU time each rank's
# process used per step (every thread: waiting that spins would show here) and the share of
# the cores other jobs used during the run.
#
# Memory: peak RSS (VmHWM) of each rank at the end of a fresh process per schedule;
# rss_1f1b_over_gpipe = max over ranks of smp interleaved's peak RSS / smp simple's. The table
# also shows the step's own growth (peak - RSS right before the first step), where the
# activations that GPipe keeps for all 8 microbatches (1F1B: at most p) show.
#
# smp and torch run alternately, order reversed each round, so that the load other jobs put on
# this shared machine falls on both. Around each run the script measures how much of the cores
# other jobs used meanwhile (/proc/stat minus the run's own CPU time); a run is quiet when that
# is at most SMP_BENCH_QUIET (default 0.10). At least SMP_BENCH_ROUNDS rounds (default 3) run,
# and more, up to SMP_BENCH_MAX_ROUNDS (default 8), until every configuration has a quiet run.
# Per configuration the quiet run with the fastest median step is kept (with none quiet, the
# fastest run, and a WARNING line says that those figures are noise).
# Last line:
#   RESULT pipeline efficiency=<x> vs_torch_1f1b=<ratio> vs_torch_gpipe=<ratio> rss_1f1b_over_gpipe=<ratio>
#     zb_vs_1f1b=<ratio>
#
# Usage (from anywhere): bash bench/pipeline.sh
#   SMP_BUILD_DIR      build tree holding bench/pipeline/pipeline_bench (default build, made by
#                      scripts/setup.sh)
#   SMP_BENCH_ROUNDS   rounds at least (default 3)
#   SMP_BENCH_MAX_ROUNDS  rounds at most, while some configuration has no quiet run (default 8)
#   SMP_BENCH_QUIET    the most of the cores other jobs may use in a quiet run (default 0.10)
#   SMP_BENCH_STEPS    timed steps per run (default 30)
#   SMP_BENCH_MPI_FLAGS  extra mpirun flags, word-split (default none)
set -euo pipefail
source "$(dirname "$0")/common.sh"  # cd to the root; build, python, OMP_NUM_THREADS=1, mpi_flags

rounds=${SMP_BENCH_ROUNDS:-3}
max_rounds=${SMP_BENCH_MAX_ROUNDS:-8}
((max_rounds >= rounds)) || max_rounds=$rounds
steps=${SMP_BENCH_STEPS:-30}
bench=$build/bench/pipeline/pipeline_bench

if [ ! -x "$bench" ]; then
  if [ "$build" != build ]; then
    echo "pipeline.sh: $bench is missing; build it (ninja -C $build pipeline_bench)" >&2
    exit 1
  fi
  echo "pipeline.sh: $bench is missing; building with scripts/setup.sh" >&2
  bash scripts/setup.sh >&2
fi
need_python pipeline.sh

make_out_dir

# Each run is a fresh process (per rank) so that its peak RSS is its own. Around each run the
# machine's CPU time (/proc/stat: busy and total) and the run's own (its processes' user + sys)
# are taken; busy minus the run's own is what other jobs used meanwhile, added to the result
# line as others_cpu=<their share of all the cores' time over the run>.
tick=$(getconf CLK_TCK)
# (cpu_jiffies: bench/common.sh)
measured() {  # output-file command...: runs it (stdout to the file), prints the others' share
  local file=$1 t0 b0 t1 b1 e u s
  shift
  read -r t0 b0 < <(cpu_jiffies)
  if ! /usr/bin/time -f "%e %U %S" -o "$out/time" "$@" > "$file"; then
    echo "pipeline.sh: failed: $*" >&2
    return 1
  fi
  read -r t1 b1 < <(cpu_jiffies)
  read -r e u s < "$out/time"
  awk -v t="$((t1 - t0))" -v b="$((b1 - b0))" -v tick="$tick" -v u="$u" -v s="$s" \
    'BEGIN { o = t > 0 ? (b - (u + s) * tick) / t : 0; printf "%.3f", (o < 0 ? 0 : o) }'
}
run_smp() {  # pipeline round
  local share line
  share=$(measured "$out/raw" mpirun -np 2 "${mpi_flags[@]}" "$bench" --pipeline "$1" \
          --steps "$steps")
  line=$(grep '^smp pipeline=' "$out/raw") \
    || { echo "pipeline.sh: no result from smp $1" >&2; exit 1; }
  echo "$line others_cpu=$share" > "$out/smp.$1.$2"
}
run_torch() {  # schedule round
  local share line
  share=$(measured "$out/raw" "$python" bench/pipeline/torch_pipeline.py --schedule "$1" \
          --steps "$steps")
  line=$(grep '^torch schedule=' "$out/raw") \
    || { echo "pipeline.sh: no result from torch $1" >&2; exit 1; }
  echo "$line others_cpu=$share" > "$out/torch.$1.$2"
}
# A run is quiet when other jobs used at most SMP_BENCH_QUIET (default 0.10) of the cores.
quiet=${SMP_BENCH_QUIET:-0.10}
all_quiet() {  # whether every configuration has a quiet run
  local kind
  for kind in smp.interleaved torch.1f1b smp.simple torch.gpipe smp.zero_bubble; do
    cat "$out/$kind".* | grep -o 'others_cpu=[0-9.]*' | cut -d= -f2 \
      | awk -v q="$quiet" '$1 <= q { found = 1 } END { exit !found }' || return 1
  done
}

echo "pipeline.sh: $rounds to $max_rounds round(s) of smp (mpirun ${mpi_flags[*]} $bench) and" \
     "torch (torch.distributed.pipelining, gloo), alternating" >&2
for ((r = 1; r <= max_rounds; r++)); do
  if ((r % 2)); then
    run_smp interleaved "$r"; run_torch 1f1b "$r"; run_smp simple "$r"; run_torch gpipe "$r"
    run_smp zero_bubble "$r"
  else
    run_smp zero_bubble "$r"
    run_torch gpipe "$r"; run_smp simple "$r"; run_torch 1f1b "$r"; run_smp interleaved "$r"
  fi
  echo "pipeline.sh: round $r done;" \
       "other jobs' share of the cores per run: $(cat "$out"/*."$r" | grep -o 'others_cpu=[0-9.]*' \
       | cut -d= -f2 | tr '\n' ' ')" >&2
  if ((r >= rounds)) && all_quiet; then break; fi
done

"$python" - "$out" "$quiet" <<'EOF'
import glob, os, sys

quiet = float(sys.argv[2])
runs = {}  # (impl, schedule) -> [fields of each run]
for path in sorted(glob.glob(os.path.join(sys.argv[1], "*.*.*"))):
    impl, sched, _ = os.path.basename(path).split(".")
    for line in open(path):
        runs.setdefault((impl, sched), []).append(dict(x.split("=", 1) for x in line.split()[1:]))

need = [("smp", "interleaved"), ("torch", "1f1b"), ("smp", "simple"), ("torch", "gpipe"),
        ("smp", "zero_bubble")]
best, noisy = {}, []
for key in need:
    if key not in runs:
        sys.exit(f"pipeline.sh: no result for {key[0]} {key[1]}")
    # The fastest quiet run; the fastest of all when none was quiet.
    calm = [f for f in runs[key] if float(f["others_cpu"]) <= quiet]
    if not calm:
        noisy.append(" ".join(key))
    best[key] = min(calm or runs[key], key=lambda f: float(f["step_ms"]))

def pair(s):
    return [float(v) for v in s.split(",")]

losses = {f["loss"] for k in need for f in runs[k]}
if len(losses) != 1:
    sys.exit(f"pipeline.sh: the first step's losses differ ({sorted(losses)}): not the same model")
f = best[need[0]]
print(f"pp={f['p']} m={f['m']} model={f['layers']} x (Linear({f['hidden']},{f['hidden']})+GELU) "
      f"batch={f['batch']} steps={f['steps']}; per configuration the quiet run with the fastest "
      f"median step, of {len(runs[need[0]])} rounds; first-step loss {losses.pop()} in every run")
print(f"{'impl':<6}{'schedule':<12}{'step ms':>8}{'min ms':>8}{'busy ms r0,r1':>14}"
      f"{'ideal ms':>9}{'effic.':>8}{'bubble':>7}{'CPU ms r0,r1':>14}{'others':>7}"
      f"{'peak RSS MB r0,r1':>18}{'growth MB':>11}")
rows = [("smp", "interleaved", "1F1B"), ("torch", "1f1b", "1F1B"),
        ("smp", "simple", "GPipe"), ("torch", "gpipe", "GPipe"), ("smp", "zero_bubble", "ZB")]
smp_of = {"1F1B": best[("smp", "interleaved")], "GPipe": best[("smp", "simple")]}
for impl, sched, family in rows:
    f = best[(impl, sched)]
    rss, base = pair(f["rss_mb"]), pair(f["base_rss_mb"])
    growth = ",".join(f"{a - b:.1f}" for a, b in zip(rss, base))
    cpu = ",".join(f"{v:.1f}" for v in pair(f["cpu_ms"]))
    if impl == "smp":
        busy = ",".join(f"{v:.1f}" for v in pair(f["busy_ranks_ms"]))
        ideal, eff = f["ideal_ms"], f"{float(f['efficiency']):.3f}"
        bub = f"{float(f['bubble_measured']):.3f}"
    else:  # torch: smp's compute profile of the same schedule family
        ideal = smp_of[family]["ideal_ms"]
        busy, eff, bub = "-", f"{float(ideal) / float(f['step_ms']):.3f}*", "-"
    print(f"{impl:<6}{sched:<12}{float(f['step_ms']):>8.1f}{float(f['step_min_ms']):>8.1f}"
          f"{busy:>14}{float(ideal):>9.1f}{eff:>8}{bub:>7}{cpu:>14}"
          f"{float(f['others_cpu']):>7.0%}{f'{rss[0]:.1f},{rss[1]:.1f}':>18}{growth:>11}")
print("step: median step time (slowest rank); busy: each rank's compute per step; ideal: slowest "
      "busy / (1 - its schedule's theoretical bubble); effic.: ideal / step (median over steps); "
      "*torch: smp's ideal / torch's step; bubble: measured, 1 - mean busy / step (theory: 1F1B "
      f"and GPipe {float(best[('smp', 'interleaved')]['bubble_theory']):.3f}, ZB "
      f"{float(best[('smp', 'zero_bubble')]['bubble_theory']):.3f}); CPU: CPU time of each rank's process per "
      "step (all threads); others: other jobs' share of the cores during the run; growth: peak "
      "RSS - RSS before the first step.")
if noisy:
    print(f"WARNING: no quiet run (other jobs <= {quiet:.0%} of the cores) for "
          f"{', '.join(noisy)}: those figures are noise; rerun when the machine is quiet "
          "(or with a larger SMP_BENCH_MAX_ROUNDS)")

s1, t1 = best[("smp", "interleaved")], best[("torch", "1f1b")]
sg, tg = best[("smp", "simple")], best[("torch", "gpipe")]
vs_1f1b = float(t1["step_ms"]) / float(s1["step_ms"])
vs_gpipe = float(tg["step_ms"]) / float(sg["step_ms"])
rss_ratio = max(pair(s1["rss_mb"])) / max(pair(sg["rss_mb"]))
zb = best[("smp", "zero_bubble")]
zb_vs_1f1b = float(s1["step_ms"]) / float(zb["step_ms"])
print(f"smp vs torch throughput (torch step / smp step): 1F1B {vs_1f1b:.3f}, GPipe {vs_gpipe:.3f}")
print(f"smp peak RSS (max over ranks): interleaved {max(pair(s1['rss_mb'])):.1f} MB, simple "
      f"{max(pair(sg['rss_mb'])):.1f} MB")
print(f"smp zero bubble vs smp 1F1B (1F1B step / ZB step): {zb_vs_1f1b:.3f}; peak RSS "
      f"{max(pair(zb['rss_mb'])):.1f} MB")
print(f"RESULT pipeline efficiency={float(s1['efficiency']):.3f} vs_torch_1f1b={vs_1f1b:.3f} "
      f"vs_torch_gpipe={vs_gpipe:.3f} rss_1f1b_over_gpipe={rss_ratio:.3f} "
      f"zb_vs_1f1b={zb_vs_1f1b:.3f}")
EOF
