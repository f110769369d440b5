"""bench/hf_tensor_parallel.sh's Python side: Hugging Face's GPT2LMHeadModel trained tensor-parallel
(tp = 2 on 2 ranks, CPU, fp32, one intra-op thread per rank) through smp's Python front and
through PyTorch's DTensor tensor parallelism. Two modes, each printing one line from rank 0:

  smp        (under mpirun -np 2) the model built inside smp.tensor_parallelism() and wrapped in
             smp.DistributedModel (tensor_parallel_degree 2, one microbatch, prescaled batch):
             smp's translation splits attention by heads (c_attn as 3 stacked projections, q | k
             | v), the MLP by intermediate features, the word embedding by vocabulary and the LM
             head by vocabulary with the logits gathered whole, so the loss is transformers' own
             on whole logits. Each step, an SMP script's:
                 @smp.step: loss = model(input_ids=x, labels=x)["loss"]; model.backward(loss)
             then .reduce_mean(), smp.DistributedOptimizer(AdamW).step(), zero_grad(), .item().
      -> smp tokens_per_s=<x> step_ms=<median> loss0=<first step's loss> ...

  dtensor    (starts its own 2 ranks, gloo on 127.0.0.1) the same model, same seed, same weights,
             made DTensor-parallel on a 1-D DeviceMesh("cpu", [0, 1]) by parallelize_module with
             the torchtitan-style plan, no sequence parallelism:
                 transformer.wte                RowwiseParallel(input_layouts=Replicate())
                 transformer.h.*.attn.c_attn    ColwiseParallel()
                 transformer.h.*.attn.c_proj    RowwiseParallel()
                 transformer.h.*.mlp.c_fc       ColwiseParallel()
                 transformer.h.*.mlp.c_proj     RowwiseParallel()
                 lm_head                        ColwiseParallel(output_layouts=Replicate())
             (every output a plain local tensor; the logits are gathered whole, the loss is
             transformers' own on them, as on the smp side). Before parallelizing, so the math
             stays the unsharded model's:
               - each of transformers' Conv1D (weight stored (in, out)), which DTensor's styles do
                 not take, becomes the equivalent nn.Linear (weight transposed, same bias);
               - c_attn's output features (q | k | v, each head by head) are permuted into
                 rank-major order [q_0 k_0 v_0 | q_1 k_1 v_1], so that each rank's contiguous
                 colwise shard is its heads of q, k and v; each attention's split_size and
                 num_heads become this rank's (n_embd / tp, n_head / tp);
               - the tied word embedding and LM head (both split by rows, Shard(0), on the same
                 mesh) are parallelized separately, then tied again: lm_head.weight is set to
                 wte's DTensor parameter, so the pair is one parameter, as in the model.
             Each step: loss = model(input_ids=x, labels=x).loss; loss.backward();
             torch.optim.AdamW(...).step(); zero_grad(); loss.item(). Rank 0 also computes the
             unsharded model's first-step loss (ref_loss0) before parallelizing.
      -> dtensor tokens_per_s=<x> step_ms=<median> loss0=<first step's loss> ref_loss0=<x> ...

Both sides: torch.manual_seed(0) right before GPT2LMHeadModel(config); dropout 0, attention
"sdpa", activation "gelu_new", use_cache False; AdamW(lr=1e-4) (torch's defaults otherwise: the
for-loop implementation on CPU, both sides alike); every rank of the TP group fed the same batch,
random token ids from a generator seeded per step (labels = the ids; transformers shifts them).
Timing as bench/python_front.py's: --warmup untimed steps (smp's first captures the model with
torch.export), then --steps timed steps, each timed on rank 0 from before its batch is made to
after the loss's .item(); tokens/s = batch * seq * steps / (sum of those times); cpu_ms: rank 0's
CPU time per timed step (median; see CpuClock). --profile FILE
writes rank 0's cProfile of the timed steps (every Python thread) to FILE.
"""

import argparse
import os
import statistics
import sys
import time

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from python_front import Timer, spawn_two  # noqa: E402 (bench/python_front.py's timer, profiler, launcher)


def gpt2_config(a):
    from transformers import GPT2Config

    config = GPT2Config(vocab_size=a.vocab, n_positions=a.positions, n_embd=a.hidden, n_layer=a.layers,
                        n_head=a.heads, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, use_cache=False,
                        tie_word_embeddings=True)
    config._attn_implementation = "sdpa"
    return config


def make_model(a):
    """The benchmark's model: GPT2LMHeadModel from seed 0, in training mode."""
    from transformers import GPT2LMHeadModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    torch.manual_seed(0)
    return GPT2LMHeadModel(gpt2_config(a)).train()


def token_batch(step, a):
    """(batch, seq) random token ids, the same on every rank for a step."""
    g = torch.Generator().manual_seed(1000 + step)
    return torch.randint(0, a.vocab, (a.batch, a.seq), generator=g)


class CpuClock:
    """This process's CPU time (every thread's, user + system) per timed step: the work a step
    costs this rank, which other jobs taking the cores changes less than wall time (a rank that
    polls while it waits for its peer counts the polling, one that sleeps does not)."""

    def __init__(self, warmup):
        self.warmup, self.times = warmup, []

    def wrap(self, fn):
        def timed(i):
            c0 = time.process_time()
            out = fn(i)
            if i >= self.warmup:
                self.times.append(time.process_time() - c0)
            return out
        return timed

    def field(self):
        return f"cpu_ms={statistics.median(self.times) * 1e3:.2f}"


