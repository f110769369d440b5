"""torch.distributed (gloo) twin of bench/comm_bench.cpp: the peer a PyTorch user would pick.

Same sizes, same calls, same method as comm_bench (see its header), with dist.send/dist.recv
for the ping-pong and dist.all_reduce (sum) for the all-reduce; one intra-op thread per rank.
Starts its own ranks (torch.multiprocessing.spawn, TCP rendezvous on 127.0.0.1) and prints,
from rank 0, one line per (op, size):

    torch p2p 16777216 lat_us=4012.3 GBps=4.181 iters=25 trials=5

Usage: .venv/bin/python bench/torch_comm.py [--ranks 2]
"""

import argparse
import os
import socket
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

TRIALS = 5
TRIAL_SECONDS = 0.08  # 5 trials: >= ~0.4 s per (op, size)
MIN_ITERS = 2
MAX_ITERS = 20000


def sizes_bytes():
    sizes, b = [], 1 << 10
    while b <= 64 << 20:
        sizes.append(b)
        b *= 4
    return sizes


def warmup_iters(nbytes):
    return 3 if nbytes >= 4 << 20 else 20


def agree_iters(seconds_per_call):
    """Rank 0 picks the calls per trial; every rank gets the same number."""
    n = torch.zeros(1, dtype=torch.int64)
    if dist.get_rank() == 0:
        want = TRIAL_SECONDS / max(seconds_per_call, 1e-9)
        n.fill_(min(max(int(want), MIN_ITERS), MAX_ITERS))
    dist.broadcast(n, 0)
    return int(n.item())


def median(values):
    v = sorted(values)
    n = len(v)
    return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2


def ping_pong(out, inp):
    rank = dist.get_rank()
    if rank == 0:
        dist.send(out, 1)
        dist.recv(inp, 1)
    elif rank == 1:
        dist.recv(inp, 0)
        dist.send(out, 0)


def bench_p2p(nbytes):
    rank = dist.get_rank()
    numel = nbytes // 4
    out = torch.full((numel,), float(rank + 1), dtype=torch.float32)
    inp = torch.zeros(numel, dtype=torch.float32)
    warm = warmup_iters(nbytes)
    for _ in range(warm):
        ping_pong(out, inp)
    # A second, timed pass sizes the trials (the first one paid for first-touch and set-up).
    start = time.perf_counter()
    for _ in range(warm):
        ping_pong(out, inp)
    per_call = (time.perf_counter() - start) / warm
    if rank <= 1:
        want = float(2 - rank)
        if inp[0].item() != want or inp[-1].item() != want:
            raise RuntimeError("torch_comm: p2p payload is wrong")
    iters = agree_iters(per_call)
    trials = []
    for _ in range(TRIALS):
        dist.barrier()
        start = time.perf_counter()
        for _ in range(iters):
            ping_pong(out, inp)
        trials.append((time.perf_counter() - start) / iters)
    if rank == 0:
        one_way = median(trials) / 2
        print(f"torch p2p {nbytes} lat_us={one_way * 1e6:.2f} GBps={nbytes / one_way / 1e9:.4f} "
              f"iters={iters} trials={TRIALS}", flush=True)


def bench_all_reduce(nbytes):
    numel = nbytes // 4
    t = torch.ones(numel, dtype=torch.float32)
    dist.all_reduce(t)
    want = float(dist.get_world_size())
    if t[0].item() != want or t[-1].item() != want:
        raise RuntimeError("torch_comm: all_reduce result is wrong")
    t.zero_()  # zeros stay zeros: no overflow, no denormals, whatever the call count
    warm = warmup_iters(nbytes)
    for _ in range(warm):
        dist.all_reduce(t)
    start = time.perf_counter()
    for _ in range(warm):
        dist.all_reduce(t)
    per_call = (time.perf_counter() - start) / warm
    iters = agree_iters(per_call)
    trials = []
    for _ in range(TRIALS):
        dist.barrier()
        start = time.perf_counter()
        for _ in range(iters):
            dist.all_reduce(t)
        trials.append((time.perf_counter() - start) / iters)
    if dist.get_rank() == 0:
        sec = median(trials)
        print(f"torch allreduce {nbytes} lat_us={sec * 1e6:.2f} GBps={nbytes / sec / 1e9:.4f} "
              f"iters={iters} trials={TRIALS}", flush=True)


def worker(rank, world_size, init_method):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world_size)
    try:
        if rank == 0:
            print(f"# torch comm: {world_size} ranks, gloo {torch.__version__}, float32, median of "
                  f"{TRIALS} trials; p2p lat_us is one-way (round trip / 2), allreduce GBps is "
                  "algorithm bandwidth (bytes / time)", flush=True)
        for nbytes in sizes_bytes():
            bench_p2p(nbytes)
        for nbytes in sizes_bytes():
            bench_all_reduce(nbytes)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=2)
    args = parser.parse_args()
    if args.ranks < 2:
        sys.exit("torch_comm: needs at least 2 ranks")
    # One machine: gloo's pairs talk over loopback (where a local address would route anyway).
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    init_method = f"tcp://127.0.0.1:{free_port()}"
    mp.spawn(worker, args=(args.ranks, init_method), nprocs=args.ranks, join=True)


if __name__ == "__main__":
    main()
