"""SMP's public example scripts, re-written for smp (examples/smp_v1/mnist.py and gpt2.py), run
the way SageMaker runs them: mpirun, with the layout in SM_HP_MP_PARAMETERS.

Each script under pipeline 2 x data parallel 2 (4 ranks) is checked against the same script in
one process (partitions 1) with the same seed and the same global batch: per-step losses to
1e-4. GPT-2 also with --manual-partition and --activation-checkpointing (pp2). Each checkpoint
family round-trips: a run trains N steps and saves, a fresh run resumes and trains M more; its
losses equal the uninterrupted one-process run's steps N+1..N+M to 1e-5, and the full models
saved at the end equal the one-process run's to 1e-4.

Hugging Face's GPT-2 built under smp.model_creation (tensor parallelism 2 x pipeline 2, 4 ranks)
against one process: losses to 1e-4, the full model (Hugging Face's names and shapes) to 1e-4.

GPT-2 built from smp.nn (gpt2.py --smp-nn, DistributedTransformerLMHead) under tensor
parallelism 2 (2 ranks) and tp2 x pp2 (4 ranks), prescaled_batch, against the same script with
--smp-nn in one process: per-step losses to 1e-4; its partial checkpoint (TP shards) round-trips
under tp2 x pp2, and the full model gathered from the shards equals the one-process one to 1e-4.

SMP's default flow (prescaled_batch false) under tp2: the script samples by dp_rank, so the two
TP ranks take different halves of the global batch; both models (Hugging Face's GPT-2 and
--smp-nn) give the one-process run's losses to 1e-4.

Runs are shared between tests (each launched once per session); the whole file takes a few
minutes on two cores.
"""

import json
import os
import re
import subprocess
import sys

import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
EXAMPLES = os.path.join(ROOT, "examples", "smp_v1")

ONE_PROCESS = {"partitions": 1, "microbatches": 2, "ddp": True}
PP2DP2 = {"partitions": 2, "microbatches": 2, "ddp": True, "pipeline": "interleaved"}
TP2 = {"tensor_parallel_degree": 2, "ddp": True, "prescaled_batch": True, "microbatches": 2}
TP2_SPLIT = {"tensor_parallel_degree": 2, "ddp": True, "microbatches": 2}  # SMP's default: prescaled_batch false
TP2PP2 = dict(TP2, partitions=2)

N, M = 3, 3  # steps before the checkpoint, steps after it
MNIST_BATCH = 16  # per replica under dp2; the one-process run takes the global batch
GPT_BATCH = 8


def launch(np, script, params, args, timeout=240):
    """Runs examples/smp_v1/<script> under mpirun; fails the test on a non-zero exit or a hang."""
    env = dict(os.environ, OMP_NUM_THREADS="1", OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               PYTHONUNBUFFERED="1", PYTHONWARNINGS="ignore::UserWarning", SM_HP_MP_PARAMETERS=json.dumps(params))
    cmd = ["mpirun", "-np", str(np), "--oversubscribe", sys.executable, os.path.join(EXAMPLES, script),
           *map(str, args)]
    try:
        r = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           timeout=timeout)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{' '.join(cmd)} did not finish in {timeout} s; output:\n{e.stdout}")
    assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stdout[-4000:]}"
    return r.stdout


