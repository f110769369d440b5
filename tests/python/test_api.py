"""StepOutput semantics, an LR scheduler over DistributedOptimizer, and both checkpoint
families (save, go on, load, go on: the same losses; resume before the first step in a fresh
process) on pp2 (api_worker.py)."""

import json


def test_step_outputs_scheduler_and_checkpoints(run_mpi, tmp_path):
    r = run_mpi(2, "api_worker.py", "--dir", tmp_path, "--phase", "train")
    assert r.returncode == 0, r.stdout[-3000:]
    for name in ("reduce_mean", "non_tensor_per_microbatch", "scheduler_acts", "save_checkpoint_round_trip",
                 "smp_save_round_trip", "full_state_dict"):
        assert r.stdout.count(f"OK {name} ") == 2, (name, r.stdout[-3000:])
    # A full checkpoint names tensors as the user's module does.
    with open(tmp_path / "full3" / "model.safetensors", "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    assert {"wte.weight", "blocks.3.out.bias", "ln_f.weight"} <= set(header), sorted(header)[:8]
    r = run_mpi(2, "api_worker.py", "--dir", tmp_path, "--phase", "resume")
    assert r.returncode == 0, r.stdout[-3000:]
    assert r.stdout.count("OK resume_before_first_step ") == 2, r.stdout[-3000:]
    # Resharded: the pp2 checkpoint resumed by one process without a pipeline.
    r = run_mpi(1, "api_worker.py", "--dir", tmp_path, "--phase", "resume", "--pp", 1)
    assert r.returncode == 0, r.stdout[-3000:]
    assert r.stdout.count("OK resume_before_first_step ") == 1, r.stdout[-3000:]


def test_local_modules_buffers_tracing_and_checkpoint(run_mpi, tmp_path):
    """DistributedModel.local_named_modules / local_named_buffers, smp.is_tracing and SMP's
    patches.checkpoint.checkpoint on pp2 with BatchNorm blocks (running statistics updated in
    place, recomputed): losses and this rank's running statistics equal one process's."""
    r = run_mpi(2, "api_worker.py", "--dir", tmp_path, "--phase", "extras")
    assert r.returncode == 0, r.stdout[-3000:]
    for name in ("is_tracing_inside", "checkpointed_loss_2", "checkpoint_marks", "local_modules_cover",
                 "local_modules_split", "local_buffers_once", "local_buffers_of_local_modules"):
        assert r.stdout.count(f"OK {name} ") == 2, (name, r.stdout[-3000:])
    assert r.stdout.count("OK buffer_") >= 2, r.stdout[-3000:]


def test_hugging_face_gradient_checkpointing_is_the_engines_recompute(run_mpi, tmp_path):
    r = run_mpi(2, "api_worker.py", "--dir", tmp_path, "--phase", "hf_checkpointing",
                env={"PYTHONWARNINGS": "ignore::UserWarning"})
    assert r.returncode == 0, r.stdout[-3000:]
    for name in ("hf_blocks_recomputed", "hf_others_once", "hf_plain_once", "hf_checkpointing_losses"):
        assert r.stdout.count(f"OK {name} ") == 2, (name, r.stdout[-3000:])


def test_checkpoint_functions_and_utils_without_smp():
    """Outside a DistributedModel, patches.checkpoint's functions are torch.utils.checkpoint's
    (the same gradients as no checkpointing); utils.rmsg and get_distribution_axis need no init."""
    import torch

    import smp.torch as smp

    torch.manual_seed(0)
    seq = torch.nn.Sequential(*(torch.nn.Linear(6, 6) for _ in range(5)))
    x = torch.randn(4, 6, requires_grad=True)
    seq(x).pow(2).sum().backward()
    want = [p.grad.clone() for p in seq.parameters()]
    for strategy in ("each", "contiguous", "group_2"):
        seq.zero_grad()
        smp.patches.checkpoint.checkpoint_sequential(seq, x, strategy=strategy).pow(2).sum().backward()
        assert all(torch.allclose(p.grad, w) for p, w in zip(seq.parameters(), want)), strategy
    seq.zero_grad()
    smp.patches.checkpoint.checkpoint(seq, x).pow(2).sum().backward()
    assert all(torch.allclose(p.grad, w) for p, w in zip(seq.parameters(), want))
    try:
        smp.patches.checkpoint.checkpoint_sequential(seq, x, strategy="group_0")
        raise AssertionError("group_0 accepted")
    except ValueError as e:
        assert "strategy='group_0'" in str(e) and "group_<N>" in str(e), e
    assert smp.utils.rmsg("hello") == "hello"  # (no init: no ranks to name)
    p = torch.nn.Parameter(torch.zeros(2, 3))
    assert smp.utils.get_distribution_axis(p) is None
    p._smp_tp_shard = (1, 6)
    assert smp.utils.get_distribution_axis(p) == 1
