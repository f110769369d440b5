"""SMP's ``@smp.step`` for Keras models: the function runs once per microbatch, pipelined.

How a step runs on each rank (docs/tensorflow.md):

1. Tensor arguments (also inside lists, tuples and dicts) are split into ``microbatches`` along
   axis 0; other arguments pass through.
2. The function runs once per microbatch, each in a thread of its own (kept from step to step),
   one at a time, up to its model call, which hands the microbatch's arguments over and waits. A
   ``tf.GradientTape`` recording at that call makes it a training step (forwards and backwards),
   else forwards only.
3. This thread runs the rank's list of actions from the engine's schedule (``simple`` = GPipe,
   ``interleaved`` = 1F1B): each forward runs the rank's stage under a tape of its own, each
   backward takes that tape's gradient, and activations and gradients cross ranks over the
   engine's communicator (TensorFlow tensors become torch tensors through DLPack, no copy).
   On the last stage, after the forward of microbatch k, thread k goes on with the output: it
   computes its loss and calls ``tape.gradient``, which hands the output's gradient to the
   schedule and waits; under 1F1B every rank runs one more forward ahead, so thread k does that
   while this thread runs forward k + 1.
4. After the schedule the gradients are averaged over the data-parallel replicas (one
   all_reduce), the last stage sends the outputs to the other pipeline ranks, and every thread
   finishes: ``tape.gradient(loss, model.trainable_variables)`` returns the stage's gradients for
   that microbatch (the model's output is tied to this rank's variables by a custom gradient).
   The last stage sends each output as soon as it has it; a training step's other pipeline
   ranks receive output k before their backward of k, so thread k computes its loss while the
   schedule goes on.
5. What the function returned, per microbatch, becomes StepOutputs (tensors) or per-microbatch
   lists (anything else), inside the same containers.
"""

import functools
import inspect
import queue
import threading
import time

import numpy as np
import tensorflow as tf
import torch
from tensorflow.python.eager import record as _tape_record
from tensorflow.python.eager import tape as _tape_lib

from smp._engine import _C

from . import state as _state
from .model import DistributedModel

_local = threading.local()  # .run: the step run this thread belongs to


def _current_run():
    return getattr(_local, "run", None)


_last_stats = {}


def last_step_stats():
    """This rank's last step, in seconds: busy_s, what its forward and backward actions took
    (compute only: no waiting on peers or on the step function's threads); the phases
    prepare_s (the threads up to the model call, the first step's partitioning), pipeline_s (the
    schedule), average_s (the data-parallel all_reduce), share_s (the outputs to every pipeline
    rank), finish_s (the threads' rest of the step function); and the schedule's size."""
    return dict(_last_stats)


class StepOutput:
    """One value a step returned, per microbatch (SMP's StepOutput)."""

    def __init__(self, outputs):
        self.outputs = list(outputs)

    def accumulate(self):
        """The sum over microbatches (SMP: what apply_gradients takes after a step); with one
        microbatch its output itself (no copy)."""
        if self.outputs[0] is None or len(self.outputs) == 1:
            return self.outputs[0]
        return tf.add_n(self.outputs)

    def reduce_mean(self):
        if self.outputs[0] is None or len(self.outputs) == 1:
            return self.outputs[0]
        return tf.add_n(self.outputs) / len(self.outputs)

    def reduce_sum(self):
        return self.accumulate()

    def concat(self):
        return tf.concat(self.outputs, axis=0)

    def stack(self):
        return tf.stack(self.outputs)

    def __repr__(self):
        return f"StepOutput({len(self.outputs)} microbatches)"


# --- splitting ----------------------------------------------------------------------------


def _split_value(value, m, name):
    if isinstance(value, (tf.Tensor, np.ndarray)):
        if len(value.shape) == 0:
            return [value] * m
        n = value.shape[0]
        if n % m != 0:
            raise ValueError(
                f"smp.step: argument '{name}' has {n} samples along axis 0, which does not divide into "
                f"microbatches={m}; allowed: a multiple of {m} (batch with drop_remainder=True)")
        return tf.split(tf.convert_to_tensor(value), m, axis=0)
    if isinstance(value, (list, tuple, dict)):
        leaves = tf.nest.flatten(value)
        parts = [_split_value(v, m, name) for v in leaves]
        return [tf.nest.pack_sequence_as(value, [p[k] for p in parts]) for k in range(m)]
    return [value] * m


