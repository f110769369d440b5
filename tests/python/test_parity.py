"""A user-written CNN and transformer, and transformers' GPT-2, LLaMA and BERT, trained through smp.torch under pp2, dp2 and pp2 x dp2
(with and without shard_optimizer_state) against the same script with plain PyTorch in one
process: 1e-5 on the first step's gradients, 1e-4 on 20 steps of losses (parity_worker.py)."""

import pytest

_CASES = [
    ("gpt", "pp2", "adam", 2, "--grad-scaler"),  # smp.amp.GradScaler: scaled, unscaled, the same steps
    ("cnn", "pp2", "sgd", 2),  # SGD without clipping
    ("cnn", "dp2", "adam", 2),
    ("cnn", "pp2dp2_zero1", "adam", 4),
    ("cnn", "dp2", "adadelta", 2),
    ("cnn", "dp2", "adam", 2, "--accumulate=2"),  # backward_passes_per_step: two passes per step
    ("gpt", "pp2dp2_zero1", "adam", 4, "--accumulate=2"),  # an optimizer the engine does not run: steps in Python
    ("gpt", "pp2", "adam", 2),  # tied embedding and head on different stages
    ("gpt", "dp2", "sgd", 2),
    ("gpt", "pp2dp2", "adam", 4),
    ("gpt", "pp2dp2_zero1", "adam", 4),
    ("gpt", "pp2_simple", "adam", 2),
    # transformers' own models, captured as they are (loss computed inside, from labels)
    ("gpt2", "pp2dp2", "adam", 4),
    ("llama", "pp2", "adam", 2),
    ("bert", "pp2", "sgd", 2),
]


CASES = [c if len(c) == 5 else (*c, "") for c in _CASES]  # the fifth: an extra worker flag


@pytest.mark.parametrize("model,layout,optimizer,ranks,extra", CASES, ids=["-".join(map(str, c)).strip("-") for c in CASES])
def test_matches_plain_pytorch(run_mpi, model, layout, optimizer, ranks, extra):
    steps = 8 if model in ("gpt2", "llama", "bert") else 20
    r = run_mpi(ranks, "parity_worker.py", "--model", model, "--layout", layout, "--optimizer", optimizer,
                "--steps", steps, *([extra] if extra else []))
    assert r.returncode == 0, r.stdout[-3000:]
    assert r.stdout.count("max |loss diff|") == ranks, r.stdout[-3000:]
