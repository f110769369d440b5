"""torch.distributed.pipelining twin of bench/pipeline/pipeline_bench.cpp (the peer a user picks).

Same model, data, split, loss and method as pipeline_bench (see its header):

    model     --layers (8) blocks of Linear(--hidden, --hidden) + GELU (1024) built from
              torch.manual_seed(1) (the same weights as libtorch's), first half on rank 0;
              each rank wraps its half in a PipelineStage (gloo, CPU).
    data      x, y = randn(--batch, --hidden) (256) after torch.manual_seed(7); loss MSE
              (mean); --microbatches (8); scale_grads=True averages gradients over microbatches.
    schedule  --schedule 1f1b (Schedule1F1B) or gpipe (ScheduleGPipe).
    step      schedule.step(...), forward + backward, no optimizer; grads set to None after
              each step, outside the timed region.
    method    --warmup (3) untimed steps (the first also infers the stage shapes), then --steps
              (30) timed steps, each after a barrier; a step's time is the slowest rank's.
              Also the CPU time each rank's process used per step (all threads, gloo's too).
    memory    VmHWM (peak RSS) of each rank at the end, VmRSS before the first step.

Starts its own 2 ranks (torch.multiprocessing.spawn, TCP rendezvous on 127.0.0.1), one
intra-op thread each, and prints from rank 0 one line:

    torch schedule=1f1b ... step_ms=<median> step_min_ms=... rss_mb=<r0>,<r1> base_rss_mb=...
          loss=...

Usage: .venv/bin/python bench/pipeline/torch_pipeline.py --schedule 1f1b
"""

import argparse
import os
import socket
import statistics
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

RANKS = 2  # pp = 2


def proc_status_mb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    return -1.0


class Block(torch.nn.Module):
    def __init__(self, hidden):
        super().__init__()
        self.linear = torch.nn.Linear(hidden, hidden)

    def forward(self, x):
        return F.gelu(self.linear(x))


def worker(rank, args, init_method):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=RANKS)
    try:
        run(rank, args)
    finally:
        dist.destroy_process_group()


def run(rank, args):
    torch.manual_seed(1)
    blocks = [Block(args.hidden) for _ in range(args.layers)]  # every rank draws all weights
    half = args.layers // 2
    mine = torch.nn.Sequential(*(blocks[:half] if rank == 0 else blocks[half:]))
    del blocks
    torch.manual_seed(7)
    x = torch.randn(args.batch, args.hidden)
    y = torch.randn(args.batch, args.hidden)

    stage = PipelineStage(mine, rank, RANKS, torch.device("cpu"))
    kind = {"1f1b": Schedule1F1B, "gpipe": ScheduleGPipe}[args.schedule]
    schedule = kind(stage, n_microbatches=args.microbatches, loss_fn=F.mse_loss)
    last = rank == RANKS - 1

    base_rss = proc_status_mb("VmRSS")
    walls, cpus, first_loss = [], [], 0.0
    for it in range(args.warmup + args.steps):
        dist.barrier()
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        if rank == 0:
            schedule.step(x)
        else:
            losses = []
            schedule.step(target=y, losses=losses)
        seconds = time.perf_counter() - t0
        cpu_seconds = time.process_time() - cpu0
        if it == 0 and last:
            first_loss = float(torch.stack(losses).detach().mean())
        for p in mine.parameters():
            p.grad = None
        if it >= args.warmup:
            walls.append(seconds)
            cpus.append(cpu_seconds)
    hwm = proc_status_mb("VmHWM")

    gathered = [None] * RANKS
    dist.all_gather_object(gathered, (walls, hwm, base_rss, first_loss, cpus))
    if rank == 0:
        step = [max(g[0][i] for g in gathered) for i in range(args.steps)]
        print(f"torch schedule={args.schedule} p={RANKS} m={args.microbatches} "
              f"layers={args.layers} hidden={args.hidden} batch={args.batch} steps={args.steps} "
              f"step_ms={statistics.median(step) * 1e3:.3f} step_min_ms={min(step) * 1e3:.3f} "
              f"cpu_ms={statistics.median(gathered[0][4]) * 1e3:.3f},"
              f"{statistics.median(gathered[1][4]) * 1e3:.3f} "
              f"rss_mb={gathered[0][1]:.1f},{gathered[1][1]:.1f} "
              f"base_rss_mb={gathered[0][2]:.1f},{gathered[1][2]:.1f} "
              f"loss={gathered[-1][3]:.6f}", flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schedule", choices=["1f1b", "gpipe"], default="1f1b")
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--microbatches", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    if args.layers < 2:
        sys.exit("torch_pipeline: needs at least 2 layers")
    # One machine: gloo's pairs talk over loopback (where a local address would route anyway).
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    init_method = f"tcp://127.0.0.1:{free_port()}"
    mp.spawn(worker, args=(args, init_method), nprocs=RANKS, join=True)


if __name__ == "__main__":
    main()
