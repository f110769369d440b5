"""bench/python_front.sh's Python side: training through smp's Python front (``import
smp.torch as smp``) and through torch.distributed.pipelining, pp = 2 on 2 ranks, CPU, fp32, one
intra-op thread per rank. Three modes, each printing one line from rank 0:

  gpt2 --config run.json     (under mpirun -np 2) Hugging Face's GPT2LMHeadModel with the
                             dimensions of smp-train's run.json (model.*), dropout 0, attention
                             "sdpa" (smp's blocks call at::scaled_dot_product_attention with
                             is_causal=True; so does HF's sdpa path, also in the graph the front
                             captures: graph_split.py), activation "gelu_pytorch_tanh" (GPT-2's
                             tanh GELU, smp's gelu_tanh, in one kernel; HF's default "gelu_new"
                             is the same function in 7 ops), trained through the front as an SMP
                             script does:
                                 @smp.step: loss = model(input_ids=x, labels=x)["loss"];
                                            model.backward(loss)
                             then clip_master_grads(training.grad_clip), AdamW step (smp-train's
                             betas, weight decay on matrices but not on positions, lr), zero_grad
                             and the step's mean loss as a Python float: the work of one
                             smp-train step. The split is smp-train's (half the blocks each,
                             embeddings on stage 0, ln_f and the tied head on stage 1), placed
                             with smp.set_partition (auto_partition off), the schedule and
                             microbatches from run.json's "smp". Random byte-level tokens
                             (tokens/s does not depend on them).
      -> front_gpt2 tokens_per_s=<x> step_ms=<median> loss0=<first step's loss> ...

  stack-smp                  (under mpirun -np 2) the GPT-like nn.Module below (GPT; no tied
                             weights), blocks [0, L/2) plus the embeddings on stage 0, the rest
                             on stage 1 (smp.set_partition), trained through the front with the
                             SMP idiom (out = model(x); loss = cross_entropy(out, y) in the step
                             function; model.backward(loss)), AdamW, zero_grad.
      -> stack_smp tokens_per_s=<x> ...

  stack-torch                (starts its own 2 ranks, gloo on 127.0.0.1) the same module, same
                             weights (torch.manual_seed), split at the same block into two
                             PipelineStages, Schedule1F1B (or ScheduleGPipe with --schedule
                             gpipe) with the same microbatches, loss_fn cross_entropy on the
                             last stage, gradients averaged over microbatches (scale_grads), then
                             each rank's AdamW step and zero_grad.
      -> stack_torch tokens_per_s=<x> ...

Timing (every mode alike): --warmup untimed steps, then --steps timed steps; each step is timed
on rank 0 from before its batch is made to after the optimizer's zero_grad (and, for the front,
the loss's .item(), as smp-train does); tokens/s = batch * seq * steps / (sum of those times).
--profile FILE writes rank 0's cProfile of the timed steps (every thread) to FILE; --timeline
DIR (gpt2, stack-smp) the engine's per-step pipeline timeline (see trace_steps).
"""

import argparse
import json
import os
import socket
import statistics
import threading
import time

import torch
import torch.nn.functional as F
from torch import nn


# --- the user's model (stack-smp, stack-torch) -------------------------------------------------


class Block(nn.Module):
    """Pre-norm GPT block: causal SDPA attention and a GELU MLP."""

    def __init__(self, hidden, heads, ffn):
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(hidden)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)
        self.ln2 = nn.LayerNorm(hidden)
        self.fc = nn.Linear(hidden, ffn)
        self.out = nn.Linear(ffn, hidden)

    def forward(self, x):
        b, s, h = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, s, 3, self.heads, h // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(a.transpose(1, 2).reshape(b, s, h))
        return x + self.out(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))


