"""Runs under mpirun: smp.init with the config given as JSON, then prints the port of the
torch.distributed rendezvous the Python front opened (its TCPStore's) on each rank.

  mpirun -np 2 python tests/python/port_worker.py '{"ddp": true, "ddp_port": 29601}'
"""

import json
import sys

import torch.distributed as dist

import smp.torch as smp


def main():
    smp.init(json.loads(sys.argv[1]))
    store = dist.distributed_c10d._get_default_store()
    while hasattr(store, "underlying_store"):  # PrefixStores over the TCPStore
        store = store.underlying_store
    print(f"rank {smp.rank()} rendezvous port {store.port}", flush=True)
    smp.barrier()


if __name__ == "__main__":
    main()
