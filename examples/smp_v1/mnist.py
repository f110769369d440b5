"""An MNIST-style training script written against SMP v1's PyTorch API, run on smp.

It exercises the SMP calls of SMP's own MNIST example (the SMP container tests'
``smmodelparallel_pt_mnist.py``) the way that script makes them: ``smp.init()`` with its
configuration from ``SM_HP_MP_PARAMETERS``, ``smp.DistributedModel`` around a CNN,
``smp.DistributedOptimizer`` around an Adadelta built on the unwrapped model (with a ``StepLR``
over the wrapper), ``@smp.step`` functions for training and testing, ``smp.allgather`` of the
test results over ``smp.DP_GROUP`` and SMP's first checkpoint family (``smp.save`` /
``smp.load`` with ``local_state_dict`` and ``state_dict``).

The data are synthetic (no download): MNIST-shaped 1x28x28 images made from ten seeded class
templates plus noise, so the network has something to learn. Every rank builds the same data
and reads its data-parallel shard, as SMP's example does with MNIST.

  SM_HP_MP_PARAMETERS='{"partitions": 2, "microbatches": 2, "ddp": true, "pipeline": "interleaved"}' \\
    mpirun -np 4 python examples/smp_v1/mnist.py --steps 20 --save-dir /tmp/mnist

``--batch-size`` is per data-parallel replica (the global batch is batch-size x dp_size).
``--resume`` loads ``<save-dir>/mnist_checkpoint.pt`` (the partial checkpoint a run with
``--save-dir`` wrote at its end) and trains on from the step it holds up to ``--steps``.
"""

import argparse
import json
import os

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.optim as optim
from torch.optim.lr_scheduler import StepLR
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler

import smp.torch as smp

TRAIN_EXAMPLES = 128
TEST_EXAMPLES = 64


class Net(nn.Module):
    """Two convolutions and two linear layers, as in the classic PyTorch MNIST example, narrower."""

    def __init__(self, dropout=0.0):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, 1)
        self.conv2 = nn.Conv2d(8, 16, 3, 1)
        self.dropout1 = nn.Dropout(dropout)
        self.fc1 = nn.Linear(16 * 12 * 12, 64)
        self.dropout2 = nn.Dropout(dropout)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = self.dropout1(x)
        x = torch.flatten(x, 1)
        x = self.dropout2(F.relu(self.fc1(x)))
        return F.log_softmax(self.fc2(x), dim=1)


def synthetic_mnist(seed):
    """(train, test) datasets of 1x28x28 images in 10 classes: a class template plus noise."""
    g = torch.Generator().manual_seed(seed)
    templates = torch.randn(10, 1, 28, 28, generator=g)

    def draw(n):
        labels = torch.randint(0, 10, (n,), generator=g)
        images = 0.6 * templates[labels] + torch.randn(n, 1, 28, 28, generator=g)
        return TensorDataset(images, labels)

    return draw(TRAIN_EXAMPLES), draw(TEST_EXAMPLES)


# smp.step runs the function once per microbatch, pipelined over the model's partitions.
@smp.step
def train_step(model, data, target):
    output = model(data)
    loss = F.nll_loss(output, target, reduction="mean")
    model.backward(loss)
    return output, loss


# Python numbers returned by a step come back as one list entry per microbatch.
@smp.step
def test_step(model, data, target):
    output = model(data)
    loss = F.nll_loss(output, target, reduction="sum").item()
    pred = output.argmax(dim=1, keepdim=True)
    correct = pred.eq(target.view_as(pred)).sum().item()
    return loss, correct


def train(args, model, optimizer, scheduler, loader, sampler, start_step, device):
    """Trains from global step start_step up to args.steps; returns each step's loss (the mean
    over the whole global batch) on every rank."""
    model.train()
    steps_per_epoch = len(loader)
    losses = []
    step = start_step
    while step < args.steps:
        epoch = step // steps_per_epoch
        sampler.set_epoch(epoch)
        for batch_idx, (data, target) in enumerate(loader):
            if epoch * steps_per_epoch + batch_idx < step:
                continue  # resumed inside this epoch: these batches were trained before the checkpoint
            data, target = data.to(device), target.to(device)
            optimizer.zero_grad()
            _, loss_mb = train_step(model, data, target)
            loss = loss_mb.reduce_mean()  # this replica's loss, averaged over its microbatches
            optimizer.step()
            step += 1
            if step % steps_per_epoch == 0:
                scheduler.step()  # StepLR steps once per epoch
            replica_losses = smp.allgather(loss.item(), smp.DP_GROUP)
            losses.append(sum(replica_losses) / len(replica_losses))
            if smp.rank() == 0 and step % args.log_interval == 0:
                print(f"Train step {step} (epoch {epoch} [{batch_idx + 1}/{steps_per_epoch}])\t"
                      f"loss: {losses[-1]:.6f}\tlr: {scheduler.get_last_lr()[0]:.4f}", flush=True)
            if step >= args.steps:
                break
    return losses


