#!/usr/bin/env bash
# Python front benchmark (issue 14, section 5): what training through `import smp.torch as smp`
# costs, on this machine, in this run. CPU, fp32, pp = 2 on 2 ranks, one intra-op thread per
# rank, 4 microbatches, 1F1B (SMP's "interleaved"), AdamW; the split is the same on both sides of
# each pair (half the blocks per stage, embeddings on stage 0, final norm and head on stage 1).
#
#   vs_cpp  tokens/s of Hugging Face's GPT2LMHeadModel trained through the front / tokens/s of
#           smp-train on the same GPT-2 (4 layers, hidden 256, 4 heads, ffn 1024, byte-level
#           vocabulary 257, tied head, batch 16 x 128 tokens, dropout 0). The front side
#           (bench/python_front.py gpt2) is an SMP script: @smp.step with
#           model(input_ids=x, labels=x)["loss"] and model.backward, then clip_master_grads(1.0),
#           AdamW (smp-train's betas and decay groups), zero_grad and the loss as a float: one
#           smp-train step. Attention "sdpa" (smp's blocks and HF's sdpa path both call
#           scaled_dot_product_attention), activation "gelu_pytorch_tanh" (the tanh GELU smp
#           uses, in one kernel). smp-train takes the split from a partition file
#           (load_partition), the front from smp.set_partition. Target >= 0.95.
#   vs_torch_pipelining  tokens/s of a GPT-like nn.Module (bench/python_front.py's GPT: 4 blocks,
#           hidden 256, untied head, the same sizes and batch) pipelined by the front (the loss
#           computed in the step function, SMP's idiom) / tokens/s of the same module, same
#           weights, under torch.distributed.pipelining (two PipelineStages, Schedule1F1B,
#           loss_fn on the last stage, gloo), each rank then stepping AdamW. Both print the first
#           step's loss, which must agree. Target >= 1.0.
#
# Method: per run, SMP_BENCH_WARMUP (3) untimed steps, then SMP_BENCH_STEPS (12) timed steps;
# tokens/s = batch * seq * steps / (sum of the timed steps' wall times on rank 0). smp-train's
# per-step times come from its metrics.jsonl (its step: batch, step, clipping, optimizer,
# zero_grad, loss); its run has one step more, since it traces its last step, which is left
# out. The two sides of a pair run alternately, order reversed each round, SMP_BENCH_ROUNDS (3)
# rounds; each configuration keeps its best round. Around each run the share of the cores other
# jobs used is measured (as bench/pipeline.sh does); a WARNING says when a kept run was not
# quiet. Also reported: the ratios of the fastest single steps over all rounds (what each side
# does while no other job takes a core from it), which this shared machine disturbs less.
# Last line:
#   RESULT python_front vs_cpp=<ratio> vs_torch_pipelining=<ratio> front_gpt2_tps=<x>
#     smp_train_tps=<x> stack_smp_tps=<x> stack_torch_tps=<x> vs_cpp_fastest_step=<ratio>
#     vs_torch_fastest_step=<ratio>
#
# Usage (from anywhere): bash bench/python_front.sh
#   SMP_BUILD_DIR       build tree holding apps/smp-train (default build)
#   SMP_BENCH_ROUNDS    rounds (default 3)
#   SMP_BENCH_WARMUP    untimed steps per run (default 3)
#   SMP_BENCH_STEPS     timed steps per run (default 12)
#   SMP_BENCH_PROFILE   a folder: the front's runs write rank 0's cProfile of the timed steps
#                       there (<run>.<round>.prof, every Python thread) and the script prints the
#                       top functions of the last round's
#   SMP_BENCH_MPI_FLAGS extra mpirun flags, word-split (default none)
set -euo pipefail
source "$(dirname "$0")/common.sh"  # cd to the root; build, python, OMP_NUM_THREADS=1, mpi_flags

need_exe python_front.sh "$build/apps/smp-train" smp-train
need_python python_front.sh
rounds=${SMP_BENCH_ROUNDS:-3}
warmup=${SMP_BENCH_WARMUP:-3}
steps=${SMP_BENCH_STEPS:-12}
profile=${SMP_BENCH_PROFILE:-}
script=python_front.sh
limit=300  # seconds any one run may take (timed_run)
make_out_dir
if [ -n "$profile" ]; then mkdir -p "$profile"; profile=$(cd "$profile" && pwd); fi

