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
