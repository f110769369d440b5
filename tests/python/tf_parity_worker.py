"""Runs under mpirun: Keras models pipelined / replicated by smp.tensorflow against the same
models trained in one process with plain TensorFlow on the whole global batch.

  mpirun -np 4 python tests/python/tf_parity_worker.py --pp 2 --pipeline interleaved --steps 20

For each model (the CNN, the transformer, and the transformer placed by smp.partition when
--manual): every step's loss (the mean over dp replicas of reduce_mean over microbatches) must
equal the reference's within 1e-4 relative, and the first step's gradients of every variable this
rank holds within 1e-5. Replicas with dp_rank > 0 build their model from another seed, so they
match only if smp starts them from dp rank 0's values. Every step's microbatches must run in the
first step's threads (smp.step keeps them). Prints "PARITY OK <model> ..." per model.
"""

import argparse
import os
import sys
import threading

import numpy as np
import tensorflow as tf

tf.config.threading.set_intra_op_parallelism_threads(1)
tf.config.threading.set_inter_op_parallelism_threads(1)

import keras  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tf_models  # noqa: E402

import smp.tensorflow as smp  # noqa: E402

LOCAL_BATCH = 8
LR = 0.1


def keys(model):
    """Each variable's name as "<top-level layer>#<index in it>" (Keras's own paths depend on how
    many layers of a kind the process has made)."""
    out = {}
    for layer in model._flatten_layers(include_self=False, recursive=False):
        for i, v in enumerate(layer.trainable_variables):
            out[id(v)] = f"{layer.name}#{i}"
    return out


def reference(name, steps, global_batch, manual):
    """The same model, one process, plain TensorFlow: losses per step and step 0's gradients."""
    body = tf_models.CNNBody if name == "cnn" else tf_models.TransformerBody
    kwargs = {"manual": manual} if name != "cnn" else {}
    model = tf_models.make(body, keras.Model, **kwargs)
    opt = keras.optimizers.SGD(LR)
    losses, first_grads = [], None
    for s in range(steps):
        x, y = tf_models.batch(name, s, global_batch)
        with tf.GradientTape() as tape:
            loss = tf_models.loss_fn(y, model(x))
        grads = tape.gradient(loss, model.trainable_variables)
        grads = [tf.convert_to_tensor(g) for g in grads]
        if s == 0:
            names = keys(model)
            first_grads = {names[id(v)]: g.numpy() for v, g in zip(model.trainable_variables, grads)}
        opt.apply_gradients(zip(grads, model.trainable_variables))
        losses.append(float(loss))
    return losses, first_grads


def distributed(name, steps, manual):
    body = tf_models.CNNBody if name == "cnn" else tf_models.TransformerBody
    kwargs = {"manual": manual} if name != "cnn" else {}
    model = tf_models.make(body, smp.DistributedModel, seed=7 * smp.dp_rank(), **kwargs)
    opt = keras.optimizers.SGD(LR)
    hooked = []
    model.register_post_partition_hook(lambda m: hooked.append([layer.name for layer in m.local_layers()]))
    threads = []  # per step, the thread each microbatch ran in (the objects: an ident can be reused)

    @smp.step
    def train_step(x, y):
        if not threads or len(threads[-1]) == smp.state.cfg["microbatches"]:
            threads.append([])
        threads[-1].append(threading.current_thread())
        with tf.GradientTape() as tape:
            loss = tf_models.loss_fn(y, model(x, training=True))
        return tape.gradient(loss, model.trainable_variables), loss

    losses, first_grads = [], None
    for s in range(steps):
        x, y = tf_models.batch(name, s, LOCAL_BATCH * smp.dp_size())
        lo, hi = smp.dp_rank() * LOCAL_BATCH, (smp.dp_rank() + 1) * LOCAL_BATCH
        grads, loss = train_step(x[lo:hi], y[lo:hi])
        grads = [g.reduce_mean() for g in grads]
        if s == 0:
            names = keys(model)
            first_grads = {names[id(v)]: g.numpy() for v, g in zip(model.trainable_variables, grads)}
        opt.apply_gradients(zip(grads, model.trainable_variables))
        losses.append(float(np.mean(smp.allgather(float(loss.reduce_mean()), smp.DP_GROUP))))
    assert all(len({id(t) for t in step}) == len(step) for step in threads), "microbatches shared a thread"
    assert all({id(t) for t in step} == {id(t) for t in threads[0]} for step in threads), \
        "smp.step started new threads for a later step (its microbatches' threads are kept from step to step)"
    held = sorted({name.split("#")[0] for name in first_grads})
    assert len(hooked) == 1 and set(held) <= set(hooked[0]), f"post-partition hook calls: {hooked}, holding {held}"
    return losses, first_grads, model


