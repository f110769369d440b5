"""SMP's activation checkpointing called from a module's forward:
``checkpoint(module, *args)`` and ``checkpoint_sequential(sequential, input, strategy)``.

Inside a DistributedModel the engine recomputes by module (set_activation_checkpointing): each
function marks the module it is given the first time the model's forward runs (the capture of
the first step, smp.is_tracing()), and then calls it as usual; the engine recomputes that module's
activations in backward from then on. The module must hold whole pipeline units (a
transformer block, not a Linear inside one), as set_activation_checkpointing requires; the
first step says so otherwise. Outside a DistributedModel (a plain process, or a module smp
does not run) they are torch.utils.checkpoint's.
"""

import math

import torch
import torch.utils.checkpoint as torch_checkpoint

from ..model import set_activation_checkpointing
from ..state import is_tracing, state

__all__ = ["checkpoint", "checkpoint_sequential"]


def _in_distributed_model(module):
    model = state.model
    return model is not None and any(m is module for m in model.module.modules())


def checkpoint(module, *args, preserve_rng_state=True, **kwargs):
    """``module(*args, **kwargs)``, its activations recomputed in backward."""
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"smp checkpoint: expected an nn.Module, got {type(module).__name__}")
    if _in_distributed_model(module):
        if is_tracing() and getattr(module, "_smp_checkpointing", None) is None:
            set_activation_checkpointing(module, preserve_rng_state=preserve_rng_state)
        return module(*args, **kwargs)
    return torch_checkpoint.checkpoint(module, *args, use_reentrant=False, preserve_rng_state=preserve_rng_state,
                                       **kwargs)


def _segments(count, strategy):
    """How many segments torch's checkpoint_sequential cuts ``count`` modules into."""
    if strategy == "each":
        return count
    if strategy == "contiguous":
        return 1
    if isinstance(strategy, str) and strategy.startswith("group_") and strategy[6:].isdigit() and int(strategy[6:]) > 0:
        return math.ceil(count / int(strategy[6:]))
    raise ValueError(f"smp checkpoint_sequential: strategy={strategy!r}; allowed: 'each', 'contiguous', 'group_<N>' "
                     "(N >= 1)")


def checkpoint_sequential(sequential, input, strategy="each", preserve_rng_state=True, pack_args_as_tuple=False):
    """``sequential(input)`` with its children checkpointed by ``strategy``: each child alone,
    all of them together (contiguous) or N at a time (group_N)."""
    if not isinstance(sequential, torch.nn.Sequential):
        raise TypeError(f"smp checkpoint_sequential: expected an nn.Sequential, got {type(sequential).__name__}")
    segments = _segments(len(sequential), strategy)
    if _in_distributed_model(sequential):
        if is_tracing() and getattr(sequential, "_smp_checkpointing", None) is None:
            set_activation_checkpointing(sequential, preserve_rng_state=preserve_rng_state,
                                         pack_args_as_tuple=pack_args_as_tuple, strategy=strategy)
        return sequential(*input) if pack_args_as_tuple else sequential(input)
    if pack_args_as_tuple:
        raise ValueError("smp checkpoint_sequential: pack_args_as_tuple needs the sequential inside a "
                         "DistributedModel (torch's checkpoint_sequential passes one input)")
    return torch_checkpoint.checkpoint_sequential(sequential, segments, input, use_reentrant=False,
                                                  preserve_rng_state=preserve_rng_state)
