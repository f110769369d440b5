"""One side of bench/tensorflow.sh, run under mpirun on 2 ranks (see there for the method).

  --mode smp:       the model as an smp.DistributedModel, SMP's config from SM_HP_MP_PARAMETERS.
  --mode mirrored:  the same model as a plain keras.Model under
                    tf.distribute.MultiWorkerMirroredStrategy (TF_CONFIG from --ports and the MPI
                    rank), its step a tf.function, as TensorFlow's guide writes it.

Both train on the same global batch per step (--batch per data-parallel replica; under smp with
pp > 1 the one replica takes the whole global batch). Prints one line on rank 0:
  BENCH {"mode": ..., "step_s": <median>, "samples_per_s": ..., "busy_s": <smp: max over ranks>,
         "first_loss": ...}
step_s is smp.step alone (for the efficiency), samples_per_s counts the whole training step
(smp.step + apply_gradients; the mirrored step is one tf.function doing both).
"""

import argparse
import json
import os
import statistics
import sys
import time

import tensorflow as tf

tf.config.threading.set_intra_op_parallelism_threads(1)
tf.config.threading.set_inter_op_parallelism_threads(1)

import keras  # noqa: E402

WIDTH, DEPTH, CLASSES = 512, 8, 16


class Body:
    """DEPTH blocks of Dense(WIDTH, gelu), then a classifier: an MLP whose steps are compute."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        init = lambda s: keras.initializers.GlorotUniform(seed=s)  # noqa: E731
        self.blocks = [keras.layers.Dense(WIDTH, activation="gelu", kernel_initializer=init(i), name=f"fc{i}")
                       for i in range(DEPTH)]
        self.head = keras.layers.Dense(CLASSES, kernel_initializer=init(99), name="head")

    def call(self, x, training=False):
        for b in self.blocks:
            x = b(x)
        return self.head(x)


def data(n):
    g = tf.random.Generator.from_seed(0)
    return g.normal((n, WIDTH)), g.uniform((n,), 0, CLASSES, dtype=tf.int32)


def loss_fn(y, logits):
    return tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True))


def run_smp(a):
    import smp.tensorflow as smp
    from smp.tensorflow.step import last_step_stats

    smp.init()
    model = type("BenchModel", (Body, smp.DistributedModel), {})()
    opt = keras.optimizers.SGD(1e-3)
    apply = tf.function(lambda grads: opt.apply_gradients(zip(grads, model.trainable_variables)))

    @smp.step
    def train_step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        return tape.gradient(loss, model.trainable_variables), loss

    n = a.batch * smp.dp_size()
    x, y = data(a.batch * 2)  # the global batch of the 2 ranks
    if smp.dp_size() > 1:
        x, y = x[smp.dp_rank() * a.batch:(smp.dp_rank() + 1) * a.batch], y[smp.dp_rank() * a.batch:(smp.dp_rank() + 1) * a.batch]
    else:
        n = a.batch * 2
    times, totals, busy, first = [], [], [], None
    for s in range(a.warmup + a.steps):
        smp.barrier()
        start = time.perf_counter()
        grads, loss = train_step(x, y)
        elapsed = time.perf_counter() - start  # the step alone, as bench/pipeline.sh times smp::step
        apply([g.reduce_mean() for g in grads])
        total = time.perf_counter() - start
        if first is None:  # the global batch's mean loss, as mirrored's
            first = sum(smp.allgather(float(loss.reduce_mean()), smp.DP_GROUP)) / smp.dp_size()
        slowest = max(smp.allgather(elapsed, smp.WORLD))
        slowest_total = max(smp.allgather(total, smp.WORLD))
        busiest = max(smp.allgather(last_step_stats()["busy_s"], smp.WORLD))
        if s >= a.warmup and os.environ.get("SMP_BENCH_VERBOSE"):
            stats = dict(last_step_stats(), step_s=elapsed)
            everyone = smp.allgather({k: round(v, 4) for k, v in stats.items() if isinstance(v, float)}, smp.WORLD)
            if smp.rank() == 0:
                print(everyone, flush=True)
        if s >= a.warmup:
            times.append(slowest)
            totals.append(slowest_total)
            busy.append(busiest)
    if smp.rank() == 0:
        step_s = statistics.median(times)
        train_s = statistics.median(totals)  # with apply_gradients: what a training loop takes
        print("BENCH " + json.dumps({"mode": "smp", "step_s": step_s, "train_step_s": train_s,
                                     "samples_per_s": n / train_s,
                                     "busy_s": statistics.median(busy), "first_loss": first,
                                     "microbatches": smp.state.cfg["microbatches"], "pp": smp.pp_size()}), flush=True)


def run_mirrored(a):
    rank = int(os.environ["OMPI_COMM_WORLD_RANK"])
    ports = a.ports.split(",")
    os.environ["TF_CONFIG"] = json.dumps({"cluster": {"worker": [f"localhost:{p}" for p in ports]},
                                          "task": {"type": "worker", "index": rank}})
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    with strategy.scope():
        model = type("BenchModel", (Body, keras.Model), {})()
        opt = keras.optimizers.SGD(1e-3)
        model(tf.zeros((1, WIDTH)))
    x, y = data(a.batch * 2)
    x, y = x[rank * a.batch:(rank + 1) * a.batch], y[rank * a.batch:(rank + 1) * a.batch]
    n = a.batch * strategy.num_replicas_in_sync

    @tf.function
    def train_step(x, y):
        def replica(x, y):
            with tf.GradientTape() as tape:
                per_sample = keras.losses.sparse_categorical_crossentropy(y, model(x), from_logits=True)
                loss = tf.nn.compute_average_loss(per_sample, global_batch_size=n)
            grads = tape.gradient(loss, model.trainable_variables)
            opt.apply_gradients(zip(grads, model.trainable_variables))
            return loss

        return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(replica, args=(x, y)), axis=None)

    times, first = [], None
    for s in range(a.warmup + a.steps):
        start = time.perf_counter()
        loss = float(train_step(x, y))  # float(): waits for the step
        elapsed = time.perf_counter() - start
        first = first if first is not None else loss
        if s >= a.warmup:
            times.append(elapsed)
    if rank == 0:
        step_s = statistics.median(times)
        print("BENCH " + json.dumps({"mode": "mirrored", "step_s": step_s, "samples_per_s": n / step_s,
                                     "first_loss": first}), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=["smp", "mirrored"], required=True)
    ap.add_argument("--batch", type=int, default=128, help="per data-parallel replica")
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--ports", default="", help="mirrored: two free ports")
    a = ap.parse_args()
    (run_smp if a.mode == "smp" else run_mirrored)(a)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