def compare(name, ref, got, label=""):
    """`ref` may hold more steps than `got` (a longer run's losses: the first ones are the same)."""
    ref_losses, ref_grads = ref
    losses, grads, model = got
    ref_losses = ref_losses[:len(losses)]
    worst_loss = max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(losses, ref_losses))
    assert worst_loss <= 1e-4, f"{name}: losses {losses} vs one process {ref_losses} (worst relative {worst_loss:.2e})"
    assert grads, f"{name}: rank {smp.rank()} holds no variables"
    worst_grad = 0.0
    # Each gradient within 1e-5 of the reference, relative to the tensor's largest entry; a
    # tensor whose exact gradient is zero (the attention key bias: softmax ignores a constant
    # added to a row of scores) has only rounding noise as reference (~1e-9 here), so it is
    # held to 1e-5 of the model's largest gradient entry instead.
    scale = max(float(np.max(np.abs(r))) for r in ref_grads.values())
    for k, g in grads.items():
        r = ref_grads[k]
        size = float(np.max(np.abs(r)))
        err = float(np.max(np.abs(g - r))) / (size if size > 1e-6 * scale else scale)
        assert err <= 1e-5, f"{name}: gradient of {k} differs from one process by {err:.2e} (relative to its max)"
        worst_grad = max(worst_grad, err)
    held = sorted({k.split("#")[0] for k in grads})
    print(f"PARITY OK {label}{name} rank={smp.rank()} pp_rank={smp.pp_rank()} dp_rank={smp.dp_rank()} layers={held} "
          f"worst_loss={worst_loss:.1e} worst_grad={worst_grad:.1e} first_loss={losses[0]:.6f} "
          f"last_loss={losses[-1]:.6f}", flush=True)


def fit_check(label=""):
    """Keras fit() on the DistributedModel against fit() of the plain model: 3 epochs of 4 batches,
    per-epoch loss within 1e-4 relative and the same accuracy."""
    x, y = tf_models.batch("cnn", 100, 64)
    histories = []
    for base in (smp.DistributedModel, keras.Model):
        model = tf_models.make(tf_models.CNNBody, base)
        model.compile(optimizer=keras.optimizers.SGD(LR), metrics=["accuracy"],
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        histories.append(model.fit(x, y, batch_size=16, epochs=3, shuffle=False, verbose=0).history)
    got, ref = histories
    worst = max(abs(a - b) / b for a, b in zip(got["loss"], ref["loss"]))
    assert worst <= 1e-4, f"fit: losses {got['loss']} vs one process {ref['loss']}"
    assert got["accuracy"] == ref["accuracy"], f"fit: accuracy {got['accuracy']} vs one process {ref['accuracy']}"
    print(f"FIT OK {label}rank={smp.rank()} worst_loss={worst:.1e} losses={got['loss']}", flush=True)


def evaluate_predict_check(label=""):
    """Keras predict() (before compile: the model is partitioned by its first forward-only step)
    and evaluate(), with and without sample weights, on a DistributedModel against the plain
    model in one process. Each dp replica is given its shard of 32 samples (built from another
    seed, so it matches only through smp's broadcast): its predictions must equal the plain
    model's on that shard, and evaluate()'s loss and accuracy those of the plain model on every
    replica's samples together (smp reports the global batch's metrics). Predictions and losses
    within 1e-5 (predictions relative to their largest entry), the same accuracies."""
    n = 32
    x, y = tf_models.batch("cnn", 200, n * smp.dp_size())
    w = tf.random.Generator.from_seed(201).uniform((n * smp.dp_size(),), 0.0, 2.0)
    mine = slice(smp.dp_rank() * n, (smp.dp_rank() + 1) * n)
    model = tf_models.make(tf_models.CNNBody, smp.DistributedModel, seed=7 * smp.dp_rank())
    plain = tf_models.make(tf_models.CNNBody, keras.Model)
    predicted = model.predict(x[mine], batch_size=8, verbose=0)
    expected = plain.predict(x[mine], batch_size=n, verbose=0)
    pred_err = float(np.max(np.abs(predicted - expected)) / np.max(np.abs(expected)))
    assert pred_err <= 1e-5, f"predict: differs from one process by {pred_err:.2e} (relative to its max)"
    for m in (model, plain):
        m.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    worst = 0.0
    for weights in (None, w):
        got = model.evaluate(x[mine], y[mine], sample_weight=None if weights is None else weights[mine],
                             batch_size=16, verbose=0, return_dict=True)
        want = plain.evaluate(x, y, sample_weight=weights, batch_size=len(x), verbose=0, return_dict=True)
        err = abs(got["loss"] - want["loss"]) / want["loss"]
        assert err <= 1e-5, f"evaluate (sample weights: {weights is not None}): {got} vs one process {want}"
        assert got["accuracy"] == want["accuracy"], f"evaluate: {got} vs one process {want}"
        worst = max(worst, err)
    print(f"EVALUATE OK {label}rank={smp.rank()} worst_loss={worst:.1e} worst_prediction={pred_err:.1e} "
          f"accuracy={got['accuracy']:.4f}", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pp", type=int, default=2)
    ap.add_argument("--microbatches", type=int, default=4)
    ap.add_argument("--pipeline", default="interleaved")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--models", default="cnn,transformer")
    ap.add_argument("--fit", action="store_true", help="also Keras fit() on the CNN (pp without dp)")
    ap.add_argument("--evaluate", action="store_true", help="also Keras predict() and evaluate() on the CNN")
    ap.add_argument("--manual", action="store_true",
                    help="auto_partition false: the transformer placed by its smp.partition contexts")
    a = ap.parse_args()
    world = int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1"))
    config = {"pipeline_parallel_degree": a.pp, "microbatches": a.microbatches, "pipeline": a.pipeline,
              "ddp": world // a.pp > 1, "auto_partition": not a.manual}
    smp.init(config)
    for name in a.models.split(","):
        got = distributed(name, a.steps, a.manual)
        ref = reference(name, a.steps, LOCAL_BATCH * smp.dp_size(), a.manual)
        compare(name, ref, got)
    if a.fit:
        fit_check()
    if a.evaluate:
        evaluate_predict_check()
    smp.barrier()


if __name__ == "__main__":
    main()
