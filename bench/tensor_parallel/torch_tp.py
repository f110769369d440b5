"""PyTorch DTensor tensor parallelism (gloo, CPU): the peer of bench/tensor_parallel/tp_bench.cpp.

The same pre-LayerNorm causal transformer layer, alone and as a 4-layer stack, parallelised
with ColwiseParallel on the fused QKV and the MLP's first projection and RowwiseParallel on the
attention output and the MLP's second projection (Megatron's plan; the fused QKV gives DTensor
one input all-reduce per attention, as smp has). Same method as tp_bench (see its header).
Rank 0 prints:

    torch layers=4 tokens_per_s=1234.5 step_ms=12.3

Usage: .venv/bin/python -m torch.distributed.run --nproc_per_node 2 torch_tp.py \
           [batch seq hidden heads intermediate iters]
"""

import os
import sys
import time

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor.parallel import (ColwiseParallel, RowwiseParallel,
                                               parallelize_module)


class Block(nn.Module):
    def __init__(self, hidden, heads, intermediate):
        super().__init__()
        self.head_size = hidden // heads
        self.ln1 = nn.LayerNorm(hidden)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.dense = nn.Linear(hidden, hidden)
        self.ln2 = nn.LayerNorm(hidden)
        self.up = nn.Linear(hidden, intermediate)
        self.down = nn.Linear(intermediate, hidden)

    def forward(self, x):
        b, s, _ = x.shape
        qkv = self.qkv(self.ln1(x))  # local: (B, S, 3 * H / tp)
        q, k, v = qkv.view(b, s, 3, -1, self.head_size).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.dense(a.transpose(1, 2).reshape(b, s, -1))
        return x + self.down(F.gelu(self.up(self.ln2(x))))


PLAN = {"qkv": ColwiseParallel(), "dense": RowwiseParallel(),
        "up": ColwiseParallel(), "down": RowwiseParallel()}


def bench(args, mesh, num_layers):
    batch, seq, hidden, heads, intermediate, iters = args
    torch.manual_seed(0)
    layers = [parallelize_module(Block(hidden, heads, intermediate), mesh, PLAN)
              for _ in range(num_layers)]
    params = [p for layer in layers for p in layer.parameters()]
    x = torch.randn(batch, seq, hidden)

    def step():
        for p in params:
            p.grad = None
        h = x
        for layer in layers:
            h = layer(h)
        h.mean().backward()

    for _ in range(2):
        step()
    best = float("inf")
    for _ in range(6):
        dist.barrier()
        start = time.perf_counter()
        for _ in range(iters):
            step()
        dist.barrier()
        best = min(best, (time.perf_counter() - start) / iters)
    if dist.get_rank() == 0:
        print(f"torch layers={num_layers} tokens_per_s={batch * seq / best:.1f} "
              f"step_ms={best * 1e3:.2f}", flush=True)


def main():
    defaults = [4, 128, 256, 8, 1024, 3]
    args = [int(a) for a in sys.argv[1:7]] + defaults[len(sys.argv[1:7]):]
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    mesh = init_device_mesh("cpu", (int(os.environ["WORLD_SIZE"]),))
    for num_layers in (1, 4):
        bench(args, mesh, num_layers)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