def _to_torch(t):
    return torch.from_dlpack(tf.experimental.dlpack.to_dlpack(t))


def _to_tf(t):
    """A torch tensor as a TensorFlow one, sharing its memory. TensorFlow's kernels need 64-byte
    aligned buffers (a misaligned one aborts the process), so a tensor that is a view into the
    middle of a buffer is copied first; torch's own allocations are aligned."""
    t = t.contiguous()
    if t.data_ptr() % 64 != 0:
        t = t.clone()
    return tf.experimental.dlpack.from_dlpack(torch.utils.dlpack.to_dlpack(t))


class _Worker:
    """A thread that runs microbatches of step functions, kept from one step to the next: a
    fresh thread per microbatch cost its start and join in every step, and TensorFlow builds
    per-thread state on a thread's first eager ops (docs/tensorflow.md, Performance)."""

    def __init__(self):
        self.tasks = queue.SimpleQueue()
        threading.Thread(target=self._loop, daemon=True, name="smp-step").start()

    def _loop(self):
        while True:
            self.tasks.get()()


_idle_workers = []  # workers between steps
_idle_lock = threading.Lock()


def _take_worker():
    with _idle_lock:
        if _idle_workers:
            return _idle_workers.pop()
    return _Worker()


def _return_workers(workers):
    with _idle_lock:
        _idle_workers.extend(reversed(workers))  # microbatch 0 takes the same thread next step


_ACT, _GRAD, _OUT = 0, 1, 2


def _one_more_ahead(actions, pp, active):
    """A rank's 1F1B actions with one more forward ahead of the backwards: each backward moves
    after the next forward (last stage: F0 B0 F1 B1 ... becomes F0 F1 B0 F2 B1 ...), so on the last
    stage thread k computes microbatch k's loss and its gradient up to the model's output while
    this thread runs forward k + 1 (TensorFlow leaves the GIL to the thread), not between forward k
    and backward k, where the stage waited for it. Every rank takes one more, so each still sends
    activation k + 1 before it waits for gradient k of the stage after it. Only with
    active_microbatches >= pp + 1 (the default is pp + 2): rank 0 then has pp + 1 microbatches in
    flight; with fewer the actions are unchanged."""
    if active < pp + 1:
        return actions
    groups = []  # [recv_activation] forward [send_activation] | [recv_grad] backward [send_grad]
    for action in actions:
        after = {"forward": "recv_activation", "backward": "recv_grad"}.get(action[0])
        if groups and (action[0].startswith("send_") or groups[-1][-1][0] == after):
            groups[-1].append(action)
        else:
            groups.append([action])
    kinds = [next((a[0] for a in g if a[0] in ("forward", "backward")), None) for g in groups]
    out, i = [], 0
    while i < len(groups):
        if kinds[i] == "backward" and i + 1 < len(groups) and kinds[i + 1] == "forward":
            out += groups[i + 1] + groups[i]
            i += 2
        else:
            out += groups[i]
            i += 1
    return out


def _tag(kind, microbatch):
    return 3 * microbatch + kind


