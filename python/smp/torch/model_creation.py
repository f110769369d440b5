"""SMP's model-creation API: ``smp.model_creation``, ``smp.tensor_parallelism``,
``smp.set_tensor_parallelism``, ``smp.delay_param_initialization``, ``smp.tp_register`` and
``smp.tp_register_with_module``.

These only mark: a module created inside an enabled ``tensor_parallelism`` context (or marked by
``set_tensor_parallelism``) carries ``_smp_tp`` (its tensor-parallel config); a module created
under delayed initialisation has its ``torch.empty`` weights as placeholders on the meta device.
What the marks mean happens when ``smp.DistributedModel`` wraps the model (distribute.py):
marked modules with a translation become tensor-parallel, placeholders become this rank's
shards, initialised there.
"""

import contextlib
import warnings

import torch
from torch.overrides import TorchFunctionMode

__all__ = ["model_creation", "tensor_parallelism", "set_tensor_parallelism", "delay_param_initialization",
           "tp_register", "tp_register_with_module", "registration_for"]

# SMP's model_creation keywords that configure its own distributed transformer kernels; the
# translated modules run the model's own code, so these change nothing (named in a warning).
_KERNEL_KEYS = ("attention_in_fp32", "query_key_layer_scaling", "fused_softmax", "fused_bias_gelu", "fused_dropout",
                "flash_attention", "fp32_residual_addition", "use_alibi")
_CONFIG_KEYS = ("distribute_embedding",)  # honoured: False leaves embeddings and heads replicated

_tp_stack = []  # the enabled contexts' configs (None: a disabled context inside)


def _mark(module, *_):
    if _tp_stack and "_smp_tp" not in module.__dict__:
        module._smp_tp = _tp_stack[-1]


torch.nn.modules.module.register_module_parameter_registration_hook(_mark)
torch.nn.modules.module.register_module_module_registration_hook(_mark)
torch.nn.modules.module.register_module_buffer_registration_hook(_mark)


def _check_config(where, tp_config):
    """Warns about keys that change nothing for Hugging Face translations; the config itself
    also reaches tp_register'ed modules, which take what they know."""
    for key, value in tp_config.items():
        if key in _KERNEL_KEYS and value:
            warnings.warn(f"smp.{where}: {key}={value!r} has no effect on Hugging Face translations (the model's "
                          "own attention and MLP code runs, split over the TP group)")
        elif key not in _KERNEL_KEYS + _CONFIG_KEYS:
            warnings.warn(f"smp.{where}: {key}={value!r} is passed to smp.tp_register'ed modules only; Hugging Face "
                          f"translations take {', '.join(_CONFIG_KEYS)} (and accept {', '.join(_KERNEL_KEYS)})")
    return dict(tp_config)


@contextlib.contextmanager
def tensor_parallelism(enabled=True, **tp_config):
    """Modules created inside are made tensor-parallel when smp.DistributedModel wraps the model
    (those with a translation; the others stay replicated, named in a warning). ``tp_config``
    reaches smp.tp_register's distributed modules as keyword arguments."""
    _tp_stack.append(_check_config("tensor_parallelism", tp_config) if enabled else None)
    try:
        yield
    finally:
        _tp_stack.pop()


_tp_context = tensor_parallelism  # (model_creation's argument has the same name)


def set_tensor_parallelism(module, enabled=True, **tp_config):
    """Marks ``module`` and its submodules as created under tensor_parallelism(enabled)."""
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"smp.set_tensor_parallelism: expected an nn.Module, got {type(module).__name__}")
    config = _check_config("set_tensor_parallelism", tp_config) if enabled else None
    for m in module.modules():
        m._smp_tp = config


class _EmptyOnMeta(TorchFunctionMode):
    """torch.empty without a device makes a meta tensor: how nn.Linear, nn.Embedding, LayerNorm
    and Conv1D allocate their weights before initialising them. Other factories (the ones,
    aranges and trils buffers are built from) still make real tensors."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.empty and kwargs.get("device") is None:
            kwargs = dict(kwargs, device="meta")
        return func(*args, **kwargs)


@contextlib.contextmanager
def delay_param_initialization(enabled=True):
    """Weights of modules created inside are not allocated: smp.DistributedModel allocates
    this rank's shards and initialises them (Hugging Face's _init_weights, else the modules'
    reset_parameters), so a model too big for one rank is never whole on one."""
    if not enabled:
        yield
        return
    with _EmptyOnMeta():
        yield


@contextlib.contextmanager
def model_creation(tensor_parallelism=False, dtype=None, delayed_param_initialization=False, zero_init=False,
                   **tp_config):
    """``tensor_parallelism`` and ``delay_param_initialization`` (also asked for by SMP's
    ``zero_init``) in one context; modules are built in ``dtype`` (a floating torch.dtype)."""
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"smp.model_creation: dtype must be a floating torch.dtype, got {dtype!r}")
    saved = torch.get_default_dtype()
    with contextlib.ExitStack() as stack:
        stack.enter_context(_tp_context(bool(tensor_parallelism), **tp_config))
        stack.enter_context(delay_param_initialization(bool(delayed_param_initialization or zero_init)))
        if dtype is not None:
            torch.set_default_dtype(dtype)
        try:
            yield
        finally:
            torch.set_default_dtype(saved)


# --- registration ---------------------------------------------------------------------------

_registry = {}  # module class -> (dist_cls, init_hook, forward_hook, return_hook)


def tp_register_with_module(module_cls, dist_module, init_hook=None, forward_hook=None, return_hook=None):
    """Instances of ``module_cls`` created under tensor_parallelism are replaced, at wrap time,
    by ``dist_module(*args, **kwargs)`` where ``(args, kwargs) = init_hook(<module_cls's
    constructor arguments>)`` (the same arguments without a hook), plus the context's
    tp_config. Its forward takes ``forward_hook(<the module's call arguments>)`` and its output
    goes through ``return_hook``. The replacement draws new weights (SMP: load after wrapping)."""
    if not (isinstance(module_cls, type) and issubclass(module_cls, torch.nn.Module)):
        raise TypeError(f"smp.tp_register_with_module: module_cls must be an nn.Module class, got {module_cls!r}")
    if not callable(dist_module):
        raise TypeError(f"smp.tp_register_with_module: dist_module must be a class, got {dist_module!r}")
    for name, hook in (("init_hook", init_hook), ("forward_hook", forward_hook), ("return_hook", return_hook)):
        if hook is not None and not callable(hook):
            raise TypeError(f"smp.tp_register_with_module: {name} must be callable or None, got {hook!r}")
    if "_smp_init" not in module_cls.__dict__:  # keep each instance's constructor arguments
        original = module_cls.__init__

        def __init__(self, *args, **kwargs):
            if "_smp_init_args" not in self.__dict__:
                self.__dict__["_smp_init_args"] = (args, kwargs)
            original(self, *args, **kwargs)

        module_cls.__init__ = __init__
        module_cls._smp_init = True
    _registry[module_cls] = (dist_module, init_hook, forward_hook, return_hook)


def tp_register(dist_module, init_hook=None, forward_hook=None, return_hook=None):
    """Class decorator: ``@smp.tp_register(DistModule, ...)`` on a module class is
    ``tp_register_with_module(that class, DistModule, ...)``."""

    def register(module_cls):
        tp_register_with_module(module_cls, dist_module, init_hook, forward_hook, return_hook)
        return module_cls

    return register


def registration_for(module):
    """(dist_cls, init_hook, forward_hook, return_hook) registered for the module's class or a
    base class of it, or None."""
    for cls in type(module).__mro__:
        if cls in _registry:
            return _registry[cls]
    return None
