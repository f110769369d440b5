"""smp.DistributedModel for Keras: the model is cut at its top-level layers (docs/tensorflow.md).

The user's model subclasses ``smp.DistributedModel`` and implements ``call()``. On the first
step every rank runs ``call()`` once on the first microbatch, recording the model's top-level
layers in call order (each one's arguments, output structure, parameters and forward time):
those are the units smp partitions. The engine's partitioner splits them into
``pipeline_parallel_degree`` contiguous stages (profiled costs, ``memory_weight``), or
``smp.partition(i)`` contexts inside ``call()`` place them (``auto_partition: false``). A rank then
releases the variables of the layers it does not hold and keeps its stage's only.

A stage runs ``call()`` in full with the top-level layers intercepted: layers of earlier stages
are not run (the last of them returns the activation received from the previous stage, the
others zeros of their recorded shape), this stage's layers run, and the stage ends at its last
layer's output. So the code between layers (residuals, reshapes) runs on the stage of the
layer after it, and a cut is valid only where nothing but the previous layer's output crosses
it: smp checks each cut once at partitioning (``call()`` with every earlier layer's output
replaced by noise must give the same output) and names the layers when it fails.
"""

import contextlib
import threading
import time

import keras
import numpy as np
import tensorflow as tf

from smp._engine import _C

from . import state as _state

_local = threading.local()  # .interceptor (this thread's), .partition (smp.partition's stack)
_original_layer_call = keras.layers.Layer.__call__


_post_partition_hooks = []  # smp.register_post_partition_hook's, for every DistributedModel


class _StageDone(Exception):
    """Raised by the interceptor at a stage's last layer: its output is the stage's output."""

    def __init__(self, output):
        super().__init__()
        self.output = output


def _layer_call(layer, *args, **kwargs):
    """keras Layer.__call__, through this thread's interceptor when one is set."""
    interceptor = getattr(_local, "interceptor", None)
    if interceptor is None or interceptor.depth > 0:
        return _original_layer_call(layer, *args, **kwargs)
    return interceptor(layer, args, kwargs)


keras.layers.Layer.__call__ = _layer_call


@contextlib.contextmanager
def _intercepting(interceptor):
    previous = getattr(_local, "interceptor", None)
    _local.interceptor = interceptor
    try:
        yield interceptor
    finally:
        _local.interceptor = previous


@contextlib.contextmanager
def partition(index):
    """SMP's ``with smp.partition(i):`` inside ``call()``: the top-level layers called in it go to
    stage i (with ``auto_partition: false``)."""
    if not isinstance(index, int) or index < 0:
        raise ValueError(f"smp.partition: index {index!r}; allowed: an int >= 0 (a pipeline stage)")
    stack = getattr(_local, "partition", None)
    if stack is None:
        stack = _local.partition = []
    stack.append(index)
    try:
        yield
    finally:
        stack.pop()


def _spec(value):
    return tf.nest.map_structure(
        lambda t: tf.TensorSpec(t.shape, t.dtype) if isinstance(t, (tf.Tensor, tf.Variable)) else t, value)


def _zeros_like_spec(spec, noise=False):
    def make(s):
        if not isinstance(s, tf.TensorSpec):
            return s
        if noise and s.dtype.is_floating:
            return tf.random.normal(s.shape, dtype=s.dtype)
        return tf.zeros(s.shape, s.dtype)
    return tf.nest.map_structure(make, spec)


class _Unit:
    """One top-level layer as the trace saw it."""

    def __init__(self, layer, output, seconds, partition_index):
        self.layer = layer
        self.name = layer.name
        self.output_spec = _spec(output)
        self.seconds = seconds
        self.partition = partition_index  # smp.partition's index at the call, -1 outside one
        self.num_params = int(sum(np.prod(v.shape) for v in layer.weights))
        self.param_bytes = int(sum(np.prod(v.shape) * np.dtype(v.dtype).itemsize for v in layer.weights))
        self.activation_bytes = int(sum(t.shape.num_elements() * t.dtype.size
                                        for t in tf.nest.flatten(output) if isinstance(t, tf.Tensor)))


