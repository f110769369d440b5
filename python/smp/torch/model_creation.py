"""SMP's model-creation contexts: ``smp.model_creation``, ``smp.tensor_parallelism``,
``smp.delay_param_initialization`` and the ``tp_register`` decorators.

What runs today: a context without tensor parallelism and without delayed initialisation builds
the model plainly, in ``dtype`` when given (SMP's GPT-2 script wraps its model creation so on
one GPU or without TP). Hugging Face's automatic tensor parallelism (module replacement and
state-dict translation) and delayed initialisation are not built yet: asking for them raises
``NotImplementedError`` saying what to do instead (smp.nn's modules give TP by hand).
"""

import contextlib
import warnings

import torch

from . import state as _state

_TP_NOT_BUILT = ("Hugging Face's automatic tensor parallelism from Python is not built yet; build the model "
                 "from smp.nn's Distributed* modules for tensor parallelism, or without it")


@contextlib.contextmanager
def model_creation(tensor_parallelism=False, dtype=None, delayed_param_initialization=False, **tp_config):
    """Modules created inside are built in ``dtype`` (floating types); see the module docstring."""
    if tensor_parallelism and _state.tp_size() > 1:
        raise NotImplementedError(f"smp.model_creation(tensor_parallelism=True): {_TP_NOT_BUILT}")
    if delayed_param_initialization:
        raise NotImplementedError("smp.model_creation(delayed_param_initialization=True) is not built in the "
                                  "Python front yet; smp-train builds sharded models from C++")
    if tp_config:
        warnings.warn(f"smp.model_creation: {sorted(tp_config)} have no effect without tensor parallelism")
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"smp.model_creation: dtype must be a floating torch.dtype, got {dtype!r}")
    saved = torch.get_default_dtype()
    if dtype is not None:
        torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(saved)


@contextlib.contextmanager
def tensor_parallelism(enabled=True, **tp_config):
    if enabled and _state.tp_size() > 1:
        raise NotImplementedError(f"smp.tensor_parallelism: {_TP_NOT_BUILT}")
    yield


def set_tensor_parallelism(module, enabled=True, **tp_config):
    if enabled and _state.tp_size() > 1:
        raise NotImplementedError(f"smp.set_tensor_parallelism: {_TP_NOT_BUILT}")


@contextlib.contextmanager
def delay_param_initialization(enabled=True):
    if enabled:
        raise NotImplementedError("smp.delay_param_initialization is not built in the Python front yet")
    yield


def tp_register(*args, **kwargs):
    raise NotImplementedError(f"smp.tp_register: {_TP_NOT_BUILT}")


def tp_register_with_module(*args, **kwargs):
    raise NotImplementedError(f"smp.tp_register_with_module: {_TP_NOT_BUILT}")
