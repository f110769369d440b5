"""smp.tensorflow (docs/tensorflow.md): Keras models pipelined and replicated by smp's engine
against the same models trained in one process with plain TensorFlow, and bad input.

Each case launches a worker under mpirun (conftest.py). tf_parity_worker.py asserts, per model
(a small CNN and a small transformer), 20 steps of losses within 1e-4 and the first step's
gradients of every variable a rank holds within 1e-5 of the one-process run; with --fit, Keras
fit() on the pipelined CNN against fit() in one process."""

import pytest

LAYOUTS = {
    # name: (ranks, worker arguments)
    "pp2_simple": (2, ["--pp", "2", "--pipeline", "simple"]),
    "pp2_interleaved": (2, ["--pp", "2", "--pipeline", "interleaved", "--fit"]),
    "dp2": (2, ["--pp", "1", "--microbatches", "2"]),
    "pp2xdp2_interleaved": (4, ["--pp", "2", "--pipeline", "interleaved", "--steps", "10"]),
    "pp2xdp2_simple": (4, ["--pp", "2", "--pipeline", "simple", "--steps", "10", "--models", "cnn"]),
    "pp2_manual_simple": (2, ["--pp", "2", "--pipeline", "simple", "--models", "transformer", "--manual"]),
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_parity_with_one_process(run_mpi, layout):
    ranks, args = LAYOUTS[layout]
    r = run_mpi(ranks, "tf_parity_worker.py", *args, timeout=240)
    assert r.returncode == 0, r.stdout[-4000:]
    models = len(args[args.index("--models") + 1].split(",")) if "--models" in args else 2
    assert r.stdout.count("PARITY OK") == ranks * models, r.stdout[-4000:]
    if "--fit" in args:
        assert r.stdout.count("FIT OK") == ranks, r.stdout[-4000:]
    if "--manual" in args:  # smp.partition's placement, not the partitioner's
        assert "pp_rank=0 dp_rank=0 layers=['block0', 'block1', 'embed']" in r.stdout, r.stdout[-4000:]
        assert "pp_rank=1 dp_rank=0 layers=['head', 'ln_f']" in r.stdout, r.stdout[-4000:]
    elif "--pp" in args and args[args.index("--pp") + 1] == "2":  # the partitioner's split
        assert "pp_rank=0 dp_rank=0 layers=['conv1', 'conv2']" in r.stdout, r.stdout[-4000:]
        if models == 2:
            assert "pp_rank=1 dp_rank=0 layers=['block1', 'head', 'ln_f']" in r.stdout, r.stdout[-4000:]


ERRORS = {
    "not_distributed_model": "the step function returned without calling an smp.DistributedModel",
    "model_outside_step": "was called outside a function decorated with @smp.step",
    "indivisible_batch": "argument 'x' has 6 samples along axis 0, which does not divide into microbatches=4",
    "horovod": 'config key "horovod": got true; allowed: false',
    "cut_crossed": "is crossed by a value other than 'fc1''s output",
}


@pytest.fixture(scope="module")
def bad_input_run():
    from conftest import mpirun  # one launch for every case that fails after smp.init

    return mpirun(2, "tf_errors_worker.py", "--case", "all", timeout=120)


@pytest.mark.parametrize("case", sorted(set(ERRORS) - {"horovod"}))
def test_every_rank_reports_bad_input(bad_input_run, case):
    r = bad_input_run
    assert r.returncode != 0, r.stdout[-3000:]
    assert "no error raised" not in r.stdout, r.stdout[-3000:]
    assert r.stdout.count(ERRORS[case]) == 2, r.stdout[-3000:]


def test_horovod_is_refused_by_name(run_mpi):
    r = run_mpi(2, "tf_errors_worker.py", "--case", "horovod", timeout=120)
    assert r.returncode != 0, r.stdout[-3000:]
    assert r.stdout.count(ERRORS["horovod"]) == 2, r.stdout[-3000:]


def test_checkpoint_round_trip_and_resume_under_another_layout(run_mpi, tmp_path):
    """Saved under pp2 after 4 Adam steps; resumed (into a model built from another seed) under
    pp2, where steps 4-7 must repeat the saved run's losses exactly, and under dp2."""
    r = run_mpi(2, "tf_checkpoint_worker.py", "--phase", "save", "--dir", tmp_path, "--pp", "2", timeout=120)
    assert r.returncode == 0 and "SAVED" in r.stdout, r.stdout[-3000:]
    for pp in ("2", "1"):
        r = run_mpi(2, "tf_checkpoint_worker.py", "--phase", "resume", "--dir", tmp_path, "--pp", pp, timeout=120)
        assert r.returncode == 0, r.stdout[-3000:]
        assert r.stdout.count("RESUME OK") == 2, r.stdout[-3000:]


def test_example_cnn_under_pp2_equals_one_process(run_mpi):
    """examples/tensorflow/cnn.py (training steps, then a forward-only evaluation step) under
    pp2 prints the same losses and test accuracy as on one rank."""
    args = ["--steps", "4", "--batch-size", "8", "--width", "4", "--log-every", "1"]
    outputs = []
    for ranks, params in ((1, '{"partitions": 1, "microbatches": 2}'), (2, '{"partitions": 2, "microbatches": 2}')):
        r = run_mpi(ranks, "../../examples/tensorflow/cnn.py", *args, env={"SM_HP_MP_PARAMETERS": params},
                    timeout=120)
        assert r.returncode == 0, r.stdout[-3000:]
        lines = [line for line in r.stdout.splitlines() if line.startswith(("step ", "test accuracy"))]
        assert len(lines) == 5, r.stdout[-3000:]
        outputs.append(lines)
    assert outputs[0] == outputs[1], outputs
