"""Runs under mpirun: a user-written model trained through smp.torch under one layout, against
the same script run with plain PyTorch in this process on the whole batch. Prints the largest
differences and exits non-zero when they pass the tolerances (1e-5 on the first step's
gradients, 1e-4 on the losses).

  mpirun -np 4 python tests/python/parity_worker.py --model gpt --layout pp2dp2 --optimizer adam
"""

import argparse
import copy
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import models  # noqa: E402

import smp.torch as smp  # noqa: E402

LAYOUTS = {
    "pp2": {"pipeline_parallel_degree": 2, "microbatches": 4, "ddp": True},
    "dp2": {"pipeline_parallel_degree": 1, "microbatches": 2, "ddp": True},
    "pp2dp2": {"pipeline_parallel_degree": 2, "microbatches": 2, "ddp": True},
    "pp2dp2_zero1": {"pipeline_parallel_degree": 2, "microbatches": 2, "ddp": True, "shard_optimizer_state": True},
    "pp2_simple": {"pipeline_parallel_degree": 2, "microbatches": 2, "ddp": True, "pipeline": "simple"},
}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", choices=["cnn", "gpt", "gpt2", "llama", "bert"], required=True)
    p.add_argument("--layout", choices=sorted(LAYOUTS), required=True)
    p.add_argument("--optimizer", choices=["sgd", "adam", "adadelta"], default="adam")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--grad-scaler", action="store_true", help="smp's side scales its loss with smp.amp.GradScaler")
    p.add_argument("--accumulate", type=int, default=1,
                   help="smp's side runs each step as this many backward passes over parts of the batch, "
                        "with backward_passes_per_step set so (Hugging Face's Trainer: the loss divided by it)")
    a = p.parse_args()
    torch.set_num_threads(1)
    smp.init(LAYOUTS[a.layout])

    torch.manual_seed(0)
    hf = a.model in ("gpt2", "llama", "bert")
    module = models.hf_model(a.model) if hf else models.Net() if a.model == "cnn" else models.TinyGPT()
    reference = copy.deepcopy(module)
    make_opt = {"sgd": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9),
                "adam": lambda ps: torch.optim.Adam(ps, lr=1e-3),
                "adadelta": lambda ps: torch.optim.Adadelta(ps, lr=1.0)}[a.optimizer]
    ref_opt = make_opt(reference.parameters())
    model = smp.DistributedModel(module, backward_passes_per_step=a.accumulate)
    opt = smp.DistributedOptimizer(make_opt(model.parameters()))
    # An LR scheduler on both sides: the engine must step with the learning rate it writes.
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.5)
    ref_sched = torch.optim.lr_scheduler.StepLR(ref_opt, step_size=5, gamma=0.5)

    def forward(model, x, y):  # what the script's step does; Hugging Face models take the labels
        return model(input_ids=x, labels=y)["loss"] if hf else loss_of(model(x), y)

    def loss_of(out, y):
        return F.nll_loss(out, y) if a.model == "cnn" else F.cross_entropy(out.reshape(-1, out.size(-1)), y.reshape(-1))

    scaler = smp.amp.GradScaler(init_scale=1024.0) if a.grad_scaler else None

    @smp.step
    def train_step(model, x, y):
        loss = forward(model, x, y)
        model.backward(scaler.scale(loss / a.accumulate) if scaler else loss / a.accumulate)
        return loss

    batch_of = models.cnn_batch if a.model == "cnn" else models.gpt_batch
    if a.model == "bert":  # masked LM: every position predicts its own token
        batch_of = lambda step, batch: (models.gpt_batch(step, batch)[0],) * 2  # noqa: E731
    per_replica = a.batch // smp.dp_size()
    worst_loss = worst_grad = 0.0
    for step in range(a.steps):
        x, y = batch_of(step, a.batch)
        mine = slice(smp.dp_rank() * per_replica, (smp.dp_rank() + 1) * per_replica)
        part = per_replica // a.accumulate
        loss = sum(train_step(model, x[mine][k * part:(k + 1) * part], y[mine][k * part:(k + 1) * part]).reduce_mean()
                   for k in range(a.accumulate)) / a.accumulate
        torch.distributed.all_reduce(loss, group=smp.get_dp_process_group())
        loss = loss.item() / smp.dp_size()

        ref_opt.zero_grad()
        ref_loss = forward(reference, x, y)
        ref_loss.backward()
        worst_loss = max(worst_loss, abs(loss - ref_loss.item()))
        if scaler:
            scaler.unscale_(opt)
        if step == 0 and not smp.state.cfg["shard_optimizer_state"]:
            ref_grads = dict(reference.named_parameters())
            names = [n for n, _ in model.local_named_parameters()]
            assert names, "this rank holds no parameters"
            for name, param in model.local_named_parameters():
                diff = (param.grad - ref_grads[name].grad).abs().max().item()
                worst_grad = max(worst_grad, diff)
        if scaler:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        opt.zero_grad()
        ref_opt.step()
        sched.step()
        ref_sched.step()

    print(f"rank {smp.rank()} {a.model} {a.layout} {a.optimizer}: max |loss diff| {worst_loss:.3g} over "
          f"{a.steps} steps, max |grad diff| {worst_grad:.3g}", flush=True)
    ok = worst_loss <= 1e-4 and worst_grad <= 1e-5
    smp.barrier()
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
