"""PyTorch twin of bench/data_parallel/dp_bench.cpp: the peer a PyTorch user picks.

Same MLP (`layers` Linear(hidden, hidden), tanh between), same batch per rank, Adam(lr 1e-4),
fp32, gloo, one intra-op thread per rank, wrapped as
  --mode ddp   DistributedDataParallel(bucket_cap_mb=25) (bench/data_parallel.sh), or
  --mode fsdp  FSDP2: torch.distributed.fsdp.fully_shard on every Linear and on the root (one
               all-gather per layer before its forward and its backward, gradients
               reduce-scattered, parameters freed after forward: FSDP2's defaults)
               (bench/sharded_data_parallel.sh).
Times forward + backward + optimizer step + zero_grad per step, the median over `steps` after
`warmup`, and prints from rank 0:

    torch mode=ddp samples_per_s=790.1 step_ms=81.0 min_ms=75.2 model_state_bytes=100761600

model_state_bytes: what rank 0 holds between steps of parameters (FSDP: its shards), gradients
(None after zero_grad) and Adam state.

Usage: .venv/bin/python -m torch.distributed.run --nproc_per_node 2 torch_ddp.py [--mode ddp]
       [--steps 20] [--warmup 3] [--hidden 1024] [--layers 6] [--batch 64]
"""

import argparse
import time

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard
from torch.nn.parallel import DistributedDataParallel as DDP


def local_bytes(t):
    if t is None:
        return 0
    t = t.to_local() if hasattr(t, "to_local") else t
    return t.numel() * t.element_size()


def main():
    parser = argparse.ArgumentParser()
    for name, default in (("steps", 20), ("warmup", 3), ("hidden", 1024), ("layers", 6), ("batch", 64)):
        parser.add_argument(f"--{name}", type=int, default=default)
    parser.add_argument("--mode", choices=("ddp", "fsdp"), default="ddp")
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
    model = torch.nn.Sequential(*mods)
    if a.mode == "ddp":
        model = DDP(model, bucket_cap_mb=25)
    else:
        for m in model:
            if isinstance(m, torch.nn.Linear):
                fully_shard(m)
        fully_shard(model)
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
    state = sum(local_bytes(p) + local_bytes(p.grad) for p in model.parameters())
    for per_param in opt.state.values():
        state += sum(local_bytes(v) for k, v in per_param.items() if k != "step")
    if rank == 0:
        print(f"torch mode={a.mode} samples_per_s={a.batch * world / median:.2f} "
              f"step_ms={median * 1e3:.2f} min_ms={times[0] * 1e3:.2f} model_state_bytes={state}",
              flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
