"""SMP's ``@smp.step``: the decorated function runs once per microbatch, pipelined.

How a step runs on each rank:

1. The arguments are split into microbatches (tensors, also inside lists, tuples, dicts and
   sets, and objects with ``smp_slice``; ``non_split_inputs`` and ``input_split_axes`` by
   argument name). Everything else (the model, the optimizer, ``args``) passes through.
2. The function runs once per microbatch, each in a thread of its own, one at a time, up to its
   call of the model; that call hands its arguments over and waits.
3. The C++ engine runs the pipeline with the GIL released: stage 0 takes every microbatch's
   arguments, the schedule (1F1B, interleaved, ...) interleaves their forwards and backwards.
   On the last stage the engine calls back for microbatch k: thread k gets the model's outputs,
   goes on to ``model.backward(loss)`` and pauses there; the engine runs the backward from that
   loss. The outputs reach every other pipeline rank at the end of the step.
4. Other pipeline ranks then let their threads go on with those outputs (detached: the backward
   ran where the model's last stage is), so scripts compute losses and accuracies on every rank.
5. What the function returned, per microbatch, becomes StepOutputs (tensors) or per-microbatch
   lists (anything else), inside the same containers.

Threads are used only to pause a plain Python function in the middle (at the model call and at
backward); only one runs at a time, so the function's side effects happen in microbatch order.
"""

import functools
import inspect
import threading

import torch
from torch.utils import _pytree as pytree

from smp._engine import _C

from . import state as _state


class StepOutput:
    """One value a step returned, per microbatch (SMP's StepOutput)."""

    def __init__(self, outputs):
        self.outputs = list(outputs)

    def reduce_mean(self):
        return torch.stack(self.outputs).mean(dim=0)

    def reduce_sum(self):
        return torch.stack(self.outputs).sum(dim=0)

    def concat(self):
        return torch.cat(self.outputs, dim=0)

    def stack(self):
        return torch.stack(self.outputs)

    def detach(self):
        return StepOutput(t.detach() for t in self.outputs)

    def __repr__(self):
        return f"StepOutput({len(self.outputs)} microbatches)"


# --- splitting ----------------------------------------------------------------------------


def _split_value(value, m, axis, name):
    """value -> m slices: tensors along `axis`, containers leaf by leaf, smp_slice objects by it."""
    if hasattr(value, "smp_slice"):
        return [value.smp_slice(m, k, axis) for k in range(m)]
    if isinstance(value, torch.Tensor):
        if value.dim() == 0:
            return [value] * m
        if axis >= value.dim() or axis < -value.dim():
            raise ValueError(f"smp.step: argument '{name}' has {value.dim()} dims; split axis {axis} is out of range")
        if value.size(axis) % m != 0:
            raise ValueError(
                f"smp.step: argument '{name}' has size {value.size(axis)} along axis {axis}, which does not "
                f"divide into microbatches={m}; make the batch a multiple of {m}, or list '{name}' in non_split_inputs")
        return list(value.chunk(m, dim=axis)) if value.numel() else [value] * m
    if isinstance(value, set):
        parts = [_split_value(v, m, axis, name) for v in value]
        return [set(p[k] for p in parts) for k in range(m)]
    if isinstance(value, (list, tuple, dict)):
        leaves, spec = pytree.tree_flatten(value)
        parts = [_split_value(v, m, axis, name) for v in leaves]
        return [pytree.tree_unflatten([p[k] for p in parts], spec) for k in range(m)]
    return [value] * m


def _split_arguments(signature, args, kwargs, m, non_split, axes):
    bound = signature.bind(*args, **kwargs)
    per_mb = [dict() for _ in range(m)]
    for name, value in bound.arguments.items():
        slices = [value] * m if name in non_split else _split_value(value, m, axes.get(name, 0), name)
        for k in range(m):
            per_mb[k][name] = slices[k]
    calls = []
    for k in range(m):
        b = inspect.BoundArguments(signature, per_mb[k])
        calls.append((b.args, b.kwargs))
    return calls


# --- one microbatch's thread --------------------------------------------------------------


class Microbatch:
    """One run of the step function, in its own thread, paused at the model call and at
    backward. The step's driver and the model talk to it through these methods."""

    def __init__(self, index, fn, args, kwargs, grad_enabled):  # index: the thread's name
        self._fn, self._args, self._kwargs = fn, args, kwargs
        self._grad_enabled = grad_enabled
        self._cond = threading.Condition()
        self._turn = "driver"  # who runs now: "driver" or "worker"
        self.model_call = None  # (args, kwargs) given to the model
        self.outputs = None  # what the model call returns in this thread
        self.backward_args = None  # (tensors, grad_tensors) given to model.backward
        self.result = None
        self.error = None
        self.done = False
        self._thread = threading.Thread(target=self._run, name=f"smp-step-mb{index}", daemon=True)

    # worker side
    def _run(self):
        _current.mb = self
        torch.set_grad_enabled(self._grad_enabled)
        try:
            self.result = self._fn(*self._args, **self._kwargs)
        except BaseException as e:  # noqa: BLE001 (handed to the driver, raised there)
            self.error = e
        with self._cond:
            self.done = True
            self._turn = "driver"
            self._cond.notify_all()

    def _pause(self):
        with self._cond:
            self._turn = "driver"
            self._cond.notify_all()
            self._cond.wait_for(lambda: self._turn == "worker")

    def call_model(self, args, kwargs):
        if self.model_call is not None:
            raise RuntimeError("smp: the model was called twice in one microbatch of a step; call it once per step function")
        self.model_call = (args, kwargs)
        self._pause()
        return self.outputs

    def backward(self, tensors, grad_tensors):
        if self.backward_args is not None:
            raise RuntimeError("smp: model.backward was called twice in one microbatch of a step")
        self.backward_args = (tensors, grad_tensors)
        self._pause()

    # driver side
    def _resume(self):
        with self._cond:
            self._turn = "worker"
            self._cond.notify_all()
            self._cond.wait_for(lambda: self._turn == "driver")

    def start(self):
        """Runs the function up to its model call (or its end)."""
        with self._cond:
            self._turn = "worker"
        self._thread.start()
        with self._cond:
            self._cond.wait_for(lambda: self._turn == "driver")
        self.raise_error()

    def give_outputs(self, outputs):
        """Hands the model's outputs over and runs on to backward (or the end)."""
        self.outputs = outputs
        self._resume()
        self.raise_error()

    def finish(self):
        while not self.done:
            self._resume()
        self._thread.join()
        self.raise_error()

    def raise_error(self):
        if self.error is not None:
            error, self.error = self.error, None
            raise error


