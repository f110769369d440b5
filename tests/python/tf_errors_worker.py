"""Runs under mpirun: one kind of bad input through smp.tensorflow, which must end every rank
with a clear error (printed as "ERROR <type>: <message>") and a non-zero exit, never a hang.

  mpirun -np 2 python tests/python/tf_errors_worker.py --case all
"""

import argparse
import os
import sys

import tensorflow as tf

tf.config.threading.set_intra_op_parallelism_threads(1)
tf.config.threading.set_inter_op_parallelism_threads(1)

import keras  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tf_models  # noqa: E402

import smp.tensorflow as smp  # noqa: E402


def train_once(model, x, y):
    @smp.step
    def train_step(x, y):
        with tf.GradientTape() as tape:
            loss = tf_models.loss_fn(y, model(x))
        return tape.gradient(loss, model.trainable_variables), loss

    return train_step(x, y)


def run(case):
    x, y = tf_models.batch("cnn", 0, 8)
    if case == "not_distributed_model":
        train_once(tf_models.make(tf_models.CNNBody, keras.Model), x, y)
    elif case == "model_outside_step":
        tf_models.make(tf_models.CNNBody, smp.DistributedModel)(x)
    elif case == "indivisible_batch":
        train_once(tf_models.make(tf_models.CNNBody, smp.DistributedModel), x[:6], y[:6])
    elif case == "predict_indivisible":  # 6 samples: one batch of 6, not 4 microbatches
        tf_models.make(tf_models.CNNBody, smp.DistributedModel).predict(x[:6], batch_size=8, verbose=0)
    elif case == "cut_crossed":
        model = tf_models.make(tf_models.ResidualAcrossLayers, smp.DistributedModel)
        train_once(model, tf.ones((8, 4)), tf.zeros((8,), tf.int32))


def main():
    """--case horovod: smp.init refuses the config. --case all: every other case in turn, in one
    process (each fails before any communication of its step, so the next one starts clean);
    the cut check runs with auto_partition false, where smp.partition asks for the bad cut."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--case", required=True, choices=["horovod", "all"])
    case = ap.parse_args().case
    config = dict(CONFIG)
    if case == "horovod":
        config.update(horovod=True)
    try:
        smp.init(config)
    except Exception as e:  # noqa: BLE001  (the test reads the message)
        print(f"ERROR {type(e).__name__}: {e}", flush=True)
        sys.exit(1)
    sys.exit(1 if run_all() else 0)


CONFIG = {"pipeline_parallel_degree": 2, "microbatches": 4, "auto_partition": False}
CASES = ["not_distributed_model", "model_outside_step", "indivisible_batch", "predict_indivisible", "cut_crossed"]


def run_all():
    """Every case in turn (smp initialised under CONFIG); returns how many raised."""
    failed = 0
    for c in CASES:
        try:
            run(c)
            print(f"no error raised by {c}", flush=True)
        except Exception as e:  # noqa: BLE001  (the test reads the message)
            print(f"ERROR {type(e).__name__}: {e}", flush=True)
            failed += 1
    return failed


if __name__ == "__main__":
    main()
