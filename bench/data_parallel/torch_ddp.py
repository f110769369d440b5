"""PyTorch DDP (gloo) twin of bench/data_parallel/dp_bench.cpp: the peer a PyTorch user picks.

Same MLP (`layers` Linear(hidden, hidden), tanh between), same batch per rank, Adam(lr 1e-4),
fp32, DistributedDataParallel(bucket_cap_mb=25) on gloo, one intra-op thread per rank. Times
forward + backward (DDP's overlapped all-reduce) + optimizer step + zero_grad per step, the
median over `steps` after `warmup`, and prints from rank 0:

    torch mode=ddp samples_per_s=790.1 step_ms=81.0 min_ms=75.2

Usage: .venv/bin/python -m torch.distributed.run --nproc_per_node 2 torch_ddp.py [--steps 20]
       [--warmup 3] [--hidden 1024] [--layers 6] [--batch 64]
"""

import argparse
import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP


def main():
    parser = argparse.ArgumentParser()
    for name, default in (("steps", 20), ("warmup", 3), ("hidden", 1024), ("layers", 6), ("batch", 64)):
        parser.add_argument(f"--{name}", type=int, default=default)
    a = parser.parse_args()
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()

    torch.manual_seed(0)
    mods = []
    for i in range(a.layers):
        mods.append(torch.nn.Linear(a.hidden, a.hidden))
        if i + 1 < a.layers:
            mods.append(torch.nn.Tanh())
    model = DDP(torch.nn.Sequential(*mods), bucket_cap_mb=25)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    torch.manual_seed(1 + rank)
    x = torch.randn(a.batch, a.hidden)
    y = torch.randn(a.batch, a.hidden)

    times = []
    for it in range(a.warmup + a.steps):
        dist.barrier()
        start = time.perf_counter()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        if it >= a.warmup:
            times.append(time.perf_counter() - start)
    times.sort()
    median = times[len(times) // 2]
    if rank == 0:
        print(f"torch mode=ddp samples_per_s={a.batch * world / median:.2f} "
              f"step_ms={median * 1e3:.2f} min_ms={times[0] * 1e3:.2f}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