class Runs:
    """Each named run once per session; its --out JSON, its directory and its output."""

    def __init__(self, base):
        self.base = base
        self.done = {}

    def dir(self, name):
        return os.path.join(self.base, name)

    def get(self, name):
        if name not in self.done:
            self.done[name] = self._run(name)
        return self.done[name]

    def _run(self, name):
        out = os.path.join(self.base, f"{name}.json")
        mnist = ["--batch-size", MNIST_BATCH, "--out", out]
        gpt = ["--batch-size", GPT_BATCH, "--out", out]
        nn = ["--smp-nn", "--batch-size", 2 * GPT_BATCH, "--out", out]
        if name == "mnist_1proc_N":  # for the full model and test accuracy after N steps
            log = launch(1, "mnist.py", ONE_PROCESS, ["--batch-size", 2 * MNIST_BATCH, "--out", out, "--steps", N,
                                                      "--save-dir", self.dir(name)])
        elif name == "mnist_1proc":
            log = launch(1, "mnist.py", ONE_PROCESS, ["--batch-size", 2 * MNIST_BATCH, "--out", out, "--steps", N + M])
        elif name == "mnist_pp2dp2_N":
            log = launch(4, "mnist.py", PP2DP2, mnist + ["--steps", N, "--save-dir", self.dir("mnist_ckpt")])
        elif name == "mnist_pp2dp2_resumed":
            self.get("mnist_pp2dp2_N")
            log = launch(4, "mnist.py", PP2DP2, mnist + ["--steps", N + M, "--save-dir", self.dir("mnist_ckpt"),
                                                         "--resume"])
        elif name == "gpt2_1proc":
            log = launch(1, "gpt2.py", ONE_PROCESS, ["--batch-size", 2 * GPT_BATCH, "--out", out, "--steps", N + M,
                                                      "--model-dir", self.dir(name)])
        elif name == "gpt2_pp2dp2_N":
            log = launch(4, "gpt2.py", PP2DP2, gpt + ["--pipeline-parallel-degree", 2, "--steps", N,
                                                      "--save-dir", self.dir("gpt2_ckpt"), "--checkpoint-freq", N])
        elif name == "gpt2_pp2dp2_resumed":
            self.get("gpt2_pp2dp2_N")
            # a checkpoint every step from here: with 2 kept, steps N+M-1 and N+M remain
            log = launch(4, "gpt2.py", PP2DP2, gpt + ["--pipeline-parallel-degree", 2, "--steps", N + M,
                                                      "--save-dir", self.dir("gpt2_ckpt"), "--checkpoint-freq", 1,
                                                      "--resume", "--model-dir", self.dir(name)])
        elif name == "gpt2_pp2_manual":
            log = launch(2, "gpt2.py", PP2DP2, ["--batch-size", 2 * GPT_BATCH, "--out", out, "--steps", N + M,
                                                "--pipeline-parallel-degree", 2, "--manual-partition",
                                                "--activation-checkpointing"])
        elif name == "gpt2_tp2pp2":  # Hugging Face's model under smp.model_creation; rdp 1: the global batch
            log = launch(4, "gpt2.py", TP2PP2, ["--batch-size", 2 * GPT_BATCH, "--out", out, "--steps", N + M,
                                                "--model-dir", self.dir(name)])
        # GPT-2 from smp.nn: rdp is 1 in every layout here, so each run takes the global batch
        elif name == "gpt2nn_1proc":
            log = launch(1, "gpt2.py", ONE_PROCESS, nn + ["--steps", N + M, "--model-dir", self.dir(name)])
        elif name == "gpt2nn_tp2":
            log = launch(2, "gpt2.py", TP2, nn + ["--steps", N + M])
        elif name == "gpt2nn_tp2pp2_N":
            log = launch(4, "gpt2.py", TP2PP2, nn + ["--steps", N, "--save-dir", self.dir("gpt2nn_ckpt"),
                                                     "--checkpoint-freq", N])
        elif name == "gpt2nn_tp2pp2_resumed":
            self.get("gpt2nn_tp2pp2_N")
            log = launch(4, "gpt2.py", TP2PP2, nn + ["--steps", N + M, "--save-dir", self.dir("gpt2nn_ckpt"),
                                                     "--checkpoint-freq", 1, "--resume",
                                                     "--model-dir", self.dir(name)])
        elif name == "gpt2_tp2split":  # prescaled_batch false: dp 2 (the TP ranks), half the batch each
            log = launch(2, "gpt2.py", TP2_SPLIT, gpt + ["--steps", N + M])
        elif name == "gpt2nn_tp2split":
            log = launch(2, "gpt2.py", TP2_SPLIT, ["--smp-nn", "--batch-size", GPT_BATCH, "--out", out,
                                                   "--steps", N + M])
        elif name == "gpt2nn_tp2_N":  # the word embedding and the head's tied copy on one rank
            log = launch(2, "gpt2.py", TP2, nn + ["--steps", N, "--save-dir", self.dir("gpt2nn_tp2_ckpt"),
                                                  "--checkpoint-freq", N])
        elif name == "gpt2nn_tp2_resumed":
            self.get("gpt2nn_tp2_N")
            log = launch(2, "gpt2.py", TP2, nn + ["--steps", N + M, "--save-dir", self.dir("gpt2nn_tp2_ckpt"),
                                                  "--resume"])
        else:
            raise KeyError(name)
        with open(out) as f:
            result = json.load(f)
        result["log"] = log
        return result


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return Runs(str(tmp_path_factory.mktemp("smp_v1_examples")))


def assert_losses(got, want, tol, what):
    assert len(got) == len(want), f"{what}: {len(got)} losses, expected {len(want)}"
    diffs = [abs(a - b) for a, b in zip(got, want)]
    assert max(diffs) <= tol, f"{what}: losses {got} vs {want} (max diff {max(diffs):.3g} > {tol})"


def assert_same_model(got, want, tol, what):
    assert sorted(got) == sorted(want), f"{what}: names differ: {sorted(set(got) ^ set(want))[:5]}"
    worst = max((got[k].float() - want[k].float()).abs().max().item() for k in want)
    assert worst <= tol, f"{what}: max parameter difference {worst:.3g} > {tol}"