class _Run:
    """One call of a step function: the threads, the schedule and what they hand each other."""

    def __init__(self, fn, calls):
        self.fn, self.calls = fn, calls
        self.m = len(calls)
        self.cond = threading.Condition()
        self.inputs = [None] * self.m  # (model, args, kwargs) at each thread's model call
        self.reached = [False] * self.m  # the thread reached its model call, or finished
        self.outputs = [None] * self.m  # the model's output per microbatch, for the threads
        self.released = [False] * self.m
        self.dy = [None] * self.m  # the last stage's output gradients, from the threads
        self.dy_given = [False] * self.m
        self.done = False  # gradients are final
        self.grads = [None] * self.m  # per microbatch: this rank's variables' gradients
        self.results = [None] * self.m
        self.errors = [None] * self.m
        self.finished = [False] * self.m
        self.train = None
        self.model = None
        self.k_of_thread = {}  # thread id -> its microbatch

    # --- the threads' side -------------------------------------------------------------------

    def thread_main(self, k):
        _local.run = self
        self.k_of_thread[threading.get_ident()] = k
        args, kwargs = self.calls[k]
        try:
            self.results[k] = self.fn(*args, **kwargs)
        except BaseException as e:  # noqa: BLE001  (re-raised by the step's caller)
            self.errors[k] = e
        _local.run = None  # the worker waits for the next step's microbatch
        with self.cond:
            self.finished[k] = self.reached[k] = True
            self.cond.notify_all()

    def model_call(self, model, args, kwargs):
        k = self.k_of_thread[threading.get_ident()]
        if self.inputs[k] is not None:
            raise RuntimeError("smp.step: the step function called the model twice; call it once per step")
        train = _tape_record.could_possibly_record()
        with self.cond:
            self.inputs[k] = (model, args, kwargs, train)
            self.reached[k] = True
            self.cond.notify_all()
            self.cond.wait_for(lambda: self.released[k])
        if self.errors[k] is not None:
            raise self.errors[k]
        out = self.outputs[k]
        if not self.train:
            return out
        return self._tie(k, out, model.trainable_variables)

    def _tie(self, k, out, variables):
        """The output, recorded on the step function's tape as one op of this rank's variables
        (as if call() had read them) whose gradient is the schedule's: the tape's gradient hands
        the output's gradient over, waits for the step's end and gives each variable microbatch
        k's gradient. Recorded directly (no tf.custom_gradient, no variable reads): per microbatch
        it costs microseconds, on the last stage between a forward and its backward."""
        flat = tf.nest.flatten(out)
        for v in variables:
            _tape_lib.variable_accessed(v)
        tied = [tf.identity(x) for x in flat]

        def grad(*dys):
            if self.is_last_stage:
                with self.cond:
                    self.dy[k] = list(dys)
                    self.dy_given[k] = True
                    self.cond.notify_all()
            with self.cond:
                self.cond.wait_for(lambda: self.done)
            if self.errors[k] is not None:
                raise self.errors[k]
            return list(self.grads[k])

        _tape_record.record_operation("smp_step_output", tied, [v.handle for v in variables], grad)
        return tf.nest.pack_sequence_as(out, tied)

    # --- this thread's side: the pipeline --------------------------------------------------------

    def _wait(self, pred):
        with self.cond:
            self.cond.wait_for(pred)

    def _release_thread(self, k):
        with self.cond:
            self.released[k] = True
            self.cond.notify_all()

    def run(self):
        self.t_start = time.perf_counter()
        threads = []
        for k in range(self.m):  # one at a time up to the model call, in microbatch order
            threads.append(_take_worker())
            threads[k].tasks.put(functools.partial(self.thread_main, k))
            self._wait(lambda: self.reached[k])
        local_error = next((e for e in self.errors if e is not None), None)
        if local_error is None and any(i is None for i in self.inputs):
            k = self.inputs.index(None)
            local_error = RuntimeError(
                f"smp.step: the step function returned without calling an smp.DistributedModel (microbatch {k}); "
                "the model must subclass smp.DistributedModel and be called inside the step")
        # Every rank learns whether another failed before any communication of the step.
        failed = [r for r, bad in enumerate(_state.allgather(local_error is not None, _state.WORLD)) if bad]
        if failed:
            self._finish(threads, release_error=local_error or RuntimeError(
                f"smp.step: rank(s) {failed} failed before the pipeline started; see their error"))
            raise local_error or RuntimeError(f"smp.step: rank(s) {failed} failed before the pipeline started")
        try:
            self._prepare()
            t0 = time.perf_counter()
            self._pipeline()
            t1 = time.perf_counter()
            self._average_gradients()
            t2 = time.perf_counter()
            self._share_outputs()
            t3 = time.perf_counter()
            _last_stats.update(prepare_s=t0 - self.t_start, pipeline_s=t1 - t0, average_s=t2 - t1,
                               share_s=t3 - t2)
        except BaseException as e:
            self._finish(threads, release_error=e)
            raise
        t4 = time.perf_counter()
        self._finish(threads)
        _last_stats.update(finish_s=time.perf_counter() - t4)
        errors = [e for e in self.errors if e is not None]
        if errors:
            raise errors[0]
        return self.results

    def _prepare(self):
        if len({id(i[0]) for i in self.inputs}) != 1:
            raise RuntimeError("smp.step: the microbatches called different models; call one DistributedModel")
        self.model = self.inputs[0][0]
        trains = {i[3] for i in self.inputs}
        if len(trains) != 1:
            raise RuntimeError("smp.step: a GradientTape recorded at the model call of some microbatches only; "
                               "record one around the model call in every microbatch, or in none (evaluation)")
        self.train = trains.pop()
        self.is_last_stage = _state.pp_rank() == _state.pp_size() - 1
        if not self.model.partitioned:
            _, args, kwargs, _ = self.inputs[0]
            self.model._partition(args, kwargs)

    def _finish(self, threads, release_error=None):
        with self.cond:
            for k in range(self.m):
                if release_error is not None and self.errors[k] is None:
                    self.errors[k] = release_error
                self.released[k] = True
            self.done = True
            self.cond.notify_all()
            self.cond.wait_for(lambda: all(self.finished))
        _return_workers(threads)

    def _pipeline(self):
        cfg = _state.state.cfg
        cut = self.model._smp()["cut"]
        rank, pp = _state.pp_rank(), _state.pp_size()
        first, last = cut.bounds(rank)
        kind = cfg["pipeline"] if self.train else "_only_forward"
        actions = _C.schedule_actions(kind, pp, self.m, cfg["active_microbatches"], rank)
        if kind == "interleaved":
            actions = _one_more_ahead(actions, pp, cfg["active_microbatches"])
        variables = self.model.trainable_variables
        stage_fn = cut.stage_function(self.model, rank)
        received = [None] * self.m
        saved = [None] * self.m  # (tape, received flat, output flat) per microbatch
        grad_in = [None] * self.m
        sends = []
        busy = 0.0
        # Thread k (its loss) is released right before this thread's next run of TensorFlow
        # (a forward or a backward), which leaves the GIL to the thread: released earlier, the
        # thread takes the GIL while this one waits on a receive or runs Python, and this one then
        # waits for the thread's loss (the GIL passes between threads only when its holder blocks).
        to_release = []

        def release():
            for j in to_release:
                self._release_thread(j)
            to_release.clear()

        for what, stage, k, peer in actions:
            started = time.perf_counter()
            if what == "recv_activation":
                spec = cut.units[first - 1].output_spec
                flat = [_to_tf(t) for t in _C.recv_tensors(peer, _state.PP_GROUP, _tag(_ACT, k))]
                received[k] = tf.nest.pack_sequence_as(spec, flat)
            elif what == "forward":
                _, args, kwargs, _ = self.inputs[k]
                with tf.GradientTape(watch_accessed_variables=self.train, persistent=False) as tape:
                    if self.train and received[k] is not None:
                        for t in tf.nest.flatten(received[k]):
                            if t.dtype.is_floating:
                                tape.watch(t)
                    release()
                    out = stage_fn(args, kwargs, received[k])
                saved[k] = (tape, received[k], out)
                busy += time.perf_counter() - started
                if rank == pp - 1:
                    self.outputs[k] = out
                    flat = [_to_torch(t) for t in tf.nest.flatten(out)]  # every pipeline rank gets it
                    sends += [_C.send_tensors(flat, r, _state.PP_GROUP, _tag(_OUT, k)) for r in range(pp - 1)]
                    to_release.append(k)  # the thread computes its loss, hands the output's gradient back
            elif what == "send_activation":
                flat = [_to_torch(t) for t in tf.nest.flatten(saved[k][2])]
                sends.append(_C.send_tensors(flat, peer, _state.PP_GROUP, _tag(_ACT, k)))
            elif what == "recv_grad":
                grad_in[k] = [_to_tf(t) for t in _C.recv_tensors(peer, _state.PP_GROUP, _tag(_GRAD, k))]
            elif what == "backward":
                if rank < pp - 1:  # the output is in by now: thread k computes its loss meanwhile
                    self._receive_output(k, release=False)
                    to_release.append(k)
                else:  # thread k's loss, computed since forward k (not compute of this stage)
                    if k in to_release:  # no forward since forward k; a later one's thread waits for tape.gradient
                        release()
                    self._wait(lambda: self.dy_given[k] or self.finished[k])
                    if not self.dy_given[k]:
                        raise RuntimeError(
                            f"smp.step: microbatch {k}'s step function did not take the gradient of the model's "
                            "output (call tape.gradient(loss, model.trainable_variables) inside the step) "
                            "although a GradientTape was recording at the model call")
                    started = time.perf_counter()
                tape, inp, out = saved[k]
                dys = self.dy[k] if rank == pp - 1 else grad_in[k]
                pairs = [(o, d) for o, d in zip(tf.nest.flatten(out), dys) if o.dtype.is_floating]
                inputs = tf.nest.flatten(inp) if inp is not None else []
                sources = [t for t in inputs if t.dtype.is_floating] + list(variables)
                release()
                grads = tape.gradient([o for o, _ in pairs], sources,
                                      output_gradients=[d if d is not None else tf.zeros_like(o) for o, d in pairs],
                                      unconnected_gradients=tf.UnconnectedGradients.ZERO)
                grads = [tf.convert_to_tensor(g) for g in grads]  # IndexedSlices (embeddings) made dense
                input_grads = iter(grads)
                grad_in[k] = [next(input_grads) if t.dtype.is_floating else tf.zeros_like(t) for t in inputs]
                self.grads[k] = list(input_grads)
                saved[k] = None  # the tape and activations go as soon as the backward is done
                busy += time.perf_counter() - started
            elif what == "send_grad":
                flat = [_to_torch(g) for g in grad_in[k]]
                sends.append(_C.send_tensors(flat, peer, _state.PP_GROUP, _tag(_GRAD, k)))
            else:
                raise RuntimeError(f"smp.step: schedule action '{what}' is not run by smp.tensorflow")
        release()
        for work in sends:
            work.wait()
        _last_stats.update(busy_s=busy, microbatches=self.m, stages=pp, schedule=kind)

    def _average_gradients(self):
        """Averages every microbatch's gradients over the data-parallel replicas: one all_reduce
        on one buffer, TensorFlow's concatenation of them all. The buffer is this step's own
        (nothing else refers to it), so the engine sums into it in place through DLPack."""
        if not self.train or _state.dp_size() == 1 or not self.grads[0]:
            return
        grads = [g for k in range(self.m) for g in self.grads[k]]
        flat = tf.concat([tf.reshape(g, [-1]) for g in grads], axis=0)
        buffer = _to_torch(flat)
        _C.all_reduce(buffer, _state.DP_GROUP)
        buffer.div_(_state.dp_size())  # in place: no second buffer
        parts = tf.split(flat, [g.shape.num_elements() for g in grads])  # views of `flat`, as are the reshapes
        averaged = iter(tf.reshape(p, g.shape) for p, g in zip(parts, grads))
        for k in range(self.m):
            self.grads[k] = [next(averaged) for _ in self.grads[k]]

    def _receive_output(self, k, release=True):
        """Microbatch k's model output from the last stage (sent right after its forward); thread
        k goes on with it (released here, or by the caller)."""
        spec = self.model._smp()["cut"].output_spec
        flat = [_to_tf(t) for t in _C.recv_tensors(_state.pp_size() - 1, _state.PP_GROUP, _tag(_OUT, k))]
        self.outputs[k] = tf.nest.pack_sequence_as(spec, flat)
        if release:
            self._release_thread(k)

    def _share_outputs(self):
        """Every pipeline rank has every output (those not received during the schedule now);
        the threads finish the step function."""
        if _state.pp_rank() < _state.pp_size() - 1:
            for k in range(self.m):
                if self.outputs[k] is None:
                    self._receive_output(k)
        with self.cond:
            self.done = True
            for k in range(self.m):
                self.released[k] = True
            self.cond.notify_all()