# The model, the same on every side.
layers=4 hidden=256 heads=4 ffn=1024 vocab=257 seq=128 batch=16 microbatches=4
python3 -c "print('in the beginning god created the heaven and the earth ' * 40000)" > "$out/text.txt"
"$python" - "$out/partition.json" "$layers" <<'EOF'
import json, sys
layers = int(sys.argv[2])
names = ["embed"] + [f"block.{i}" for i in range(layers)] + ["head"]
stage = [0] + [0 if i < layers // 2 else 1 for i in range(layers)] + [1]
json.dump({"format": "smp-partition", "version": 1, "num_stages": 2, "layers": names,
           "stage_of_layer": stage}, open(sys.argv[1], "w"))
EOF
cat > "$out/run.json" <<JSON
{"model": {"name": "tiny", "num_layers": $layers, "hidden": $hidden, "num_heads": $heads,
           "ffn_hidden": $ffn, "max_seq_len": $seq, "vocab_size": $vocab},
 "data": {"text": "$out/text.txt", "val_fraction": 0.01},
 "training": {"steps": $((warmup + steps + 1)), "global_batch": $batch, "seq_len": $seq, "lr": 1e-3,
              "min_lr": 1e-3, "warmup_steps": 0, "weight_decay": 0.1, "grad_clip": 1.0,
              "val_every": 0, "val_batches": 1, "sample_tokens": 0},
 "smp": {"pipeline_parallel_degree": 2, "microbatches": $microbatches, "pipeline": "interleaved",
         "load_partition": true, "partition_file": "$out/partition.json"},
 "run_dir": "$out/run"}
JSON
stack_args=(--layers "$layers" --hidden "$hidden" --heads "$heads" --ffn "$ffn" --vocab "$vocab"
            --seq "$seq" --batch "$batch" --microbatches "$microbatches" --warmup "$warmup"
            --steps "$steps")

profile_args() { prof=(); [ -z "$profile" ] || prof=(--profile "$profile/$1.$2.prof"); }

run_cpp() {  # round
  rm -rf "$out/run"
  timed_run smp-train "$out/cpp.log" \
    mpirun -np 2 "${mpi_flags[@]}" "$build/apps/smp-train" --config "$out/run.json"
  "$python" - "$out/run/metrics.jsonl" "$warmup" "$steps" "$((batch * seq))" >> "$out/cpp.log" <<'EOF'
import json, statistics, sys
rows = [r for r in map(json.loads, open(sys.argv[1])) if "tokens_per_s" in r]  # steps, not validation
warmup, steps, tokens = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
times = [tokens / r["tokens_per_s"] for r in rows[warmup:warmup + steps]]  # the last one is traced
print(f"smp_train tokens_per_s={tokens * len(times) / sum(times):.1f} "
      f"step_ms={statistics.median(times) * 1e3:.2f} step_min_ms={min(times) * 1e3:.2f} "
      f"steps={len(times)} loss0={rows[0]['loss']:.4f} loss_last={rows[warmup + steps - 1]['loss']:.4f}")
EOF
  keep smp_train "$1" "$out/cpp.log" smp-train
}
run_front() {  # round
  profile_args front_gpt2 "$1"
  timed_run "the front (gpt2)" "$out/front.log" \
    mpirun -np 2 "${mpi_flags[@]}" "$python" bench/python_front.py gpt2 --config "$out/run.json" \
    --warmup "$warmup" --steps "$steps" "${prof[@]}"
  keep front_gpt2 "$1" "$out/front.log" "the front (gpt2)"
}
run_stack_smp() {  # round
  profile_args stack_smp "$1"
  timed_run "the front (stack)" "$out/stack_smp.log" \
    mpirun -np 2 "${mpi_flags[@]}" "$python" bench/python_front.py stack-smp "${stack_args[@]}" "${prof[@]}"
  keep stack_smp "$1" "$out/stack_smp.log" "the front (stack)"
}
run_stack_torch() {  # round
  timed_run torch.distributed.pipelining "$out/stack_torch.log" \
    "$python" bench/python_front.py stack-torch "${stack_args[@]}"
  keep stack_torch "$1" "$out/stack_torch.log" torch.distributed.pipelining
}

echo "python_front.sh: $rounds round(s) of smp-train vs the front (HF GPT-2), then of the front vs" \
     "torch.distributed.pipelining (a user GPT), alternating; $warmup + $steps steps each" >&2
alternate_rounds python_front.sh "$rounds" run_cpp run_front
alternate_rounds python_front.sh "$rounds" run_stack_smp run_stack_torch

"$python" - "$out" "$profile" <<'EOF'
import glob, os, sys

out, profile = sys.argv[1], sys.argv[2]
runs = {}  # name -> [fields of each round]
for path in sorted(glob.glob(os.path.join(out, "*.[0-9]*"))):
    name, _ = os.path.basename(path).rsplit(".", 1)
    for line in open(path):
        runs.setdefault(name, []).append(dict(x.split("=", 1) for x in line.split()[1:]))
best = {k: max(v, key=lambda f: float(f["tokens_per_s"])) for k, v in runs.items()}
for name in ("smp_train", "front_gpt2", "stack_smp", "stack_torch"):
    if name not in best:
        sys.exit(f"python_front.sh: no result for {name}")
print(f"{'run':<18}{'tokens/s':>10}{'step ms':>9}{'min ms':>8}{'others':>8}  rounds (tokens/s)      loss0")
for name in ("smp_train", "front_gpt2", "stack_smp", "stack_torch"):
    f = best[name]
    each = ",".join(f"{float(r['tokens_per_s']):.0f}" for r in runs[name])
    print(f"{name:<18}{float(f['tokens_per_s']):>10.1f}{float(f['step_ms']):>9.1f}"
          f"{float(f['step_min_ms']):>8.1f}{float(f['others']):>8.0%}  {each:<22}{f['loss0']}")
print("tokens/s and step: the best round's (step: median, min: fastest step); others: other jobs' "
      "share of the cores during that run")
busy = [n for n, f in best.items() if float(f["others"]) > 0.10]
if busy:
    print(f"WARNING: other jobs used more than 10% of the cores during the kept run of {', '.join(sorted(busy))}: "
          "those figures are noisy; rerun when the machine is quiet (or with more SMP_BENCH_ROUNDS)")
if best["stack_smp"]["loss0"] != best["stack_torch"]["loss0"]:
    sys.exit(f"python_front.sh: the stack's first losses differ (smp {best['stack_smp']['loss0']}, "
             f"torch {best['stack_torch']['loss0']}): not the same model")
tps = {k: float(v["tokens_per_s"]) for k, v in best.items()}
vs_cpp = tps["front_gpt2"] / tps["smp_train"]
vs_torch = tps["stack_smp"] / tps["stack_torch"]
print(f"front (HF GPT-2) / smp-train: {vs_cpp:.3f} (target >= 0.95); front (user GPT) / "
      f"torch.distributed.pipelining: {vs_torch:.3f} (target >= 1.0)")
# The fastest single step of each side (over every round): what each does when no other job
# takes a core from it; less sensitive to this shared machine's load than the sums above.
fastest = {k: min(float(r["step_min_ms"]) for r in v) for k, v in runs.items()}
fast_cpp = fastest["smp_train"] / fastest["front_gpt2"]
fast_torch = fastest["stack_torch"] / fastest["stack_smp"]
print("fastest steps (ms): " + ", ".join(f"{k} {v:.1f}" for k, v in fastest.items())
      + f"; as ratios: front/smp-train {fast_cpp:.3f}, front/torch {fast_torch:.3f}")
if profile:
    import pstats
    for name in ("front_gpt2", "stack_smp"):
        files = sorted(glob.glob(os.path.join(profile, f"{name}.*.prof")))
        if files:
            print(f"--- {files[-1]} (rank 0, the timed steps, every Python thread), by own time:")
            pstats.Stats(files[-1]).sort_stats("tottime").print_stats(15)
print(f"RESULT python_front vs_cpp={vs_cpp:.3f} vs_torch_pipelining={vs_torch:.3f} "
      f"front_gpt2_tps={tps['front_gpt2']:.0f} smp_train_tps={tps['smp_train']:.0f} "
      f"stack_smp_tps={tps['stack_smp']:.0f} stack_torch_tps={tps['stack_torch']:.0f} "
      f"vs_cpp_fastest_step={fast_cpp:.3f} vs_torch_fastest_step={fast_torch:.3f}")
EOF
