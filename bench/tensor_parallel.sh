#!/usr/bin/env bash
# Tensor-parallel benchmark: smp's tensor parallelism (smp::tp::ParallelTransformerLayer over
# MPI) against PyTorch's DTensor tensor parallelism (ColwiseParallel/RowwiseParallel on gloo),
# on this machine, in this run. CPU, tp = 2 (2 ranks), one intra-op thread per rank.
#
# Model (the same on both sides): a pre-LayerNorm causal transformer layer, hidden 256, 8 heads,
# MLP 1024 (GELU), batch 4 x sequence 128, fp32; alone and as a 4-layer stack. QKV and the
# first MLP projection are column-parallel, the attention output and the second MLP projection
# row-parallel (Megatron's plan; no sequence parallelism on either side). One step is forward,
# mean, backward; no optimizer. Method (bench/tensor_parallel/tp_bench.cpp and torch_tp.py): 2
# warm-up steps, 6 trials of SMP_BENCH_ITERS steps, best trial. smp and torch run back to back
# in each of SMP_BENCH_ROUNDS rounds (order reversed each round), so that the load other jobs
# put on this shared machine falls on both alike; each round gives a ratio.
#
# vs_torch_dtensor = smp tokens/s / torch tokens/s of the same round, median over rounds, the
# smaller of the 1-layer and 4-layer medians (> 1: smp is faster). The load here swings the
# per-round ratios widely (0.5 to 1.9 seen: smp leads on a quiet machine, trails when other
# jobs crowd the two cores); the table shows every round.
# comm_bytes_over_theory = the bytes smp's TP group moved in one step (counters: the payload
# each rank hands in) / theory (4 all-reduces of b*s*h fp32 per layer: 2 forward, 2 backward),
# over both stacks; 1.00 means no extra communication.
# Last line:  RESULT tensor_parallel vs_torch_dtensor=<ratio> comm_bytes_over_theory=<x>
#
# Usage (from anywhere): bash bench/tensor_parallel.sh
#   SMP_BUILD_DIR     build tree holding bench/tensor_parallel/tp_bench (default build)
#   SMP_BENCH_ROUNDS  rounds (default 5)
#   SMP_BENCH_ITERS   steps per trial (default 3)
set -euo pipefail
source "$(dirname "$0")/common.sh"  # cd to the root; build, python, OMP_NUM_THREADS=1, mpi_flags

rounds=${SMP_BENCH_ROUNDS:-5}
iters=${SMP_BENCH_ITERS:-3}
bench=$build/bench/tensor_parallel/tp_bench
shape=(4 128 256 8 1024 "$iters")
need_exe tensor_parallel.sh "$bench" tp_bench
need_python tensor_parallel.sh

make_out_dir
run_smp() { mpirun -np 2 "${mpi_flags[@]}" "$bench" "${shape[@]}" > "$out/smp.$1"; }
# torchrun's gloo ranks now and then abort at exit ("terminate called without an active
# exception") after printing their results; a run that printed both lines counts, else it is
# retried (3 tries).
run_torch() {
  for try in 1 2 3; do
    "$python" -m torch.distributed.run --nproc_per_node 2 --master_port "$((29500 + RANDOM % 1000))" \
      bench/tensor_parallel/torch_tp.py "${shape[@]}" > "$out/torch.$1" 2> "$out/torch_err" || true
    [ "$(grep -c '^torch layers=' "$out/torch.$1")" -eq 2 ] && return 0
  done
  cat "$out/torch_err" >&2
  echo "tensor_parallel.sh: torch_tp.py failed 3 times" >&2
  exit 1
}

alternate_rounds tensor_parallel.sh "$rounds" run_smp run_torch

"$python" - "$out" "$rounds" <<'PY'
import os, statistics, sys

out, rounds = sys.argv[1], int(sys.argv[2])
def read(path):  # layers -> fields of that line
    lines = {}
    for line in open(path):
        f = line.split()
        if len(f) >= 3 and f[0] in ("smp", "torch"):
            kv = dict(x.split("=", 1) for x in f[1:])
            lines[int(kv["layers"])] = kv
    return lines
runs = [(read(os.path.join(out, f"smp.{r}")), read(os.path.join(out, f"torch.{r}")))
        for r in range(1, rounds + 1)]
stacks = sorted(runs[0][0])
if not stacks:
    sys.exit("tensor_parallel.sh: no results")
print(f"{'layers':>6}{'smp tok/s':>11}{'torch tok/s':>13}{'ratio per round':>30}{'median':>8}"
      f"{'smp comm B':>12}{'theory B':>10}")
medians, measured, theory = [], 0, 0
for layers in stacks:
    smp = [float(s[layers]["tokens_per_s"]) for s, _ in runs]
    torch = [float(t[layers]["tokens_per_s"]) for _, t in runs]
    ratios = [s / t for s, t in zip(smp, torch)]
    medians.append(statistics.median(ratios))
    comm = runs[0][0][layers]
    measured += int(comm["comm_bytes"])
    theory += int(comm["theory_bytes"])
    per_round = " ".join(f"{x:.2f}" for x in ratios)
    print(f"{layers:>6}{max(smp):>11.1f}{max(torch):>13.1f}{per_round:>30}{medians[-1]:>8.2f}"
          f"{comm['comm_bytes']:>12}{comm['theory_bytes']:>10}")
print(f"RESULT tensor_parallel vs_torch_dtensor={min(medians):.2f} "
      f"comm_bytes_over_theory={measured / theory:.2f}")
PY