def shape_fields(a):
    return (f"layers={a.layers} hidden={a.hidden} heads={a.heads} vocab={a.vocab} batch={a.batch} seq={a.seq} "
            f"tp=2")


# --- smp -------------------------------------------------------------------------------------


def run_smp(a):
    import smp.torch as smp

    smp.init({"tensor_parallel_degree": 2, "microbatches": 1, "ddp": True, "prescaled_batch": True})
    with smp.tensor_parallelism():
        module = make_model(a)
    model = smp.DistributedModel(module)
    opt = smp.DistributedOptimizer(torch.optim.AdamW(model.parameters(), lr=1e-4))

    @smp.step
    def train_step(model, ids):
        loss = model(input_ids=ids, labels=ids)["loss"]
        model.backward(loss)
        return loss

    losses = []

    def one_step(i):
        ids = token_batch(i, a)
        loss = train_step(model, ids).reduce_mean()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())

    cpu, timer = CpuClock(a.warmup), Timer(a.warmup, a.profile if smp.rank() == 0 else None)
    for i in range(a.warmup + a.steps):
        timer.step(i, cpu.wrap(one_step))
    timer.finish()
    if smp.rank() == 0:
        print(f"smp {timer.fields(a.batch * a.seq)} {cpu.field()} {shape_fields(a)} loss0={losses[0]:.6f} "
              f"loss_last={losses[-1]:.6f}", flush=True)
    smp.barrier()


# --- DTensor ---------------------------------------------------------------------------------


def conv1d_to_linear(conv):
    """transformers' Conv1D (y = x W + b, W (in, out)) as the equivalent nn.Linear."""
    n_in, n_out = conv.weight.shape
    lin = nn.Linear(n_in, n_out)
    with torch.no_grad():
        lin.weight.copy_(conv.weight.t())
        lin.bias.copy_(conv.bias)
    return lin


def rank_major(lin, stack, tp):
    """Permutes a Linear's output features from `stack` projections side by side (q | k | v,
    each split by heads into tp contiguous parts) into rank-major order [q_0 k_0 v_0 | q_1 ...]."""
    n = lin.out_features // stack
    part = n // tp
    order = torch.cat([torch.arange(j * n + r * part, j * n + (r + 1) * part)
                       for r in range(tp) for j in range(stack)])
    with torch.no_grad():
        lin.weight.copy_(lin.weight[order])
        lin.bias.copy_(lin.bias[order])


def dtensor_parallel(model, mesh, tp):
    """The model made tensor-parallel by DTensor's parallelize_module (see the module docstring)."""
    from torch.distributed.tensor import Replicate
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    for block in model.transformer.h:
        attn, mlp = block.attn, block.mlp
        attn.c_attn, attn.c_proj = conv1d_to_linear(attn.c_attn), conv1d_to_linear(attn.c_proj)
        mlp.c_fc, mlp.c_proj = conv1d_to_linear(mlp.c_fc), conv1d_to_linear(mlp.c_proj)
        rank_major(attn.c_attn, 3, tp)
        assert attn.num_heads % tp == 0
        attn.split_size, attn.num_heads = attn.split_size // tp, attn.num_heads // tp
    tied = model.lm_head.weight is model.transformer.wte.weight
    plan = {
        "transformer.wte": RowwiseParallel(input_layouts=Replicate()),
        "transformer.h.*.attn.c_attn": ColwiseParallel(),
        "transformer.h.*.attn.c_proj": RowwiseParallel(),
        "transformer.h.*.mlp.c_fc": ColwiseParallel(),
        "transformer.h.*.mlp.c_proj": RowwiseParallel(),
        "lm_head": ColwiseParallel(output_layouts=Replicate()),
    }
    model = parallelize_module(model, mesh, plan)
    if tied:  # both Shard(0) on the same mesh: one parameter again
        wte = model.transformer.wte.weight
        assert model.lm_head.weight.placements == wte.placements, (model.lm_head.weight.placements, wte.placements)
        model.lm_head.weight = wte
    return model


def dtensor_worker(rank, a, init_method):
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=2)
    try:
        model = make_model(a)
        ref = None
        if rank == 0:  # the unsharded model's first loss
            with torch.no_grad():
                ids = token_batch(0, a)
                ref = model(input_ids=ids, labels=ids).loss.item()
        mesh = init_device_mesh("cpu", (2,))
        model = dtensor_parallel(model, mesh, 2)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        losses = []

        def one_step(i):
            ids = token_batch(i, a)
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(loss.item())

        cpu, timer = CpuClock(a.warmup), Timer(a.warmup, a.profile if rank == 0 else None)
        for i in range(a.warmup + a.steps):
            timer.step(i, cpu.wrap(one_step))
        timer.finish()
        if rank == 0:
            print(f"dtensor {timer.fields(a.batch * a.seq)} {cpu.field()} {shape_fields(a)} loss0={losses[0]:.6f} "
                  f"loss_last={losses[-1]:.6f} ref_loss0={ref:.6f}", flush=True)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def run_dtensor(a):
    spawn_two(dtensor_worker, a)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mode", choices=["smp", "dtensor"])
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--profile", help="write rank 0's cProfile of the timed steps here")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=768)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--vocab", type=int, default=50304)
    p.add_argument("--positions", type=int, default=1024)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--batch", type=int, default=4)
    a = p.parse_args()
    torch.set_num_threads(1)
    {"smp": run_smp, "dtensor": run_dtensor}[a.mode](a)


if __name__ == "__main__":
    main()
