"""Bad input through smp.torch: a clear error on every rank, a non-zero exit, no hang."""

import time

import pytest

CASES = {
    "model_outside_step": "only allowed inside a function decorated with @smp.step",
    "backward_outside_step": "only allowed inside a function decorated with @smp.step",
    "indivisible_batch": "argument 'x' has size 6 along axis 0, which does not divide into microbatches=4",
    "untraceable_module": "could not capture DataDependent",
    "wrong_group": "group 'DP_GROUP' is not an smp.CommGroup; allowed: smp.WORLD",
    "wrong_rank_type": "is not an smp.RankType; allowed: smp.RankType.WORLD_RANK",
    "unknown_model_argument": "unknown argument 'bucket_size_mb'",
    "two_model_calls": "the model was called twice in one microbatch",
}


def test_a_stage_failing_mid_schedule_stops_its_peers_at_once(run_mpi):
    start = time.monotonic()
    r = run_mpi(2, "errors_worker.py", "--case", "last_stage_fails_in_backward", timeout=110)
    elapsed = time.monotonic() - start
    assert r.returncode != 0, r.stdout[-3000:]
    assert "ERROR RuntimeError: injected failure in the last stage's backward" in r.stdout, r.stdout[-3000:]
    assert ("ERROR PeerFailedError: smp: recv on PP_GROUP (world ranks [0, 1]) with peer rank 1 (world rank 1) "
            "abandoned: world rank 1 failed in its step: ") in r.stdout, r.stdout[-3000:]
    assert elapsed < 60, f"{elapsed:.0f} s: the peer waited for comm_timeout_s (120 s) instead"


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_rank_reports_it(run_mpi, case):
    r = run_mpi(2, "errors_worker.py", "--case", case, timeout=120)
    assert r.returncode != 0, r.stdout[-3000:]
    assert "no error raised" not in r.stdout
    assert r.stdout.count(CASES[case]) == 2, r.stdout[-3000:]
