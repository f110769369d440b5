#!/usr/bin/env bash
# TensorFlow front benchmark (issue 22): a Keras model trained through `import smp.tensorflow as
# smp` on this machine, in this run. CPU, fp32, 2 ranks, one intra-op and one inter-op thread
# per rank. Model (bench/tensorflow_bench.py): 8 x Dense(512, gelu) + Dense(16) head, SGD,
# global batch 256 (x: 256 x 512), mean cross-entropy; both sides print the first step's loss.
#
#   pipeline_efficiency  smp pp = 2 (interleaved = 1F1B, 8 microbatches, automatic partition: the
#           partitioner puts 4 blocks on each stage), measured as bench/pipeline.sh measures it:
#           busy = the slowest rank's compute in its forward and backward actions during a step
#           (smp.tensorflow.step.last_step_stats), ideal = busy * (m + p - 1) / m (the bubble
#           bound), efficiency = ideal / the step's wall time around the @smp.step call (the
#           slowest rank's), median over the timed steps. Target >= 0.90.
#   dp_vs_mirrored  samples/s of smp dp = 2 (pp 1, 1 microbatch, ddp) / samples/s of the same model
#           under tf.distribute.MultiWorkerMirroredStrategy on the same 2 ranks (TF_CONFIG on two
#           local ports; its step one tf.function: forward, backward, all-reduce, SGD, as
#           TensorFlow's guide writes it). smp's step: @smp.step + apply_gradients in a
#           tf.function. Target >= 1.0. Also shown: pp2 samples/s against mirrored's.
#
# Method: per run SMP_BENCH_WARMUP (3) untimed steps, then SMP_BENCH_STEPS (15) timed steps, the
# median kept; each of the three configurations runs SMP_BENCH_ROUNDS (2) times, alternately,
# and keeps its best round. The machine is shared: other jobs' load falls on every side.
# Last line:
#   RESULT tensorflow pipeline_efficiency=<r> dp_vs_mirrored=<r>
#
# Usage (from anywhere): bash bench/tensorflow.sh
set -euo pipefail
cd "$(dirname "$0")/.."
py=${SMP_PYTHON:-.venv/bin/python}
rounds=${SMP_BENCH_ROUNDS:-2}
steps=${SMP_BENCH_STEPS:-15}
warmup=${SMP_BENCH_WARMUP:-3}
export OMP_NUM_THREADS=1 TF_CPP_MIN_LOG_LEVEL=2 PYTHONPATH="$(pwd)/python${PYTHONPATH:+:$PYTHONPATH}"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
launch() {  # launch <name> <SM_HP_MP_PARAMETERS or ""> <bench args...>
  local name=$1 params=$2
  shift 2
  SM_HP_MP_PARAMETERS="$params" mpiexec --allow-run-as-root --oversubscribe --bind-to none \
    -x OMP_NUM_THREADS -x TF_CPP_MIN_LOG_LEVEL -x PYTHONPATH -x SM_HP_MP_PARAMETERS -np 2 \
    "$py" bench/tensorflow_bench.py --steps "$steps" --warmup "$warmup" "$@" 2>&1 \
    | grep '^BENCH ' | sed "s/^BENCH /$name /" >> "$out/runs.txt"
}
free_port() { "$py" -c "import socket; s = socket.socket(); s.bind(('', 0)); print(s.getsockname()[1])"; }
for r in $(seq "$rounds"); do
  launch mirrored "" --mode mirrored --ports "$(free_port),$(free_port)"
  launch pp2 '{"pipeline_parallel_degree": 2, "microbatches": 8, "pipeline": "interleaved"}' --mode smp
  launch dp2 '{"pipeline_parallel_degree": 1, "microbatches": 1, "ddp": true}' --mode smp
done
"$py" - "$out/runs.txt" <<'PY'
import json, sys
runs = {}
for line in open(sys.argv[1]):
    name, text = line.split(" ", 1)
    runs.setdefault(name, []).append(json.loads(text))
missing = {"mirrored", "pp2", "dp2"} - set(runs)
if missing:
    sys.exit(f"bench/tensorflow.sh: no result from {sorted(missing)} (run bench/tensorflow_bench.py by hand to see why)")
best = {name: max(rs, key=lambda r: r["samples_per_s"]) for name, rs in runs.items()}
pp2 = best["pp2"]
m, p = pp2["microbatches"], pp2["pp"]
efficiency = max(r["busy_s"] * (r["microbatches"] + r["pp"] - 1) / r["microbatches"] / r["step_s"] for r in runs["pp2"])
dp_vs = best["dp2"]["samples_per_s"] / best["mirrored"]["samples_per_s"]
print(f"{'configuration':<34}{'samples/s':>11}{'step (s)':>10}{'busy (s)':>10}{'first loss':>12}")
for name, label in (("mirrored", "MultiWorkerMirroredStrategy, 2"), ("dp2", "smp dp2"), ("pp2", "smp pp2 (1F1B, m=8)")):
    r = best[name]
    busy = f"{r['busy_s']:.4f}" if "busy_s" in r else "-"
    print(f"{label:<34}{r['samples_per_s']:>11.1f}{r['step_s']:>10.4f}{busy:>10}{r['first_loss']:>12.6f}")
print(f"pp2 vs mirrored (samples/s): {best['pp2']['samples_per_s'] / best['mirrored']['samples_per_s']:.3f}")
print(f"RESULT tensorflow pipeline_efficiency={efficiency:.3f} dp_vs_mirrored={dp_vs:.3f}")
PY
