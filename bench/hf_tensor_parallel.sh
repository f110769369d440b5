#!/usr/bin/env bash
# Hugging Face tensor parallelism benchmark (issue 15): Hugging Face's GPT2LMHeadModel trained
# tensor-parallel through smp's Python front (`import smp.torch as smp`, the model built inside
# smp.tensor_parallelism() and translated by smp) against the same model made tensor-parallel by
# PyTorch's DTensor (torch.distributed.tensor.parallel.parallelize_module), on this machine, in
# this run. CPU, fp32, tp = 2 on 2 ranks, one intra-op thread per rank, AdamW (lr 1e-4).
#
#   vs_dtensor  tokens/s of smp / tokens/s of DTensor. Target >= 1.0.
#
# The model, the same on both sides: GPT2LMHeadModel(GPT2Config(n_layer=4, n_embd=768, n_head=12,
# n_positions=1024, vocab_size=50304 (GPT-2's 50257 padded to a multiple of 64, so that both
# sides split the vocabulary evenly), dropout 0, use_cache=False, attention "sdpa", activation
# "gelu_new", the word embedding and LM head tied, as GPT-2's are)), fp32, built right after
# torch.manual_seed(0): the same weights on both sides. Batch 4 x 256 tokens, random ids from a
# generator seeded per step (labels = the ids), every TP rank fed the same batch.
#   smp      (bench/hf_tensor_parallel.py smp, under mpirun -np 2) smp.init({tensor_parallel_degree
#            2, microbatches 1, ddp, prescaled_batch}); the model built inside
#            smp.tensor_parallelism(), wrapped in smp.DistributedModel (smp's translation:
#            attention split by heads, c_attn as 3 stacked projections; the MLP by intermediate
#            features; the word embedding by vocabulary; the LM head by vocabulary with the
#            logits gathered whole, then transformers' own loss on whole logits);
#            smp.DistributedOptimizer(AdamW). Each step: @smp.step (model(input_ids=x,
#            labels=x)["loss"]; model.backward(loss)), .reduce_mean(), opt.step(), opt.zero_grad(),
#            loss.item(). The first step captures the model with torch.export (a warmup step).
#   dtensor  (bench/hf_tensor_parallel.py dtensor, its own 2 processes, gloo on 127.0.0.1) a 1-D
#            DeviceMesh("cpu", [0, 1]) and the torchtitan-style plan, no sequence parallelism:
#            each block's attn.c_attn and mlp.c_fc ColwiseParallel, attn.c_proj and mlp.c_proj
#            RowwiseParallel, transformer.wte RowwiseParallel(input_layouts=Replicate()), lm_head
#            ColwiseParallel(output_layouts=Replicate()) (logits gathered whole, transformers'
#            loss on them, as on the smp side). Made faithful first: every Conv1D becomes the
#            equivalent nn.Linear (DTensor's styles take no Conv1D); c_attn's output features are
#            permuted into rank-major order [q_0 k_0 v_0 | q_1 k_1 v_1] so each rank's colwise
#            shard is its heads of q, k and v, and each attention's split_size and num_heads
#            become this rank's; the tied embedding and head (both split by rows) are parallelized
#            separately and tied again (one DTensor parameter). Each step: model(input_ids=x,
#            labels=x).loss, loss.backward(), torch.optim.AdamW step, zero_grad, loss.item().
# The two first-step losses must agree with each other and with the unsharded model's (computed
# on the dtensor side before parallelizing) to 1e-4 relative, or the script fails: the same model,
# weights and batch.
#
# Method: per run, SMP_BENCH_WARMUP (2) untimed steps, then SMP_BENCH_STEPS (6) timed steps, each
# timed on rank 0 from before its batch is made to after the loss's .item(); tokens/s = batch *
# seq * steps / (sum of the timed steps' wall times). The two sides run alternately, order
# reversed each round, SMP_BENCH_ROUNDS (3) rounds; each side keeps its best round. Around each
# run the share of the cores other jobs used is measured (as bench/python_front.sh does); a
# WARNING says when a kept run was not quiet. Also reported: the ratio of the fastest single steps
# over all rounds, which this shared machine disturbs less, and rank 0's CPU time per step (cpu_ms;
# the process's, every thread's: smp's ranks poll while they wait for each other (Open MPI), gloo's
# sleep, so smp's counts its waits and DTensor's does not).
# Last line:
#   RESULT hf_tensor_parallel vs_dtensor=<ratio> families=7 smp_tps=<x> dtensor_tps=<x>
#     vs_dtensor_fastest_step=<ratio> smp_step_ms=<x> dtensor_step_ms=<x>
# (families: the Hugging Face model families smp translates and tests elsewhere, a constant:
# GPT-2, GPT-Neo, GPT-J, GPT-NeoX, LLaMA, BERT, RoBERTa.)
#
# Usage (from anywhere): bash bench/hf_tensor_parallel.sh
#   SMP_BENCH_ROUNDS    rounds (default 3)
#   SMP_BENCH_WARMUP    untimed steps per run (default 2)
#   SMP_BENCH_STEPS     timed steps per run (default 6)
#   SMP_BENCH_PROFILE   a folder: each side's runs write rank 0's cProfile of the timed steps
#                       there (<side>.<round>.prof, every Python thread) and the script prints
#                       the top functions of the last round's
#   SMP_BENCH_MPI_FLAGS extra mpirun flags, word-split (default none)
set -euo pipefail
source "$(dirname "$0")/common.sh"  # cd to the root; build, python, OMP_NUM_THREADS=1, mpi_flags

