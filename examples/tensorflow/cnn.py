"""A Keras CNN trained with SMP v1's TensorFlow API on smp, in the shape of SMP's TensorFlow MNIST
example: ``smp.init()`` with its configuration from ``SM_HP_MP_PARAMETERS``, a model subclassing
``smp.DistributedModel``, an ``@smp.step`` training function returning gradients and the loss,
``accumulate()`` / ``reduce_mean()`` on the StepOutputs, then ``apply_gradients``; and an
``@smp.step`` evaluation function (no tape: forwards only).

The data are synthetic (no download): MNIST-shaped 28x28x1 images from ten seeded class
templates plus noise. Every rank builds the same data and reads its data-parallel shard
(seeded by nothing but the step, sharded by ``smp.dp_rank()``, whole batches only), as SMP's
guide asks.

  SM_HP_MP_PARAMETERS='{"partitions": 2, "microbatches": 4, "ddp": true}' \\
    mpirun -np 4 python examples/tensorflow/cnn.py --steps 20

``--batch-size`` is per data-parallel replica. Prints the loss every ``--log-every`` steps on
rank 0, then the test accuracy, and ``TIME <seconds per step>`` (the steps after the first).
"""

import argparse
import time

import tensorflow as tf

tf.config.threading.set_intra_op_parallelism_threads(1)
tf.config.threading.set_inter_op_parallelism_threads(1)

import smp.tensorflow as smp  # noqa: E402


class CNN(smp.DistributedModel):
    def __init__(self, width=32):
        super().__init__()
        seeded = lambda s: tf.keras.initializers.GlorotUniform(seed=s)  # noqa: E731
        self.conv1 = tf.keras.layers.Conv2D(width, 3, kernel_initializer=seeded(1), name="conv1")
        self.conv2 = tf.keras.layers.Conv2D(2 * width, 3, strides=2, kernel_initializer=seeded(2), name="conv2")
        self.pool = tf.keras.layers.MaxPooling2D(name="pool")
        self.flatten = tf.keras.layers.Flatten(name="flatten")
        self.fc1 = tf.keras.layers.Dense(128, kernel_initializer=seeded(3), name="fc1")
        self.fc2 = tf.keras.layers.Dense(10, kernel_initializer=seeded(4), name="fc2")

    def call(self, x, training=False):
        x = tf.nn.relu(self.conv1(x))
        x = tf.nn.relu(self.conv2(x))
        x = self.flatten(self.pool(x))
        x = tf.nn.relu(self.fc1(x))
        return self.fc2(x)


def data(step, n):
    """A batch of n synthetic MNIST-like images and labels for `step` (the same on every rank)."""
    templates = tf.random.stateless_uniform((10, 28, 28, 1), seed=(0, 0))
    labels = tf.random.stateless_uniform((n,), seed=(1, step), maxval=10, dtype=tf.int32)
    noise = tf.random.stateless_normal((n, 28, 28, 1), seed=(2, step), stddev=0.3)
    return tf.gather(templates, labels) + noise, labels


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--log-every", type=int, default=5)
    ap.add_argument("--width", type=int, default=32)
    a = ap.parse_args()
    smp.init()
    model = CNN(a.width)
    optimizer = tf.keras.optimizers.Adam(a.lr)
    loss_object = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @smp.step
    def train_step(images, labels):
        with tf.GradientTape() as tape:
            predictions = model(images, training=True)
            loss = loss_object(labels, predictions)
        return tape.gradient(loss, model.trainable_variables), loss

    @smp.step
    def test_step(images, labels):
        predictions = model(images, training=False)
        return tf.reduce_sum(tf.cast(tf.argmax(predictions, axis=1, output_type=tf.int32) == labels, tf.float32))

    n = a.batch_size * smp.dp_size()
    lo, hi = smp.dp_rank() * a.batch_size, (smp.dp_rank() + 1) * a.batch_size
    start = None
    for step in range(a.steps):
        if step == 1:
            start = time.perf_counter()
        images, labels = data(step, n)
        grads, loss = train_step(images[lo:hi], labels[lo:hi])
        grads = [g.reduce_mean() for g in grads]
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        if smp.rank() == 0 and (step % a.log_every == 0 or step == a.steps - 1):
            print(f"step {step} loss {float(loss.reduce_mean()):.4f}", flush=True)
    seconds = (time.perf_counter() - start) / max(a.steps - 1, 1) if start else 0.0
    images, labels = data(10_000, n)
    correct = test_step(images[lo:hi], labels[lo:hi]).reduce_sum()
    total = sum(smp.allgather(float(correct), smp.DP_GROUP))
    if smp.rank() == 0:
        print(f"test accuracy {total / n:.3f}", flush=True)
        print(f"TIME {seconds:.4f}", flush=True)


if __name__ == "__main__":
    main()
