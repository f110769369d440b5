"""Runs under mpirun: smp.CheckpointManager's save / restore round trip for the Keras transformer
trained with Adam (so the optimizer's slots travel too).

  mpirun -np 2 python tests/python/tf_checkpoint_worker.py --phase save --dir D --pp 2
  mpirun -np 2 python tests/python/tf_checkpoint_worker.py --phase resume --dir D --pp 1

save: trains steps 0-3, saves, trains steps 4-7 and writes their losses to D/losses.json.
resume: builds the model from another seed, restores the latest checkpoint before the first
step, trains steps 4-7 on the same global batches and prints "RESUMED <losses>"; under the same
layout they must equal the saved run's exactly, under another within 1e-4 relative ("RESUME OK").
"""

import argparse
import json
import os
import sys

import tensorflow as tf

tf.config.threading.set_intra_op_parallelism_threads(1)
tf.config.threading.set_inter_op_parallelism_threads(1)

import keras  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tf_models  # noqa: E402

import smp.tensorflow as smp  # noqa: E402

GLOBAL_BATCH = 8


def config(pp, world):
    return {"pipeline_parallel_degree": pp, "microbatches": 2, "ddp": world // pp > 1}


def run(phase, directory, pp):
    """One phase with smp initialised under config(pp, world)."""
    dp = smp.dp_size()
    seed = 0 if phase == "save" else 5
    model = tf_models.make(tf_models.TransformerBody, smp.DistributedModel, seed=seed)
    optimizer = keras.optimizers.Adam(1e-2)
    manager = smp.CheckpointManager(tf.train.Checkpoint(model=model, optimizer=optimizer), directory, max_to_keep=1)

    @smp.step
    def train_step(x, y):
        with tf.GradientTape() as tape:
            loss = tf_models.loss_fn(y, model(x, training=True))
        return tape.gradient(loss, model.trainable_variables), loss

    def train(step):
        x, y = tf_models.batch("transformer", step, GLOBAL_BATCH)
        n = GLOBAL_BATCH // smp.dp_size()
        lo = smp.dp_rank() * n
        grads, loss = train_step(x[lo:lo + n], y[lo:lo + n])
        optimizer.apply_gradients(zip([g.reduce_mean() for g in grads], model.trainable_variables))
        return sum(smp.allgather(float(loss.reduce_mean()), smp.DP_GROUP)) / smp.dp_size()

    if phase == "save":
        for step in range(4):
            train(step)
        path = manager.save()
        losses = [train(step) for step in range(4, 8)]
        if smp.rank() == 0:
            with open(os.path.join(directory, "losses.json"), "w") as f:
                json.dump({"pp": pp, "losses": losses}, f)
            print(f"SAVED {path} {losses}", flush=True)
    else:
        assert manager.restore() is not None, f"no checkpoint in {directory}"
        losses = [train(step) for step in range(4, 8)]
        with open(os.path.join(directory, "losses.json")) as f:
            saved = json.load(f)
        if saved["pp"] == pp and dp == 1:
            assert losses == saved["losses"], f"same layout: {losses} != {saved['losses']}"
        worst = max(abs(x - y) / abs(y) for x, y in zip(losses, saved["losses"]))
        assert worst <= 1e-4, f"resumed losses {losses} vs {saved['losses']} (worst relative {worst:.1e})"
        print(f"RESUME OK rank={smp.rank()} pp={pp} dp={dp} worst={worst:.1e} {losses}", flush=True)
    smp.barrier()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--phase", choices=["save", "resume"], required=True)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--pp", type=int, required=True)
    a = ap.parse_args()
    smp.init(config(a.pp, int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1"))))
    run(a.phase, a.dir, a.pp)


if __name__ == "__main__":
    main()