class _Recorder:
    """Runs every top-level layer and records it (the trace)."""

    def __init__(self, top_level):
        self.top_level = top_level  # id -> layer
        self.units = []
        self.depth = 0

    def __call__(self, layer, args, kwargs):
        if id(layer) not in self.top_level:
            return _original_layer_call(layer, *args, **kwargs)
        if any(u.layer is layer for u in self.units):
            raise ValueError(
                f"smp.DistributedModel: call() calls the top-level layer '{layer.name}' twice; smp cuts the model "
                "at its top-level layers and each must run once per call (put the repeated use inside one layer)")
        stack = getattr(_local, "partition", None) or []
        self.depth += 1
        try:
            start = time.perf_counter()
            out = _original_layer_call(layer, *args, **kwargs)
            seconds = time.perf_counter() - start
        finally:
            self.depth -= 1
        self.units.append(_Unit(layer, out, seconds, stack[-1] if stack else -1))
        return out


class _StageRunner:
    """Runs call() as stage [first, last) of the units: earlier layers are skipped (the one before
    `first` returns `received`, the others zeros, or noise when checking a cut), this stage's run,
    and the stage ends with _StageDone after unit last - 1 unless it is the model's last."""

    def __init__(self, units, first, last, received, is_last, noise=False):
        self.units, self.first, self.last = units, first, last
        self.received, self.is_last, self.noise = received, is_last, noise
        self.position = 0
        self.depth = 0
        self.ids = {id(u.layer): u for u in units}

    def __call__(self, layer, args, kwargs):
        unit = self.ids.get(id(layer))
        if unit is None:
            return _original_layer_call(layer, *args, **kwargs)
        i = self.position
        if i >= len(self.units) or self.units[i] is not unit:
            expected = self.units[i].name if i < len(self.units) else "no further layer"
            raise RuntimeError(
                f"smp.DistributedModel: call() called top-level layers in another order than at the first step "
                f"(call #{i} is '{layer.name}', the first step's was '{expected}'); smp's cut needs the same order "
                "every step")
        self.position += 1
        if i < self.first - 1:
            return _zeros_like_spec(unit.output_spec, self.noise)
        if i == self.first - 1:
            return self.received
        self.depth += 1
        try:
            out = _original_layer_call(layer, *args, **kwargs)
        finally:
            self.depth -= 1
        if i == self.last - 1 and not self.is_last:
            raise _StageDone(out)
        return out


def _run_stage(model, args, kwargs, units, first, last, received, is_last, noise=False):
    with _intercepting(_StageRunner(units, first, last, received, is_last, noise)):
        try:
            return model.call(*args, **kwargs)
        except _StageDone as done:
            return done.output


def _release(layer):
    """Drops a layer's variables (and its sublayers'): this rank does not hold its stage."""
    for sub in layer._flatten_layers(include_self=True, recursive=True):
        for key, value in list(vars(sub).items()):
            if isinstance(value, keras.Variable):
                object.__setattr__(sub, key, None)
        sub._trainable_variables.clear()
        sub._non_trainable_variables.clear()


class _Cut:
    """The partitioned model as this rank holds it."""

    def __init__(self, units, stage_of_unit, num_stages, output_spec):
        self.units = units
        self.stage_of_unit = stage_of_unit
        self.num_stages = num_stages
        self.output_spec = output_spec  # the model's output per microbatch
        self.compiled = {}  # stage -> tf.function

    def bounds(self, stage):
        idx = [i for i, s in enumerate(self.stage_of_unit) if s == stage]
        return idx[0], idx[-1] + 1

    def stage_function(self, model, stage):
        """The stage as a tf.function (graph mode, as SMP ran its steps): traced again when the
        shapes, dtypes or Python arguments of a call change. A tape around a call records it as
        one op, whose gradient is the traced backward."""
        if stage not in self.compiled:
            first, last = self.bounds(stage)
            is_last = stage == self.num_stages - 1

            def run(args, kwargs, received):
                return _run_stage(model, args, kwargs, self.units, first, last, received, is_last)

            self.compiled[stage] = tf.function(run)
        return self.compiled[stage]


def _check_batch(x, method):
    """A batch of a Keras method (fit, evaluate, predict) must divide into the microbatches."""
    m = _state.state.cfg["microbatches"]
    n = next(t.shape[0] for t in tf.nest.flatten(x) if t is not None and len(t.shape) > 0)
    if n % m != 0:
        raise ValueError(
            f"smp.DistributedModel.{method}: a batch of {n} samples does not divide into microbatches={m}; "
            f"allowed: a multiple of {m} in every batch (a batch_size that is a multiple of {m} and a number of "
            "samples that is a multiple of batch_size, or a dataset batched with drop_remainder=True)")