class _Current(threading.local):
    mb = None


_current = _Current()


def current_microbatch(what):
    """The microbatch whose thread is running, or a clear error outside a step."""
    mb = _current.mb
    if mb is None:
        raise RuntimeError(f"smp: {what} is only allowed inside a function decorated with @smp.step")
    return mb


# --- the decorator ------------------------------------------------------------------------


def _collect(results, detach):
    """Per-microbatch results -> StepOutputs (tensors) and lists (other values), same containers."""
    leaves = [pytree.tree_flatten(r) for r in results]
    spec = leaves[0][1]
    for k, (_, s) in enumerate(leaves):
        if s != spec:
            raise RuntimeError(f"smp.step: microbatch {k} returned a different structure than microbatch 0 ({s} vs {spec})")
    out = []
    for j in range(len(leaves[0][0])):
        values = [leaves[k][0][j] for k in range(len(results))]
        if isinstance(values[0], torch.Tensor):
            out.append(StepOutput(v.detach() if detach else v for v in values))
        else:
            out.append(values)
    return pytree.tree_unflatten(out, spec)


class _Step:
    def __init__(self, fn, non_split_inputs, input_split_axes, detach_outputs):
        self._fn = fn
        self._signature = inspect.signature(fn)
        self._non_split = set(non_split_inputs or ())
        self._axes = dict(input_split_axes or {})
        for name in list(self._non_split) + list(self._axes):
            if name not in self._signature.parameters:
                raise ValueError(f"smp.step: '{name}' is not an argument of {fn.__name__}{self._signature}")
        self._detach = detach_outputs
        functools.update_wrapper(self, fn)

    def __call__(self, *args, **kwargs):
        _state._require_init("step")
        if _current.mb is not None:
            raise RuntimeError("smp.step: a step function was called inside another step")
        mbs = []
        _agree(_capture(lambda: self._start(args, kwargs, mbs)), "before the pipeline")
        error = None
        if mbs[0].model_call is not None:
            error = _capture(lambda: _state.state.model._run_pipeline(mbs, train=self._grad))
        for mb in mbs:
            error = error or _capture(mb.finish)
        _agree(error, "in the step function")
        return _collect([mb.result for mb in mbs], self._detach)

    def _start(self, args, kwargs, mbs):
        """Splits the arguments and runs each microbatch's function up to its model call."""
        m = _state.state.cfg["microbatches"]
        calls = _split_arguments(self._signature, args, kwargs, m, self._non_split, self._axes)
        self._grad = torch.is_grad_enabled()
        if _state.device().type != "cpu":  # SMP moves the batch to the rank's device
            calls = pytree.tree_map_only(torch.Tensor, lambda t: t.to(_state.device()), calls)
        mbs.extend(Microbatch(k, self._fn, a, kw, self._grad) for k, (a, kw) in enumerate(calls))
        for mb in mbs:
            mb.start()
        called = [mb.model_call is not None for mb in mbs]
        if any(called) and not all(called):
            k = called.index(False)
            raise RuntimeError(f"smp.step: microbatch {k} did not call the model; every microbatch must call it once")


def _capture(fn):
    try:
        fn()
    except Exception as e:  # noqa: BLE001 (agreed on, then raised on every rank)
        return e
    return None


def _agree(error, where):
    """Collective over the world: if any rank failed, every rank raises (its own error, or one
    naming the rank that failed), so no rank waits on a peer that gave up. One 8-byte sum when
    all went well; the messages travel only when one did not."""
    failed = torch.tensor([0 if error is None else 1], dtype=torch.int64)
    try:
        _C.all_reduce(failed, _state.WORLD)
    except Exception as comm_error:  # noqa: BLE001
        # Peers still inside the pipeline wait on this rank (a stage that failed mid-schedule)
        # until their own timeout: this rank's failure is the cause, not the timeout.
        if error is not None:
            raise error from comm_error
        raise
    if failed.item() == 0:
        return
    errors = _state.allgather(None if error is None else f"{type(error).__name__}: {error}", _state.WORLD)
    _C.clear_peer_failures()  # a failed rank's announcement no wait took (comm/peer_failure.h)
    if error is not None:
        raise error
    for r, message in enumerate(errors):
        if message is not None:
            raise RuntimeError(f"smp.step: rank {r} failed {where}: {message}")


def step(fn=None, *, non_split_inputs=None, input_split_axes=None, detach_outputs=True):
    """``@smp.step`` or ``@smp.step(non_split_inputs=[...], input_split_axes={...})``."""
    if fn is None:
        return lambda f: _Step(f, non_split_inputs, input_split_axes, detach_outputs)
    return _Step(fn, non_split_inputs, input_split_axes, detach_outputs)
