"""Runs under mpirun: one kind of bad input, which must end every rank with a clear error
(printed as "ERROR <type>: <message>") and a non-zero exit, never a hang.

  mpirun -np 2 python tests/python/errors_worker.py --case indivisible_batch
"""

import argparse
import os
import sys

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import models  # noqa: E402

import smp.torch as smp  # noqa: E402


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)

    def forward(self, x):
        x = self.a(x)
        if x.sum() > 0:  # control flow on a value: torch.export cannot capture it
            x = -x
        return self.b(x)


def train(model, batch):
    @smp.step
    def train_step(model, x):
        out = model(x)
        loss = out.float().pow(2).mean()
        model.backward(loss)
        return loss

    return train_step(model, batch)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--case", required=True)
    case = p.parse_args().case
    # A stage failing mid-schedule must not leave its peer waiting for the comm timeout: long here.
    smp.init({"pipeline_parallel_degree": 2, "microbatches": 4, "ddp": True, "comm_timeout_s": 120})
    torch.manual_seed(0)
    if case == "model_outside_step":
        model = smp.DistributedModel(models.Net())
        model(torch.randn(4, 1, 28, 28))
    elif case == "backward_outside_step":
        model = smp.DistributedModel(models.Net())
        model.backward(torch.zeros(()))
    elif case == "indivisible_batch":
        model = smp.DistributedModel(models.Net())
        train(model, torch.randn(6, 1, 28, 28))
    elif case == "untraceable_module":
        model = smp.DistributedModel(DataDependent())
        train(model, torch.randn(8, 4))
    elif case == "wrong_group":
        smp.broadcast("x", "DP_GROUP")
    elif case == "wrong_rank_type":
        smp.recv_from(0, smp.DP_GROUP)
    elif case == "unknown_model_argument":
        smp.DistributedModel(models.Net(), bucket_size_mb=10)
    elif case == "two_model_calls":
        model = smp.DistributedModel(models.Net())

        @smp.step
        def twice(model, x):
            return model(x) + model(x)

        twice(model, torch.randn(8, 1, 28, 28))
    elif case == "last_stage_fails_in_backward":
        # The last stage raises in its backward (a gradient hook) while the first stage waits
        # for its gradients: the failing rank reports its own error, and the waiting rank stops
        # at once (not at comm_timeout_s), naming the failed rank and its error.
        model = smp.DistributedModel(models.Net())
        train(model, torch.randn(8, 1, 28, 28))

        def fail(grad):
            raise RuntimeError("injected failure in the last stage's backward")

        if smp.pp_rank() == 1:
            next(model.local_parameters()).register_hook(fail)
        train(model, torch.randn(8, 1, 28, 28))
    else:
        raise SystemExit(f"unknown case {case}")
    print("no error raised", flush=True)


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # noqa: BLE001 (the test reads the message)
        print(f"ERROR {type(e).__name__}: {e}", flush=True)
        sys.exit(3)