# --------------------------------------------------------------------------- MNIST (family a)


def test_mnist_pp2dp2_matches_one_process(runs):
    one = runs.get("mnist_1proc")
    ref_n = runs.get("mnist_1proc_N")
    got = runs.get("mnist_pp2dp2_N")
    assert "Partition assignments" in got["log"]
    assert_losses(got["losses"], one["losses"][:N], 1e-4, "mnist pp2dp2 vs one process")
    assert_losses(ref_n["losses"], one["losses"][:N], 0, "mnist one process, N steps vs N+M")
    assert got["test_accuracy"] == ref_n["test_accuracy"]
    assert abs(got["test_loss"] - ref_n["test_loss"]) <= 1e-4
    # the full model (model.state_dict(), gathered over the pipeline, saved with partial=False)
    full = torch.load(os.path.join(runs.dir("mnist_ckpt"), "mnist_full_model.pt"), weights_only=False)
    ref = torch.load(os.path.join(runs.dir("mnist_1proc_N"), "mnist_full_model.pt"), weights_only=False)
    assert_same_model(full["model_state_dict"], ref["model_state_dict"], 1e-4, "mnist full model")
    # the partial checkpoint: one file per pipeline rank (written by dp_rank 0)
    assert sorted(f for f in os.listdir(runs.dir("mnist_ckpt")) if f.startswith("mnist_checkpoint.pt")) == [
        "mnist_checkpoint.pt_0_0", "mnist_checkpoint.pt_1_0"]


def test_mnist_resume(runs):
    one = runs.get("mnist_1proc")
    got = runs.get("mnist_pp2dp2_resumed")
    assert got["start_step"] == N and "Resumed from" in got["log"]
    want = one["losses"][N:]
    # The resumed run crosses an epoch boundary, so StepLR's write after a resume is checked too.
    steps_per_epoch = int(re.search(r"epoch 0 \[\d+/(\d+)\]", got["log"]).group(1))
    assert N < steps_per_epoch < N + M - 1, "the resumed run should cross an epoch boundary"
    assert_losses(got["losses"], want, 1e-5, "mnist resumed vs uninterrupted")


# --------------------------------------------------------------------------- GPT-2 (family b)


def test_gpt2_pp2dp2_matches_one_process(runs):
    one = runs.get("gpt2_1proc")
    got = runs.get("gpt2_pp2dp2_N")
    assert "Partition assignments" in got["log"]
    assert_losses(got["losses"], one["losses"][:N], 1e-4, "gpt2 pp2dp2 vs one process")
    ckpt = runs.dir("gpt2_ckpt")
    assert os.path.isdir(os.path.join(ckpt, f"total_steps{N}_partial"))


def test_gpt2_manual_partition_and_activation_checkpointing(runs):
    one = runs.get("gpt2_1proc")
    got = runs.get("gpt2_pp2_manual")
    assert "manual partition of the blocks: [0, 0, 1, 1]" in got["log"]
    assert_losses(got["losses"], one["losses"], 1e-4, "gpt2 pp2 manual partition + activation checkpointing")


def test_gpt2_resume(runs):
    one = runs.get("gpt2_1proc")
    got = runs.get("gpt2_pp2dp2_resumed")
    assert got["start_step"] == N and "Resumed from" in got["log"]
    assert_losses(got["losses"], one["losses"][N:], 1e-5, "gpt2 resumed vs uninterrupted")
    # num_kept_partial_checkpoints=2: the two newest remain
    ckpt = runs.dir("gpt2_ckpt")
    assert sorted(d for d in os.listdir(ckpt) if d.endswith("_partial")) == [
        f"total_steps{N + M - 1}_partial", f"total_steps{N + M}_partial"]
    with open(os.path.join(ckpt, "newest")) as f:
        assert f.read().strip() == f"total_steps{N + M}"
    # the full models (save_checkpoint(partial=False)) after N+M steps agree
    from safetensors.torch import load_file

    got_model = load_file(os.path.join(runs.dir("gpt2_pp2dp2_resumed"), "fullmodel.pt", "model.safetensors"))
    ref_model = load_file(os.path.join(runs.dir("gpt2_1proc"), "fullmodel.pt", "model.safetensors"))
    assert_same_model(got_model, ref_model, 1e-4, "gpt2 full model")


