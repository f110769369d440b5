"""Runs under mpirun: every smp.tensorflow case a world of this size takes, one layout after
another in one process, so TensorFlow and torch are imported once per rank (each launch costs
~10 s of imports per rank on two cores; the cases themselves take seconds).

  mpirun -np 2 python tests/python/tf_suite_worker.py --dir D   # every 2-rank case
  mpirun -np 4 python tests/python/tf_suite_worker.py           # pp2 x dp2

Each layout is its own smp.init(config) ... smp.shutdown(). MPI is started here first, so smp's
shutdown leaves it up for the next init (smp finalises only an MPI it started itself); it is
finalised at the end. Every layout prints the lines its test reads, each tagged with the layout
("PARITY OK pp2_simple/cnn ...", docs in tf_parity_worker.py, tf_errors_worker.py and
tf_checkpoint_worker.py), and "LAYOUT <name> <seconds>". An assertion on any rank ends the whole
job at once (no rank is left waiting in a collective).

2 ranks: horovod refused by smp.init; pp2 interleaved (20 steps of both models, then fit(),
predict() and evaluate());
pp2 simple (5 steps); the transformer placed by smp.partition (simple, 5 steps); bad input;
dp2 (20 steps); the checkpoint saved under pp2, resumed under pp2 and under dp2; with
--example-args, examples/tensorflow/cnn.py under pp2 (last: it sets SM_HP_MP_PARAMETERS).
4 ranks: pp2 x dp2 interleaved (both models, then predict() and evaluate()) and simple (the CNN),
5 steps each.
"""

import argparse
import ctypes
import ctypes.util
import importlib
import os
import runpy
import shlex
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import tf_parity_worker as parity  # noqa: E402  (sets TensorFlow's threads first)
import tf_checkpoint_worker as checkpoint  # noqa: E402
import tf_errors_worker as errors  # noqa: E402

import smp.tensorflow as smp  # noqa: E402

_MPI_THREAD_MULTIPLE = 3  # Open MPI's value (mpi.h)


def _mpi():
    return ctypes.CDLL(ctypes.util.find_library("mpi") or "libmpi.so.40", mode=ctypes.RTLD_GLOBAL)


def start_mpi():
    provided = ctypes.c_int(0)
    rc = _mpi().MPI_Init_thread(None, None, _MPI_THREAD_MULTIPLE, ctypes.byref(provided))
    assert rc == 0 and provided.value == _MPI_THREAD_MULTIPLE, f"MPI_Init_thread: rc {rc}, level {provided.value}"


class Layout:
    """smp.init(config) on entry; smp.shutdown() and "LAYOUT <name> <seconds>" on a clean exit
    (on an exception main() ends the process instead)."""

    def __init__(self, name, config):
        self.name, self.config = name, config

    def __enter__(self):
        self.start = time.perf_counter()
        smp.init(self.config)
        return self

    def __exit__(self, *exc):
        if exc[0] is None:
            smp.shutdown()
            print(f"LAYOUT {self.name} {time.perf_counter() - self.start:.1f}", flush=True)
        return False


def references(needed, steps):
    """The one-process runs (model, global batch) -> (losses of `steps` steps, step 0's
    gradients), each computed by one rank and shared (smp initialised). A layout that runs fewer
    steps compares the first ones."""
    mine = {key: parity.reference(key[0], steps, key[1], False)
            for i, key in enumerate(needed) if i % smp.size() == smp.rank()}
    out = {}
    for part in smp.allgather(mine, smp.WORLD):
        out.update(part)
    return out


def parity_layout(name, config, models, steps, refs, manual=False, fit=False, evaluate=False):
    with Layout(name, config):
        if refs is None:
            batch = parity.LOCAL_BATCH * smp.dp_size()
            refs = references([(m, batch) for m in ("cnn", "transformer")], steps)
        for model in models:
            got = parity.distributed(model, steps, manual)
            parity.compare(model, refs[(model, parity.LOCAL_BATCH * smp.dp_size())], got, label=f"{name}/")
        if fit:
            parity.fit_check(label=f"{name} ")
        if evaluate:
            parity.evaluate_predict_check(label=f"{name} ")
        smp.barrier()
    return refs