def _gather_results(results):
    """Per-microbatch results -> one structure of StepOutputs (tensors) or lists (anything else)."""
    first = results[0]
    flats = [tf.nest.flatten(r) for r in results]

    def combine(i):
        values = [f[i] for f in flats]
        if all(v is None for v in values):
            return StepOutput(values)
        if isinstance(values[0], (tf.Tensor, tf.Variable)):
            return StepOutput(values)
        return values

    return tf.nest.pack_sequence_as(first, [combine(i) for i in range(len(flats[0]))])


def step(fn=None):
    """SMP's ``@smp.step`` (or ``@smp.step()``)."""
    if fn is None:
        return step

    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if not _state.is_initialized():
            raise RuntimeError("smp.step: call smp.init() first")
        if _current_run() is not None:
            raise RuntimeError("smp.step: a step function called another step function")
        m = _state.state.cfg["microbatches"]
        bound = signature.bind(*args, **kwargs)
        per_mb = [dict() for _ in range(m)]
        for name, value in bound.arguments.items():
            for k, part in enumerate(_split_value(value, m, name)):
                per_mb[k][name] = part
        calls = []
        for k in range(m):
            b = inspect.BoundArguments(signature, per_mb[k])
            calls.append((b.args, b.kwargs))
        results = _Run(fn, calls).run()
        return _gather_results(results)

    return wrapper


__all__ = ["DistributedModel", "StepOutput", "step"]