class GPT(nn.Module):
    """A GPT-like stack a user would write: token and position embeddings, blocks, final norm,
    an untied head; forward(ids) -> logits."""

    def __init__(self, vocab, hidden, heads, ffn, layers, seq):
        super().__init__()
        self.wte = nn.Embedding(vocab, hidden)
        self.wpe = nn.Embedding(seq, hidden)
        self.blocks = nn.ModuleList(Block(hidden, heads, ffn) for _ in range(layers))
        self.ln_f = nn.LayerNorm(hidden)
        self.head = nn.Linear(hidden, vocab, bias=False)

    def forward(self, ids):
        pos = torch.arange(ids.size(1), device=ids.device)
        x = self.wte(ids) + self.wpe(pos)
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


class FirstHalf(nn.Module):
    """torch.distributed.pipelining's stage 0: GPT's embeddings and blocks [0, cut)."""

    def __init__(self, gpt, cut):
        super().__init__()
        self.wte, self.wpe = gpt.wte, gpt.wpe
        self.blocks = nn.ModuleList(gpt.blocks[:cut])

    def forward(self, ids):
        pos = torch.arange(ids.size(1), device=ids.device)
        x = self.wte(ids) + self.wpe(pos)
        for block in self.blocks:
            x = block(x)
        return x


class SecondHalf(nn.Module):
    """Stage 1: blocks [cut, L), the final norm and the head."""

    def __init__(self, gpt, cut):
        super().__init__()
        self.blocks = nn.ModuleList(gpt.blocks[cut:])
        self.ln_f, self.head = gpt.ln_f, gpt.head

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


def make_gpt(a):
    torch.manual_seed(1)
    return GPT(a.vocab, a.hidden, a.heads, a.ffn, a.layers, a.seq)


def token_batch(step, batch, seq, vocab):
    """Inputs and next-token targets, (batch, seq) each, contiguous: random token ids, the same
    on every rank for a step."""
    g = torch.Generator().manual_seed(1000 + step)
    ids = torch.randint(0, vocab, (batch, seq + 1), generator=g)
    return ids[:, :-1].contiguous(), ids[:, 1:].contiguous()


def adamw_groups(named_params, lr, betas, weight_decay):
    """smp-train's AdamW groups: decay on matrices, none on biases, norms and positions."""
    decay, no_decay = [], []
    for name, p in named_params:
        (decay if p.dim() >= 2 and not name.endswith("wpe.weight") else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=betas)


# --- timing --------------------------------------------------------------------------------


class Timer:
    """Per-step wall times of the timed steps on this rank; with a profile path, a cProfile of
    the timed steps in every Python thread (the step's microbatch threads too: cProfile covers
    only the thread that enables it, so each thread started meanwhile gets one of its own)."""

    def __init__(self, warmup, profile_path):
        self.warmup, self.times = warmup, []
        self._profile_path, self._profilers = profile_path, []
        if profile_path:
            import cProfile
            timer, original = self, threading.Thread.run

            def run(thread):
                if not timer._profilers:  # not profiling yet
                    return original(thread)
                prof = cProfile.Profile()
                timer._profilers.append(prof)
                prof.enable()
                try:
                    return original(thread)
                finally:
                    prof.disable()

            threading.Thread.run = run

    def step(self, index, fn):
        timed = index >= self.warmup
        if timed and index == self.warmup and self._profile_path:
            import cProfile
            self._profilers.append(cProfile.Profile())
            self._profilers[0].enable()
        t0 = time.perf_counter()
        out = fn(index)
        if timed:
            self.times.append(time.perf_counter() - t0)
        return out

    def finish(self):
        if self._profilers:
            import pstats
            self._profilers[0].disable()
            stats = pstats.Stats(self._profilers[0])
            for prof in self._profilers[1:]:
                stats.add(prof)
            stats.dump_stats(self._profile_path)

    def fields(self, tokens_per_step):
        total = sum(self.times)
        return (f"tokens_per_s={tokens_per_step * len(self.times) / total:.1f} "
                f"step_ms={statistics.median(self.times) * 1e3:.2f} step_min_ms={min(self.times) * 1e3:.2f} "
                f"last_ms={self.times[-1] * 1e3:.2f} steps={len(self.times)}")