def _gather_replicas(values):
    """A structure of tensors (and Nones): each tensor concatenated along axis 0 over the
    data-parallel replicas, in dp rank order. Collective over DP_GROUP."""
    if _state.dp_size() == 1:
        return values
    local = tf.nest.map_structure(lambda t: None if t is None else np.asarray(t), values)
    replicas = _state.allgather(local, _state.DP_GROUP)
    return tf.nest.map_structure(lambda *parts: None if parts[0] is None else tf.concat(parts, 0), *replicas)


class DistributedModel(keras.Model):
    """Subclass it and implement ``call()``; call the model only inside an ``@smp.step`` function.

    SMP's constructor arguments are Keras's; smp adds nothing. Variables exist on a rank only for
    the layers of its pipeline stage once the first step has partitioned the model.
    """

    def __call__(self, *args, **kwargs):
        from .step import _current_run  # the step module owns the per-thread step context

        run = _current_run()
        if run is None:
            raise RuntimeError(
                f"smp.DistributedModel: {type(self).__name__} was called outside a function decorated with "
                "@smp.step; call the model inside the step function (SMP runs it per microbatch, pipelined)")
        return run.model_call(self, args, kwargs)

    # --- Keras fit(), evaluate(), predict() (SMP 1.4 had fit) ---------------------------------

    @property
    def run_eagerly(self):
        """Always True: Keras runs the train, test and predict steps eagerly (each stage is a
        tf.function already, and smp.step's threads cannot run inside one)."""
        return True

    @run_eagerly.setter
    def run_eagerly(self, value):
        if not value:
            raise ValueError(f"smp.DistributedModel: run_eagerly={value!r}; allowed: True "
                             "(smp runs each stage as a tf.function itself)")

    def compile(self, *args, **kwargs):
        """Keras's compile; one step per execution, no XLA (each stage is a tf.function already,
        and smp.step's threads cannot run inside one)."""
        for key, allowed in (("run_eagerly", True), ("jit_compile", False), ("steps_per_execution", 1)):
            if kwargs.get(key, allowed) != allowed:
                raise ValueError(f"smp.DistributedModel.compile: {key}={kwargs[key]!r}; allowed: {allowed!r} "
                                 "(smp runs each stage as a tf.function itself)")
            kwargs[key] = allowed
        super().compile(*args, **kwargs)

    def train_step(self, data):
        """One fit() batch: an @smp.step over its microbatches, then the optimizer on the mean of
        the microbatches' gradients (averaged over dp replicas, each fed its own shard)."""
        from .step import step

        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        if sample_weight is not None:
            raise ValueError("smp.DistributedModel.fit: sample_weight is not supported; allowed: None")
        _check_batch(x, "fit")

        @step
        def run(x, y):
            with tf.GradientTape() as tape:
                y_pred = self(x, training=True)
                loss = self.compute_loss(x=x, y=y, y_pred=y_pred, training=True)
            return tape.gradient(loss, self.trainable_variables), loss, y_pred

        grads, loss, y_pred = run(x, y)
        self.optimizer.apply_gradients(zip([g.reduce_mean() for g in grads], self.trainable_variables))
        batch = tf.shape(tf.nest.flatten(x)[0])[0]
        self._loss_tracker.update_state(loss.reduce_mean(), sample_weight=batch)
        return self.compute_metrics(x, y, y_pred.concat(), sample_weight=None)

    def test_step(self, data):
        """One evaluate() batch: a forward-only @smp.step, then the loss and metrics on the whole
        batch of every data-parallel replica (their labels, outputs and sample weights gathered),
        so every rank reports the metrics of the global batch, as one process would."""
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        y_pred = self._forward(x, "evaluate")
        y, y_pred, sample_weight = _gather_replicas((y, y_pred, sample_weight))
        loss = self._compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=False)
        batch = tf.shape(tf.nest.flatten(y_pred)[0])[0]
        self._loss_tracker.update_state(loss, sample_weight=batch)
        return self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    def predict_step(self, data):
        """One predict() batch: a forward-only @smp.step; each rank gets the outputs of the batch
        it was given (a dp replica its own shard's)."""
        x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        return self._forward(x, "predict")

    def _forward(self, x, method):
        """The model's output on batch x (its microbatches' concatenated): a forward-only step."""
        from .step import step

        _check_batch(x, method)

        @step
        def run(x):
            return self(x, training=False) if self._call_has_training_arg else self(x)

        return tf.nest.map_structure(lambda out: out.concat(), run(x))

    # --- partitioning -----------------------------------------------------------------------

    def _smp(self):
        return self.__dict__.setdefault("_smp_state", {"cut": None, "post_partition_hooks": []})

    @property
    def partitioned(self):
        return self._smp()["cut"] is not None

    def register_post_partition_hook(self, hook):
        """SMP's decorator: ``hook(model)`` runs on every rank right after partitioning."""
        self._smp()["post_partition_hooks"].append(hook)
        return hook

    def _partition(self, args, kwargs):
        """Collective over the world, on the first step: trace, split, check the cuts, release."""
        cfg = _state.state.cfg
        pp = _state.pp_size()
        top = {id(layer): layer for layer in self._flatten_layers(include_self=False, recursive=False)}
        if not top:
            raise ValueError(f"smp.DistributedModel: {type(self).__name__} has no Keras layers as attributes; "
                             "smp cuts the model at its top-level layers")
        recorder = None
        for _ in range(2):  # the first call builds the layers; the second is timed
            recorder = _Recorder(top)
            with _intercepting(recorder):
                output = self.call(*args, **kwargs)
        units = recorder.units
        costs = [(u.name, 3.0 * u.seconds, u.param_bytes, u.activation_bytes, u.num_params) for u in units]
        # Rank 0's timings decide for everyone, so every replica cuts alike.
        if _state.rank() == 0:
            _state.broadcast(costs, _state.WORLD)
        else:
            costs = _state.recv_from(0, _state.RankType.WORLD_RANK)
        if len(units) < pp:
            raise ValueError(
                f"smp.DistributedModel: call() runs {len(units)} top-level layers ({', '.join(u.name for u in units)}), "
                f"fewer than pipeline_parallel_degree={pp}; each stage needs at least one")
        if cfg["auto_partition"]:
            stages, log = _C.auto_partition(costs, pp, cfg["memory_weight"])
        else:
            stages, log = _C.manual_partition(costs, [u.partition for u in units], pp, cfg["default_partition"])
        cut = _Cut(units, list(stages), pp, _spec(output))
        self._check_cuts(cut, args, kwargs, output)
        mine = _state.pp_rank()
        for unit, stage in zip(units, cut.stage_of_unit):
            if stage != mine:
                _release(unit.layer)
        self._broadcast_replicas()
        self._smp()["cut"] = cut
        pending = self._smp().pop("pending_restore", None)
        if pending is not None:  # smp.CheckpointManager.restore before the first step
            pending(self)
        if _state.rank() == 0:
            print(log, flush=True)
        for hook in _post_partition_hooks + self._smp()["post_partition_hooks"]:
            hook(self)

    def _check_cuts(self, cut, args, kwargs, output):
        kwargs = dict(kwargs)
        for stage in range(1, cut.num_stages):
            first, _ = cut.bounds(stage)
            before = cut.units[first - 1]
            # call() from stage `stage` on, every layer before it giving noise, the one right
            # before it its true output: the result must be the model's.
            received = _run_stage(self, args, kwargs, cut.units, 0, first, None, False)
            got = _run_stage(self, args, kwargs, cut.units, first, len(cut.units), received, True, noise=True)
            same = all(np.allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-6)
                       for a, b in zip(tf.nest.flatten(got), tf.nest.flatten(output)) if isinstance(a, tf.Tensor))
            if not same:
                raise ValueError(
                    f"smp.DistributedModel: the cut between top-level layers '{before.name}' (stage {stage - 1}) and "
                    f"'{cut.units[first].name}' (stage {stage}) is crossed by a value other than '{before.name}''s "
                    "output (call() uses an earlier layer's output after it). Put those layers in one stage with "
                    "smp.partition, or pass the value through the layers")

    def _broadcast_replicas(self):
        """Data-parallel replicas start from dp rank 0's values (as DDP does)."""
        if _state.dp_size() == 1:
            return
        import torch

        for v in self.weights:
            t = torch.from_numpy(np.ascontiguousarray(v.numpy()))
            _C.broadcast_tensor(t, 0, _state.DP_GROUP)
            v.assign(t.numpy())

    def local_layers(self):
        """This rank's top-level layers (after the first step)."""
        cut = self._smp()["cut"]
        if cut is None:
            return []
        return [u.layer for u, s in zip(cut.units, cut.stage_of_unit) if s == _state.pp_rank()]