def schedule_check():
    """1F1B as smp.tensorflow runs it (step.py's _one_more_ahead): rank r of pp runs
    min(pp - r + 1, m) forwards before its first backward, one more than the engine's list, with
    the same actions; the ranks' lists run together (a send never waits, a receive waits for its
    send) all finish; with active_microbatches below pp + 1 the engine's lists are kept. Prints
    "SCHEDULE OK" (each rank, before smp.init)."""
    from smp._engine import _C

    ahead = importlib.import_module("smp.tensorflow.step")._one_more_ahead
    for pp, m in ((1, 4), (2, 8), (3, 6), (4, 3)):
        given = [_C.schedule_actions("interleaved", pp, m, pp + 2, r) for r in range(pp)]
        lists = [ahead(actions, pp, pp + 2) for actions in given]
        for r in range(pp):
            kinds = [a[0] for a in lists[r] if a[0] in ("forward", "backward")]
            assert kinds.index("backward") == min(pp - r + 1, m), (pp, m, r, lists[r])
            assert sorted(lists[r]) == sorted(given[r]), (pp, m, r, lists[r])
            assert ahead(given[r], pp, pp) == given[r], (pp, m, r)
        sent, at, moved = set(), [0] * pp, True
        while moved:
            moved = False
            for r in range(pp):
                while at[r] < len(lists[r]):
                    what, _, k, peer = lists[r][at[r]]
                    if what.startswith("recv_") and (peer, r, what[5:], k) not in sent:
                        break
                    if what.startswith("send_"):
                        sent.add((r, peer, what[5:], k))
                    at[r] += 1
                    moved = True
        assert at == [len(x) for x in lists], f"pp={pp} m={m}: the ranks' lists stop at {at} (a deadlock)"
    print("SCHEDULE OK", flush=True)


def two_ranks(directory, example_args):
    schedule_check()
    try:  # refused by smp.init before the engine starts
        smp.init(dict(errors.CONFIG, horovod=True))
        print("no error raised by horovod", flush=True)
    except ValueError as e:
        print(f"ERROR {type(e).__name__}: {e}", flush=True)
    pp2 = {"pipeline_parallel_degree": 2, "microbatches": 4, "ddp": False}
    both = ["cnn", "transformer"]
    refs = parity_layout("pp2_interleaved", dict(pp2, pipeline="interleaved"), both, 20, None, fit=True,
                         evaluate=True)
    parity_layout("pp2_simple", dict(pp2, pipeline="simple"), both, 5, refs)
    parity_layout("pp2_manual_simple", dict(pp2, pipeline="simple", auto_partition=False), ["transformer"], 5, refs,
                  manual=True)
    with Layout("bad_input", errors.CONFIG):
        print(f"BAD INPUT raised={errors.run_all()}", flush=True)
    dp2 = {"pipeline_parallel_degree": 1, "microbatches": 2, "ddp": True}
    with Layout("dp2", dp2):
        refs16 = references([(m, 2 * parity.LOCAL_BATCH) for m in both], 20)
        for model in both:
            parity.compare(model, refs16[(model, 2 * parity.LOCAL_BATCH)], parity.distributed(model, 20, False),
                           label="dp2/")
        smp.barrier()
    for phase, pp in (("save", 2), ("resume", 2), ("resume", 1)):
        with Layout(f"checkpoint_{phase}_pp{pp}", checkpoint.config(pp, smp_world())):
            checkpoint.run(phase, directory, pp)
    if example_args is not None:
        run_example(example_args)


EXAMPLE = os.path.join(os.path.dirname(os.path.dirname(HERE)), "examples", "tensorflow", "cnn.py")


def run_example(args):
    """examples/tensorflow/cnn.py as its own __main__ (it calls smp.init() itself, its layout
    from SM_HP_MP_PARAMETERS, as SageMaker runs it): under pp2 with 2 microbatches."""
    start = time.perf_counter()
    os.environ["SM_HP_MP_PARAMETERS"] = '{"partitions": 2, "microbatches": 2}'
    argv = sys.argv
    sys.argv = [EXAMPLE, *shlex.split(args)]
    try:
        runpy.run_path(EXAMPLE, run_name="__main__")
    finally:
        sys.argv = argv
        del os.environ["SM_HP_MP_PARAMETERS"]
    smp.shutdown()
    print(f"LAYOUT example_pp2 {time.perf_counter() - start:.1f}", flush=True)


def four_ranks():
    pp2dp2 = {"pipeline_parallel_degree": 2, "microbatches": 4, "ddp": True}
    refs = parity_layout("pp2xdp2_interleaved", dict(pp2dp2, pipeline="interleaved"), ["cnn", "transformer"], 5,
                         None, evaluate=True)
    parity_layout("pp2xdp2_simple", dict(pp2dp2, pipeline="simple"), ["cnn"], 5, refs)


def smp_world():
    return int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", help="the checkpoint folder (2 ranks)")
    ap.add_argument("--example-args", help="2 ranks: also run examples/tensorflow/cnn.py with these arguments")
    a = ap.parse_args()
    start_mpi()
    try:
        if smp_world() == 2:
            two_ranks(a.dir, a.example_args)
        elif smp_world() == 4:
            four_ranks()
        else:
            raise SystemExit(f"tf_suite_worker.py: runs on 2 or 4 ranks, not {smp_world()}")
    except BaseException:  # noqa: BLE001  (end every rank now, not at a peer's next collective)
        traceback.print_exc()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)
    _mpi().MPI_Finalize()


if __name__ == "__main__":
    main()