need_python hf_tensor_parallel.sh
rounds=${SMP_BENCH_ROUNDS:-3}
warmup=${SMP_BENCH_WARMUP:-2}
steps=${SMP_BENCH_STEPS:-6}
profile=${SMP_BENCH_PROFILE:-}
script=hf_tensor_parallel.sh
limit=300  # seconds any one run may take (timed_run)
make_out_dir
if [ -n "$profile" ]; then mkdir -p "$profile"; profile=$(cd "$profile" && pwd); fi

args=(--layers 4 --hidden 768 --heads 12 --vocab 50304 --positions 1024 --batch 4 --seq 256
      --warmup "$warmup" --steps "$steps")

profile_args() { prof=(); [ -z "$profile" ] || prof=(--profile "$profile/$1.$2.prof"); }

run_smp() {  # round
  profile_args smp "$1"
  timed_run "smp (tp2)" "$out/smp.log" \
    mpirun -np 2 "${mpi_flags[@]}" "$python" bench/hf_tensor_parallel.py smp "${args[@]}" "${prof[@]}"
  keep smp "$1" "$out/smp.log" "smp (tp2)"
}
run_dtensor() {  # round
  profile_args dtensor "$1"
  timed_run "DTensor (tp2)" "$out/dtensor.log" \
    "$python" bench/hf_tensor_parallel.py dtensor "${args[@]}" "${prof[@]}"
  keep dtensor "$1" "$out/dtensor.log" "DTensor (tp2)"
}

echo "hf_tensor_parallel.sh: $rounds round(s) of smp vs DTensor tensor parallelism (HF GPT-2, tp2)," \
     "alternating; $warmup + $steps steps each" >&2
alternate_rounds hf_tensor_parallel.sh "$rounds" run_smp run_dtensor

"$python" - "$out" "$profile" <<'EOF'
import glob, os, sys

out, profile = sys.argv[1], sys.argv[2]
runs = {}  # name -> [fields of each round]
for path in sorted(glob.glob(os.path.join(out, "*.[0-9]*"))):
    name, _ = os.path.basename(path).rsplit(".", 1)
    for line in open(path):
        runs.setdefault(name, []).append(dict(x.split("=", 1) for x in line.split()[1:]))
for name in ("smp", "dtensor"):
    if name not in runs:
        sys.exit(f"hf_tensor_parallel.sh: no result for {name}")
best = {k: max(v, key=lambda f: float(f["tokens_per_s"])) for k, v in runs.items()}
print(f"{'run':<10}{'tokens/s':>10}{'step ms':>9}{'min ms':>9}{'cpu ms':>9}{'others':>8}  rounds (tokens/s)      loss0")
for name in ("smp", "dtensor"):
    f = best[name]
    each = ",".join(f"{float(r['tokens_per_s']):.0f}" for r in runs[name])
    print(f"{name:<10}{float(f['tokens_per_s']):>10.1f}{float(f['step_ms']):>9.1f}"
          f"{float(f['step_min_ms']):>9.1f}{float(f['cpu_ms']):>9.1f}{float(f['others']):>8.0%}  {each:<22}{f['loss0']}")
print("tokens/s and step: the best round's (step: median, min: fastest step); cpu: rank 0's CPU time per "
      "step (median; every thread, waiting by polling included); others: other jobs' share of the cores "
      "during that run")
busy = [n for n, f in best.items() if float(f["others"]) > 0.10]
if busy:
    print(f"WARNING: other jobs used more than 10% of the cores during the kept run of {', '.join(sorted(busy))}: "
          "those figures are noisy; rerun when the machine is quiet (or with more SMP_BENCH_ROUNDS)")
# The same model, weights and batch: every first loss (each round's) agrees with the unsharded one.
ref = float(runs["dtensor"][0]["ref_loss0"])
for name in ("smp", "dtensor"):
    for r in runs[name]:
        if not abs(float(r["loss0"]) - ref) <= 1e-4 * abs(ref):
            sys.exit(f"hf_tensor_parallel.sh: {name}'s first loss {r['loss0']} differs from the unsharded model's "
                     f"{ref:.6f} by more than 1e-4 relative: not the same model")
print(f"first losses: smp {best['smp']['loss0']}, DTensor {best['dtensor']['loss0']}, unsharded {ref:.6f}: agree; "
      f"last step's (shown, not checked): smp {best['smp']['loss_last']}, DTensor {best['dtensor']['loss_last']}")
tps = {k: float(v["tokens_per_s"]) for k, v in best.items()}
vs = tps["smp"] / tps["dtensor"]
# The fastest single step of each side (over every round): what each does when no other job
# takes a core from it; less sensitive to this shared machine's load than the sums above.
fastest = {k: min(float(r["step_min_ms"]) for r in v) for k, v in runs.items()}
fast = fastest["dtensor"] / fastest["smp"]
print(f"smp / DTensor: {vs:.3f} (target >= 1.0); fastest steps (ms): smp {fastest['smp']:.1f}, "
      f"DTensor {fastest['dtensor']:.1f}, as a ratio {fast:.3f}")
if profile:
    import pstats
    for name in ("smp", "dtensor"):
        files = sorted(glob.glob(os.path.join(profile, f"{name}.*.prof")))
        if files:
            print(f"--- {files[-1]} (rank 0, the timed steps, every Python thread), by own time:")
            pstats.Stats(files[-1]).sort_stats("tottime").print_stats(15)
print(f"RESULT hf_tensor_parallel vs_dtensor={vs:.3f} families=7 smp_tps={tps['smp']:.1f} "
      f"dtensor_tps={tps['dtensor']:.1f} vs_dtensor_fastest_step={fast:.3f} "
      f"smp_step_ms={float(best['smp']['step_ms']):.1f} dtensor_step_ms={float(best['dtensor']['step_ms']):.1f}")
EOF