def test(model, loader, device):
    model.eval()
    test_loss, correct, seen = 0.0, 0, 0
    with torch.no_grad():
        for data, target in loader:
            data, target = data.to(device), target.to(device)
            loss_batch, correct_batch = test_step(model, data, target)
            test_loss += sum(loss_batch)
            correct += sum(correct_batch)
            seen += len(target)
    # Every data-parallel replica tested its own shard: add the shards up.
    parts = smp.allgather((test_loss, correct, seen), smp.DP_GROUP)
    test_loss = sum(p[0] for p in parts) / sum(p[2] for p in parts)
    accuracy = sum(p[1] for p in parts) / sum(p[2] for p in parts)
    if smp.mp_rank() == 0 and smp.dp_rank() == 0:
        print(f"Test set: average loss {test_loss:.4f}, accuracy {100.0 * accuracy:.2f}%", flush=True)
    return test_loss, accuracy


def main():
    parser = argparse.ArgumentParser(description="MNIST-style CNN on smp (SMP v1's API)")
    parser.add_argument("--steps", type=int, default=20, help="train up to this global step")
    parser.add_argument("--batch-size", type=int, default=16, help="per data-parallel replica")
    parser.add_argument("--test-batch-size", type=int, default=32, help="per data-parallel replica")
    parser.add_argument("--lr", type=float, default=1.0)
    parser.add_argument("--gamma", type=float, default=0.7, help="StepLR's factor per epoch")
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--log-interval", type=int, default=1)
    parser.add_argument("--save-dir", default="", help="write the checkpoints here at the end")
    parser.add_argument("--resume", action="store_true", help="resume from <save-dir>/mnist_checkpoint.pt")
    parser.add_argument("--out", default="", help="rank 0 writes the losses and test accuracy here (JSON)")
    args = parser.parse_args()

    smp.init()  # the configuration comes from SM_HP_MP_PARAMETERS
    torch.manual_seed(args.seed)
    if torch.cuda.is_available():
        torch.cuda.set_device(smp.local_rank())
        device = torch.device("cuda", smp.local_rank())
    else:
        device = torch.device("cpu")

    train_set, test_set = synthetic_mnist(args.seed)
    # Each data-parallel replica reads its own shard; the model-parallel ranks of one replica
    # (same dp_rank) read the same batches.
    train_sampler = DistributedSampler(train_set, num_replicas=smp.dp_size(), rank=smp.dp_rank(),
                                       shuffle=True, seed=args.seed, drop_last=True)
    test_sampler = DistributedSampler(test_set, num_replicas=smp.dp_size(), rank=smp.dp_rank(),
                                      shuffle=False, drop_last=True)
    train_loader = DataLoader(train_set, batch_size=args.batch_size, sampler=train_sampler, drop_last=True)
    test_loader = DataLoader(test_set, batch_size=args.test_batch_size, sampler=test_sampler, drop_last=True)

    model = Net(args.dropout)
    # The optimizer is built on the unwrapped model's parameters, then both are wrapped.
    optimizer = optim.Adadelta(model.parameters(), lr=args.lr)
    model = smp.DistributedModel(model)
    optimizer = smp.DistributedOptimizer(optimizer)
    scheduler = StepLR(optimizer, step_size=1, gamma=args.gamma)

    partial_path = os.path.join(args.save_dir, "mnist_checkpoint.pt")
    full_path = os.path.join(args.save_dir, "mnist_full_model.pt")
    start_step = 0
    if args.resume:
        # Every rank loads its model-parallel rank's file; the loads apply once the model is
        # partitioned (at the first step).
        checkpoint = smp.load(partial_path, partial=True)
        model.load_state_dict(checkpoint["model_state_dict"])
        optimizer.load_state_dict(checkpoint["optimizer_state_dict"])
        scheduler.load_state_dict(checkpoint["scheduler_state_dict"])
        start_step = checkpoint["step"]
        if smp.rank() == 0:
            print(f"Resumed from {partial_path} at step {start_step}", flush=True)

    losses = train(args, model, optimizer, scheduler, train_loader, train_sampler, start_step, device)
    test_loss, accuracy = test(model, test_loader, device)

    if args.save_dir:
        if smp.rank() == 0:
            os.makedirs(args.save_dir, exist_ok=True)
        smp.barrier()
        # One data-parallel replica saves: each of its model-parallel ranks writes its own part.
        if smp.dp_rank() == 0:
            smp.save({"model_state_dict": model.local_state_dict(),
                      "optimizer_state_dict": optimizer.local_state_dict(),
                      "scheduler_state_dict": scheduler.state_dict(),
                      "step": args.steps}, partial_path, partial=True)
            # The whole model, gathered over the pipeline (every dp_rank 0 rank must call it).
            # (SMP's example also saves optimizer.state_dict() here; smp does not gather a
            # Python-stepped optimizer's state over the pipeline yet, so it is left out.)
            model_dict = model.state_dict()
            if smp.mp_rank() == 0:
                smp.save({"model_state_dict": model_dict}, full_path, partial=False)
        smp.barrier()

    if smp.rank() == 0:
        if args.out:
            with open(args.out, "w") as f:
                json.dump({"losses": losses, "start_step": start_step, "test_loss": test_loss,
                           "test_accuracy": accuracy}, f)
        print(f"Done: {len(losses)} steps, test accuracy {accuracy:.4f}", flush=True)


if __name__ == "__main__":
    main()