def test_gpt2_model_creation_tp2pp2_matches_one_process(runs):
    """Hugging Face's GPT-2 made tensor-parallel by smp.model_creation (tp2 x pp2): the same
    losses as one process, and the full model it saves is Hugging Face's (names and shapes)
    with the one-process run's values."""
    from safetensors.torch import load_file

    one = runs.get("gpt2_1proc")
    got = runs.get("gpt2_tp2pp2")
    assert_losses(got["losses"], one["losses"], 1e-4, "gpt2 model_creation tp2pp2 vs one process")
    got_model = load_file(os.path.join(runs.dir("gpt2_tp2pp2"), "fullmodel.pt", "model.safetensors"))
    ref_model = load_file(os.path.join(runs.dir("gpt2_1proc"), "fullmodel.pt", "model.safetensors"))
    assert all(got_model[k].shape == ref_model[k].shape for k in ref_model if k in got_model)
    assert_same_model(got_model, ref_model, 1e-4, "gpt2 model_creation tp2pp2 full model")


# --------------------------------------------------------------------------- GPT-2 from smp.nn (tensor parallelism)


def test_gpt2_smp_nn_tp2_matches_one_process(runs):
    one = runs.get("gpt2nn_1proc")
    got = runs.get("gpt2nn_tp2")
    assert "2 ranks, pp 1, tp 2, dp 2 (rdp 1)" in got["log"]
    assert_losses(got["losses"], one["losses"], 1e-4, "gpt2 --smp-nn tp2 vs one process")


def test_gpt2_smp_nn_tp2pp2_matches_one_process(runs):
    one = runs.get("gpt2nn_1proc")
    got = runs.get("gpt2nn_tp2pp2_N")
    assert "4 ranks, pp 2, tp 2, dp 2 (rdp 1)" in got["log"] and "Partition assignments" in got["log"]
    assert_losses(got["losses"], one["losses"][:N], 1e-4, "gpt2 --smp-nn tp2pp2 vs one process")
    # one file per rank: the TP shards of each stage side by side
    manifest = os.path.join(runs.dir("gpt2nn_ckpt"), f"total_steps{N}_partial", "manifest.json")
    with open(manifest) as f:
        layout = json.load(f)["layout"]
    assert (layout["tp"], layout["pp"], layout["rdp"]) == (2, 2, 1)


def test_gpt2_smp_nn_resume(runs):
    one = runs.get("gpt2nn_1proc")
    got = runs.get("gpt2nn_tp2pp2_resumed")
    assert got["start_step"] == N and "Resumed from" in got["log"]
    assert_losses(got["losses"], one["losses"][N:], 1e-5, "gpt2 --smp-nn tp2pp2 resumed vs uninterrupted")
    ckpt = runs.dir("gpt2nn_ckpt")
    assert sorted(d for d in os.listdir(ckpt) if d.endswith("_partial")) == [
        f"total_steps{N + M - 1}_partial", f"total_steps{N + M}_partial"]
    # the full model (save_checkpoint(partial=False)): the TP shards gathered whole
    from safetensors.torch import load_file

    got_model = load_file(os.path.join(runs.dir("gpt2nn_tp2pp2_resumed"), "fullmodel.pt", "model.safetensors"))
    ref_model = load_file(os.path.join(runs.dir("gpt2nn_1proc"), "fullmodel.pt", "model.safetensors"))
    assert got_model["embedding.word_embeddings.weight"].shape == (256, 64)
    assert_same_model(got_model, ref_model, 1e-4, "gpt2 --smp-nn full model")


def test_gpt2_smp_nn_tp2_resume(runs):
    """A tied pair on one rank (embedding and head copy under tp2 without a pipeline) saves its
    optimizer state once and resumes to the uninterrupted run's losses."""
    one = runs.get("gpt2nn_1proc")
    got = runs.get("gpt2nn_tp2_resumed")
    assert got["start_step"] == N and "Resumed from" in got["log"]
    assert_losses(got["losses"], one["losses"][N:], 1e-5, "gpt2 --smp-nn tp2 resumed vs uninterrupted")


# --------------------------------------------------------------------------- SMP's default batch flow under TP


@pytest.mark.parametrize("model,one_process", [("gpt2_tp2split", "gpt2_1proc"), ("gpt2nn_tp2split", "gpt2nn_1proc")])
def test_gpt2_tp2_without_prescaled_batch_matches_one_process(runs, model, one_process):
    """prescaled_batch false: the script samples by dp_rank / dp_size (dp 2: the TP ranks take
    different halves of the global batch), the tensor-parallel blocks gather the TP group's
    batch; the losses are the one-process run's on the whole batch."""
    one = runs.get(one_process)
    got = runs.get(model)
    assert "2 ranks, pp 1, tp 2, dp 2 (rdp 1)" in got["log"]
    assert_losses(got["losses"], one["losses"], 1e-4, f"{model} (prescaled_batch false) vs one process")