def trace_steps(model, folder):
    """--timeline: the engine writes each step's pipeline actions with their times to
    folder/timeline_rank<r>.json (Chrome trace; the last step stays), as smp-train does for its
    last step (<run_dir>/timeline.json). A diagnostic: it sets the engine option through the
    front's private _options before the engine is built (the front has no public switch)."""
    if folder:
        os.makedirs(folder, exist_ok=True)
        model._options["timeline_dir"] = folder


# --- modes ---------------------------------------------------------------------------------


def run_gpt2(a):
    import smp.torch as smp
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    run = json.load(open(a.config))
    m, t, s = run["model"], run["training"], run["smp"]
    # smp-train's own partition file names its layers (embed, block.i, head), not the units here.
    smp.init({k: v for k, v in s.items() if k not in ("load_partition", "partition_file")}
             | {"auto_partition": False})
    config = GPT2Config(vocab_size=m.get("vocab_size", 257), n_positions=m["max_seq_len"], n_embd=m["hidden"],
                        n_layer=m["num_layers"], n_head=m["num_heads"], n_inner=m.get("ffn_hidden", 4 * m["hidden"]),
                        activation_function="gelu_pytorch_tanh", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                        layer_norm_epsilon=1e-5, use_cache=False)
    config._attn_implementation = "sdpa"
    torch.manual_seed(t.get("seed", 1234))
    module = GPT2LMHeadModel(config).train()
    # smp-train's split: embeddings and blocks [0, L/2) on stage 0; the rest, ln_f and head on 1.
    cut = m["num_layers"] // 2
    for i, block in enumerate(module.transformer.h):
        smp.set_partition(block, 0 if i < cut else 1)
    for mod in (module.transformer.wte, module.transformer.wpe, module.transformer.drop):
        smp.set_partition(mod, 0)
    smp.set_partition(module.transformer.ln_f, 1)
    smp.set_partition(module.lm_head, 1)
    params = sum(p.numel() for p in module.parameters())
    model = smp.DistributedModel(module)
    trace_steps(model, a.timeline)
    opt = smp.DistributedOptimizer(adamw_groups(module.named_parameters(), t["lr"],
                                                (t.get("beta1", 0.9), t.get("beta2", 0.95)),
                                                t.get("weight_decay", 0.1)))
    clip = t.get("grad_clip", 1.0)

    @smp.step
    def train_step(model, x):
        loss = model(input_ids=x, labels=x, use_cache=False)["loss"]
        model.backward(loss)
        return loss

    batch, seq, vocab = t["global_batch"], t["seq_len"], config.vocab_size
    losses = []

    def one_step(i):
        x, _ = token_batch(i, batch, seq, vocab)
        loss = train_step(model, x).reduce_mean()
        if clip > 0:
            opt.clip_master_grads(clip)
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())

    timer = Timer(a.warmup, a.profile if smp.rank() == 0 else None)
    for i in range(a.warmup + a.steps):
        timer.step(i, one_step)
    timer.finish()
    if smp.rank() == 0:
        print(f"front_gpt2 {timer.fields(batch * seq)} layers={m['num_layers']} hidden={m['hidden']} "
              f"batch={batch} seq={seq} m={s.get('microbatches', 1)} pipeline={s.get('pipeline', 'interleaved')} "
              f"params={params} loss0={losses[0]:.4f} "
              f"loss_last={losses[-1]:.4f}", flush=True)
    smp.barrier()


