"""SMP's two batch flows under tensor parallelism (batch_worker.py), each against one process
trained on the whole global batch with a mean loss:

- prescaled_batch false (SMP's default): the ranks of a TP group hold different samples (by
  dp_rank); every distributed module gathers the group's batch and splits it back
  (tp_ops.gather_batch / split_batch, backward scaled by tp and 1 / tp), non-distributed
  modules run data-parallel. Under tp2, tp4, tp2 x dp2 and tp2 x pp2.
- prescaled_batch true: the ranks of a TP group share a slice (by rdp_rank). Under tp2 (tp4 and
  the other layouts of that flow: test_tensor_parallel.py, test_hf_tensor_parallel.py).

Each run trains 3 steps of an MLP with a DistributedLinear between non-distributed layers (SGD,
and Adam), smp.nn.DistributedTransformerLMHead (SGD), transformers' GPT-2 and LLaMA through
smp.tensor_parallelism, and GPT-2 with only one block's attention marked (SGD): losses, every
parameter (1e-5 relative) and every parameter's update over the 3 steps (1e-3 relative: a
gradient off by a constant factor moves the update by that factor; plain SGD, no clipping, so
nothing hides it; with the scales left out every SGD case fails). The tp2 and tp4 split runs first check
every smp.nn module called directly, in float64: output and input gradient equal to the tp=1
module's on the group's batch (this rank's rows), each parameter's gradient times tp equal to the
reference's gradient of the sum of the group's losses, the exported graph equal to the module.
Every family of hf_families.py under the split flow is in test_hf_tensor_parallel.py (tp2split).
"""

import pytest

from conftest import mpirun

RUNS = {  # name -> (ranks, worker arguments)
    "tp2-split": (2, ["--check", "train", "--units", "--layout", "tp2", "--flow", "split"]),
    "tp4-split": (4, ["--check", "train", "--units", "--layout", "tp4", "--flow", "split"]),
    "tp2dp2-split": (4, ["--check", "train", "--layout", "tp2dp2", "--flow", "split"]),
    "tp2pp2-split": (4, ["--check", "train", "--layout", "tp2pp2", "--flow", "split"]),
    "tp2-prescaled": (2, ["--check", "train", "--layout", "tp2", "--flow", "prescaled"]),
}
CASES = ("mlp sgd", "mlp adam", "lmhead sgd", "gpt2 sgd", "llama sgd", "gpt2attn sgd")


@pytest.mark.parametrize("run", sorted(RUNS))
def test_against_one_process(run):
    ranks, args = RUNS[run]
    r = mpirun(ranks, "batch_worker.py", *args, env={"PYTHONWARNINGS": "ignore::UserWarning"})
    assert r.returncode == 0, r.stdout[-6000:]
    layout, flow = run.split("-")
    for case in CASES:
        assert f"rank 0 {case} {layout} {flow}:" in r.stdout, r.stdout[-3000:]
    if "--units" in args:
        assert f"rank 0 train {layout} {flow}: ok" in r.stdout, r.stdout[-3000:]
        assert "unit parameter gradient" in r.stdout, r.stdout[-3000:]
