"""Shared by the Python front's tests: launching a worker script under mpirun.

The tests themselves run in one plain process; each multi-rank case is a worker script started
with `mpirun -np N`, whose exit status and output the test checks (so a hang becomes a timeout
and a crash a failed test, never a stuck pytest)."""

import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def mpirun(np, script, *args, env=None, timeout=300):
    """Runs tests/python/<script> on `np` ranks; returns the CompletedProcess (output in .stdout)."""
    full_env = dict(os.environ, OMP_NUM_THREADS="1", OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
                    OMPI_MCA_rmaps_base_oversubscribe="1", PYTHONUNBUFFERED="1")
    full_env.pop("SM_HP_MP_PARAMETERS", None)
    full_env.update(env or {})
    cmd = ["mpirun", "-np", str(np), "--oversubscribe", "--mca", "mpi_yield_when_idle", "1", "--bind-to", "none",
           sys.executable, os.path.join(HERE, script), *map(str, args)]
    try:
        return subprocess.run(cmd, cwd=ROOT, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{' '.join(cmd)} did not finish in {timeout} s (a hang); output:\n{e.stdout}")


@pytest.fixture
def run_mpi():
    return mpirun
