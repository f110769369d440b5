"""Small Keras models for smp.tensorflow's tests, each written once as a body that becomes both a
plain keras.Model (the one-process reference) and an smp.DistributedModel.

Every initializer has a seed of its own, so a model's weights are the same whichever rank builds
which layer and in what order; `seed` shifts them all (a replica built with another seed must be
overwritten by dp rank 0's values)."""

import keras
import tensorflow as tf


def _init(seed):
    return keras.initializers.GlorotUniform(seed=seed)


class CNNBody:
    """conv -> relu -> conv -> relu -> flatten -> dense -> relu -> dense (10 classes); 8x8x1 input."""

    def __init__(self, seed=0, **kwargs):
        super().__init__(**kwargs)
        s = 100 * seed
        self.conv1 = keras.layers.Conv2D(4, 3, padding="same", kernel_initializer=_init(s + 1), name="conv1")
        self.conv2 = keras.layers.Conv2D(8, 3, strides=2, kernel_initializer=_init(s + 2), name="conv2")
        self.flatten = keras.layers.Flatten(name="flatten")
        self.fc1 = keras.layers.Dense(16, kernel_initializer=_init(s + 3), bias_initializer="ones", name="fc1")
        self.fc2 = keras.layers.Dense(10, kernel_initializer=_init(s + 4), name="fc2")

    def call(self, x, training=False):
        x = tf.nn.relu(self.conv1(x))
        x = tf.nn.relu(self.conv2(x))
        x = self.flatten(x)
        x = tf.nn.relu(self.fc1(x))
        return self.fc2(x)


class Embeddings(keras.layers.Layer):
    def __init__(self, vocab, length, dim, seed, **kwargs):
        super().__init__(**kwargs)
        init = keras.initializers.RandomNormal(stddev=0.5, seed=seed)
        self.tokens = keras.layers.Embedding(vocab, dim, embeddings_initializer=init)
        self.positions = keras.layers.Embedding(
            length, dim, embeddings_initializer=keras.initializers.RandomNormal(stddev=0.5, seed=seed + 1))

    def call(self, ids):
        return self.tokens(ids) + self.positions(tf.range(tf.shape(ids)[1]))[None]


class Block(keras.layers.Layer):
    """A pre-LayerNorm transformer block: causal self-attention and a GELU MLP, each residual."""

    def __init__(self, dim, heads, seed, **kwargs):
        super().__init__(**kwargs)
        self.ln1 = keras.layers.LayerNormalization(epsilon=1e-5)
        self.attn = keras.layers.MultiHeadAttention(heads, dim // heads, kernel_initializer=_init(seed))
        self.ln2 = keras.layers.LayerNormalization(epsilon=1e-5)
        self.up = keras.layers.Dense(4 * dim, activation="gelu", kernel_initializer=_init(seed + 1))
        self.down = keras.layers.Dense(dim, kernel_initializer=_init(seed + 2))

    def call(self, x):
        h = self.ln1(x)
        x = x + self.attn(h, h, use_causal_mask=True)
        return x + self.down(self.up(self.ln2(x)))


class TransformerBody:
    """Token and position embeddings, two blocks, a final LayerNorm and the vocabulary head."""

    VOCAB, LENGTH, DIM = 32, 8, 16

    def __init__(self, seed=0, manual=False, **kwargs):
        super().__init__(**kwargs)
        s = 100 * seed
        self.manual = manual
        self.embed = Embeddings(self.VOCAB, self.LENGTH, self.DIM, s + 1, name="embed")
        self.block0 = Block(self.DIM, 2, s + 10, name="block0")
        self.block1 = Block(self.DIM, 2, s + 20, name="block1")
        self.ln_f = keras.layers.LayerNormalization(epsilon=1e-5, name="ln_f")
        self.head = keras.layers.Dense(self.VOCAB, kernel_initializer=_init(s + 30), name="head")

    def call(self, ids, training=False):
        if not self.manual:
            return self.head(self.ln_f(self.block1(self.block0(self.embed(ids)))))
        import smp.tensorflow as smp  # smp.partition places the layers by hand

        with smp.partition(0):  # not the split auto_partition picks (embed, block0 | block1, ...)
            x = self.block1(self.block0(self.embed(ids)))
        with smp.partition(1):
            return self.head(self.ln_f(x))


class ResidualAcrossLayers:
    """fc2 takes fc0's output too, so the cut smp.partition asks for (fc1 | fc2) is not valid: the
    error's test (auto_partition false)."""

    def __init__(self, seed=0, **kwargs):
        super().__init__(**kwargs)
        self.fc0 = keras.layers.Dense(8, kernel_initializer=_init(1), name="fc0")
        self.fc1 = keras.layers.Dense(8, kernel_initializer=_init(2), name="fc1")
        self.fc2 = keras.layers.Dense(8, kernel_initializer=_init(3), name="fc2")

    def call(self, x):
        import smp.tensorflow as smp

        with smp.partition(0):
            a = self.fc0(x)
            h = self.fc1(a)
        with smp.partition(1):
            return self.fc2(h + a)


def make(body, base, **kwargs):
    """An instance of `body` over `base` (keras.Model or smp.DistributedModel)."""
    cls = type(body.__name__.replace("Body", "") + base.__name__, (body, base), {})
    return cls(**kwargs)


def batch(name, step, n):
    """The global batch of `step`: (inputs, labels), the same on every rank."""
    g = tf.random.Generator.from_seed(1000 + step)
    if name == "cnn":
        return g.normal((n, 8, 8, 1)), g.uniform((n,), 0, 10, dtype=tf.int32)
    ids = g.uniform((n, TransformerBody.LENGTH + 1), 0, TransformerBody.VOCAB, dtype=tf.int32)
    return ids[:, :-1], ids[:, 1:]


def loss_fn(labels, logits):
    return tf.reduce_mean(tf.keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True))
