"""smp.tensorflow (docs/tensorflow.md): Keras models pipelined and replicated by smp's engine
against the same models trained in one process with plain TensorFlow, and bad input.

Two launches of tf_suite_worker.py carry every multi-rank case (TensorFlow and torch are
imported once per rank, each layout is its own smp.init ... smp.shutdown in that process): one
on 2 ranks (pp2 simple and interleaved, smp.partition's placement, fit(), evaluate() and
predict(), bad input, dp2, the checkpoint, the example under pp2) and one on 4 ranks (pp2 x dp2,
evaluate() and predict() too). The tests below read their
shares of the output. The parity cases assert, per model (a small CNN and a small transformer),
every step's loss within 1e-4 and the first step's gradients of every variable a rank holds
within 1e-5 of the one-process run (tf_parity_worker.py); 20 steps under pp2 interleaved and
dp2, 5 under the other layouts. The whole file takes ~1.5 minutes on two cores."""

import re

import pytest

from conftest import mpirun

EXAMPLE_ARGS = ["--steps", "4", "--batch-size", "8", "--width", "4", "--log-every", "1"]

LAYOUTS = {
    # name: (ranks, models, fit, manual)
    "pp2_interleaved": (2, ["cnn", "transformer"], True, False),
    "pp2_simple": (2, ["cnn", "transformer"], False, False),
    "pp2_manual_simple": (2, ["transformer"], False, True),
    "dp2": (2, ["cnn", "transformer"], False, False),
    "pp2xdp2_interleaved": (4, ["cnn", "transformer"], False, False),
    "pp2xdp2_simple": (4, ["cnn"], False, False),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """ranks -> the CompletedProcess of that launch (each launched once, when first needed)."""
    done = {}

    def get(ranks):
        if ranks not in done:
            args = []
            if ranks == 2:
                args = ["--dir", tmp_path_factory.mktemp("checkpoint"), "--example-args", " ".join(EXAMPLE_ARGS)]
            done[ranks] = mpirun(ranks, "tf_suite_worker.py", *args, timeout=300)
        return done[ranks]

    return get


def ok(r):
    assert r.returncode == 0, r.stdout[-4000:]
    return r.stdout


def found(out, pattern):
    """Every match of `pattern` in the launch's output. Matched as text, not by line: ranks print
    to one stream, and one rank's line can end up glued to another's (print writes the newline
    separately)."""
    return re.findall(pattern, out)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_parity_with_one_process(runs, layout):
    ranks, models, fit, manual = LAYOUTS[layout]
    out = ok(runs(ranks))
    for model in models:
        got = found(out, rf"PARITY OK {layout}/{model} rank=\d+ pp_rank=\d+ dp_rank=\d+ layers=\[[^\]]*\]")
        assert len(got) == ranks, out[-4000:]
        text = "\n".join(got)
        if manual:  # smp.partition's placement, not the partitioner's
            assert "pp_rank=0 dp_rank=0 layers=['block0', 'block1', 'embed']" in text, text
            assert "pp_rank=1 dp_rank=0 layers=['head', 'ln_f']" in text, text
        elif layout.startswith("pp2"):  # the partitioner's split
            split = {"cnn": (["conv1", "conv2"], ["fc1", "fc2"]),
                     "transformer": (["block0", "embed"], ["block1", "head", "ln_f"])}[model]
            for p in (0, 1):
                assert f"pp_rank={p} dp_rank=0 layers={split[p]}" in text, text
    if fit:
        assert out.count(f"FIT OK {layout} ") == ranks, out[-4000:]


ERRORS = {
    "not_distributed_model": "the step function returned without calling an smp.DistributedModel",
    "model_outside_step": "was called outside a function decorated with @smp.step",
    "indivisible_batch": "argument 'x' has 6 samples along axis 0, which does not divide into microbatches=4",
    "horovod": 'config key "horovod": got true; allowed: false',
    "cut_crossed": "is crossed by a value other than 'fc1''s output",
    "predict_indivisible": "smp.DistributedModel.predict: a batch of 6 samples does not divide into microbatches=4",
}


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_every_rank_reports_bad_input(runs, case):
    """Each case raises on both ranks (horovod: refused by smp.init; the others after it, in
    tf_errors_worker.py, each before any communication of its step)."""
    out = ok(runs(2))
    assert "no error raised" not in out, out[-4000:]
    assert out.count("BAD INPUT raised=5") == 2, out[-4000:]
    assert out.count(ERRORS[case]) == 2, out[-4000:]


@pytest.mark.parametrize("layout,ranks", [("pp2_interleaved", 2), ("pp2xdp2_interleaved", 4)])
def test_evaluate_and_predict_equal_one_process(runs, layout, ranks):
    """Keras predict() and evaluate() (forward-only steps) on the pipelined CNN: predictions,
    loss and accuracy equal the plain model's in one process (tf_parity_worker.py)."""
    out = ok(runs(ranks))
    assert len(found(out, rf"EVALUATE OK {layout} rank=\d+ ")) == ranks, out[-4000:]


def test_1f1b_runs_one_more_forward_ahead(runs):
    """smp.tensorflow's 1F1B lists (one more forward ahead on every rank, so the last stage's
    loss of microbatch k runs with its forward k + 1): the same actions as the engine's, the
    ranks' lists run together without a deadlock (tf_suite_worker.py's schedule_check)."""
    out = ok(runs(2))
    assert out.count("SCHEDULE OK") == 2, out[-4000:]


def test_checkpoint_round_trip_and_resume_under_another_layout(runs):
    """Saved under pp2 after 4 Adam steps; resumed (into a model built from another seed) under
    pp2, where steps 4-7 must repeat the saved run's losses exactly, and under dp2 (1e-4)."""
    out = ok(runs(2))
    assert out.count("SAVED ") == 1, out[-4000:]
    for pp, dp in ((2, 1), (1, 2)):
        assert len(found(out, rf"RESUME OK rank=\d pp={pp} dp={dp} ")) == 2, out[-4000:]


def test_example_cnn_under_pp2_equals_one_process(runs):
    """examples/tensorflow/cnn.py (training steps, then a forward-only evaluation step) under
    pp2 (in the 2-rank launch) prints the same losses and test accuracy as on one rank."""
    printed = r"step \d+ loss -?\d+\.\d{4}|test accuracy \d\.\d{3}"  # rank 0's lines (cnn.py's formats)
    pp2 = found(ok(runs(2)), printed)
    r = mpirun(1, "../../examples/tensorflow/cnn.py", *EXAMPLE_ARGS,
               env={"SM_HP_MP_PARAMETERS": '{"partitions": 1, "microbatches": 2}'}, timeout=120)
    one = found(ok(r), printed)
    assert len(one) == 5, r.stdout[-3000:]
    assert pp2 == one, (pp2, one)
