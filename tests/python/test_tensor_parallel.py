"""smp.nn's tensor-parallel modules on the Python front (tp_worker.py).

- Each module on 2 ranks (tp2): forward and gradients against plain PyTorch built from the
  gathered whole weights, whole weights equal to the tp=1 module's from the same seed, the
  exported graph (what the DistributedModel runs) equal to the module, dropout's rule, and the
  refusals.
- Two user-written LMs made of smp.nn modules (DistributedTransformerLMHead; and
  DistributedEmbedding + DistributedTransformerLayers + DistributedLinear) trained 20 steps
  with smp.DistributedModel + DistributedOptimizer(Adam) under tp2 and tp2 x pp2 (prescaled
  batch), against the same script in one process with tp 1: per-step losses to 1e-4, the first
  step's gradients (gathered whole) to 1e-5.

Each launch runs once per session (the whole file takes about a minute and a half on two cores).
"""

import glob
import os

import pytest
import torch

from conftest import mpirun

RUNS = {  # name -> (ranks, worker arguments)
    "lmhead-tp2": (2, ["--check", "train", "--units", "--model", "lmhead", "--layout", "tp2"]),
    "lmhead-tp1": (1, ["--check", "train", "--model", "lmhead", "--layout", "tp1"]),
    "lmhead-tp2pp2": (4, ["--check", "train", "--model", "lmhead", "--layout", "tp2pp2"]),
    "blocks-tp2": (2, ["--check", "train", "--model", "blocks", "--layout", "tp2"]),
    "blocks-tp1": (1, ["--check", "train", "--model", "blocks", "--layout", "tp1"]),
    "recompute": (2, ["--check", "recompute"]),
}


class Runs:
    def __init__(self, out):
        self.out = out
        self.done = {}

    def get(self, name):
        if name not in self.done:
            ranks, args = RUNS[name]
            self.done[name] = mpirun(ranks, "tp_worker.py", *args, "--out", self.out,
                                     env={"PYTHONWARNINGS": "ignore::UserWarning"})
        return self.done[name]

    def ok(self, name):
        r = self.get(name)
        assert r.returncode == 0, r.stdout[-4000:]
        return r.stdout

    def results(self, model, layout):
        """Losses and whole gradients of one run (merged over its pipeline stages)."""
        self.ok(f"{model}-{layout}")
        files = sorted(glob.glob(os.path.join(self.out, f"{model}_{layout}_pp*.pt")))
        assert files, f"{model} {layout} wrote no results"
        parts = [torch.load(f) for f in files]
        grads = {}
        for part in parts:
            grads.update(part["grads"])
        return parts[0]["losses"], grads


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return Runs(str(tmp_path_factory.mktemp("tensor_parallel")))


def test_modules_against_plain_pytorch(runs):
    out = runs.ok("lmhead-tp2")
    assert out.count(" units: ") == 2, out[-3000:]


@pytest.mark.parametrize("model,layout", [("lmhead", "tp2"), ("lmhead", "tp2pp2"), ("blocks", "tp2")])
def test_training_matches_tp1(runs, model, layout):
    ref_losses, ref_grads = runs.results(model, "tp1")
    losses, grads = runs.results(model, layout)
    assert len(losses) == len(ref_losses) == 20
    worst_loss = max(abs(a - b) for a, b in zip(losses, ref_losses))
    assert worst_loss <= 1e-4, (losses, ref_losses)
    assert sorted(grads) == sorted(ref_grads)
    for name, g in grads.items():
        assert g.shape == ref_grads[name].shape, name
        diff = (g - ref_grads[name]).abs().max().item()
        assert diff <= 1e-5, f"{model} {layout}: gradient of {name} differs by {diff:.3g}"


def test_recompute_draws_the_same_dropout_masks(runs):
    runs.ok("recompute")