def run_stack_smp(a):
    import smp.torch as smp

    smp.init({"pipeline_parallel_degree": 2, "microbatches": a.microbatches, "auto_partition": False,
              "pipeline": {"1f1b": "interleaved", "gpipe": "simple"}[a.schedule]})
    module = make_gpt(a).train()
    cut = a.layers // 2
    for block in module.blocks[cut:]:
        smp.set_partition(block, 1)
    smp.set_partition(module.ln_f, 1)
    smp.set_partition(module.head, 1)  # wte, wpe, blocks [0, cut): default_partition 0
    model = smp.DistributedModel(module)
    trace_steps(model, a.timeline)
    opt = smp.DistributedOptimizer(torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95),
                                                     weight_decay=0.1))

    @smp.step
    def train_step(model, x, y):
        out = model(x)
        loss = F.cross_entropy(out.reshape(-1, out.size(-1)), y.reshape(-1))
        model.backward(loss)
        return loss

    losses = []

    def one_step(i):
        x, y = token_batch(i, a.batch, a.seq, a.vocab)
        loss = train_step(model, x, y)
        opt.step()
        opt.zero_grad()
        losses.append(loss)

    timer = Timer(a.warmup, a.profile if smp.rank() == 0 else None)
    for i in range(a.warmup + a.steps):
        timer.step(i, one_step)
    timer.finish()
    if smp.rank() == 0:
        print(f"stack_smp {timer.fields(a.batch * a.seq)} schedule={a.schedule} {shape_fields(a)} "
              f"loss0={losses[0].reduce_mean().item():.6f}", flush=True)
    smp.barrier()


def shape_fields(a):
    return (f"layers={a.layers} hidden={a.hidden} heads={a.heads} ffn={a.ffn} vocab={a.vocab} "
            f"batch={a.batch} seq={a.seq} m={a.microbatches}")


def stack_torch_worker(rank, a, init_method):
    import torch.distributed as dist
    from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=2)
    try:
        gpt = make_gpt(a).train()
        cut = a.layers // 2
        mine = FirstHalf(gpt, cut) if rank == 0 else SecondHalf(gpt, cut)
        del gpt
        stage = PipelineStage(mine, rank, 2, torch.device("cpu"))

        def loss_fn(logits, target):
            return F.cross_entropy(logits.reshape(-1, logits.size(-1)), target.reshape(-1))

        kind = {"1f1b": Schedule1F1B, "gpipe": ScheduleGPipe}[a.schedule]
        schedule = kind(stage, n_microbatches=a.microbatches, loss_fn=loss_fn)
        opt = torch.optim.AdamW(mine.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
        first = []

        def one_step(i):
            x, y = token_batch(i, a.batch, a.seq, a.vocab)
            if rank == 0:
                schedule.step(x)
            else:
                losses = []
                schedule.step(target=y, losses=losses)
                if not first:
                    first.append(float(torch.stack(losses).detach().mean()))
            opt.step()
            opt.zero_grad()

        timer = Timer(a.warmup, a.profile if rank == 0 else None)
        for i in range(a.warmup + a.steps):
            timer.step(i, one_step)
        timer.finish()
        gathered = [None, None]
        dist.all_gather_object(gathered, first[0] if first else None)
        if rank == 0:
            print(f"stack_torch {timer.fields(a.batch * a.seq)} schedule={a.schedule} {shape_fields(a)} "
                  f"loss0={gathered[1]:.6f}", flush=True)
    finally:
        dist.destroy_process_group()


def spawn_two(worker, a):
    """Runs worker(rank, a, init_method) on 2 local processes (gloo over 127.0.0.1, a free port)."""
    import torch.multiprocessing as mp

    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(worker, args=(a, f"tcp://127.0.0.1:{port}"), nprocs=2, join=True)


def run_stack_torch(a):
    spawn_two(stack_torch_worker, a)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mode", choices=["gpt2", "stack-smp", "stack-torch"])
    p.add_argument("--config", help="gpt2: smp-train's run.json")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--profile", help="write rank 0's cProfile of the timed steps here")
    p.add_argument("--timeline", help="gpt2, stack-smp: write the engine's per-step timeline here (see trace_steps)")
    p.add_argument("--schedule", choices=["1f1b", "gpipe"], default="1f1b")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--ffn", type=int, default=1024)
    p.add_argument("--vocab", type=int, default=257)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--microbatches", type=int, default=4)
    a = p.parse_args()
    torch.set_num_threads(1)
    {"gpt2": run_gpt2, "stack-smp": run_stack_smp, "stack-torch": run_stack_torch}[a.mode](a)


if __name__ == "__main__":
    main()
