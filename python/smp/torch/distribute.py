"""What smp.DistributedModel does first with the marks model_creation.py leaves.

``distribute(root)`` (tensor_parallel_degree > 1): each module marked for tensor parallelism
(``_smp_tp``, a config) is, in this order of preference,
  - replaced by its smp.tp_register'ed distributed module, or
  - translated by its Hugging Face Plan (nn/huggingface): the children the plan names become
    their tensor-parallel forms (nn/sharded.py) and the attributes it names count local heads.
A module whose head counts or features do not divide by tp is left replicated, with a warning
(SMP skips such modules too). Tied parameters are sharded once and every reference to them is
rebound. Marked modules that own weight matrices with no translation on themselves or above
them are named in one warning: they stay replicated (correct, just not split).

Without ``prescaled_batch`` (SMP's default) the ranks of a TP group hold different samples:
each family's transformer block (a Plan with ``region=True``) becomes a batch region that
gathers the group's batch at entry and splits it at exit, and so does a translated module with
both column and row children outside any block (GPT-2's attention marked on its own); the
vocabulary embeddings and heads outside blocks do it themselves (nn/sharded.py). The rest of
the model runs data-parallel on each rank's own samples. With ``prescaled_batch`` no module
becomes a region.

``materialize(root, device)``: placeholders of delayed initialisation (meta tensors; with TP,
already this rank's shapes) become real tensors, initialised as the model initialises itself:
Hugging Face's ``_init_weights`` for a PreTrainedModel's modules, else ``reset_parameters``;
shards are drawn from a generator that differs per TP rank.
"""

import warnings

import torch

from .model_creation import registration_for
from .nn import tp_ops
from .nn.huggingface import plan_for
from .nn.sharded import batch_region, is_conv1d, shard_module

__all__ = ["distribute", "materialize"]


def distribute(root):
    """The tensor-parallel form of ``root`` (the same object, or its registered replacement)."""
    if tp_ops.tp_size() == 1:
        return root
    memo, untranslated = {}, {}
    # prescaled_batch: every rank of a TP group holds the same batch, so no block is a batch region
    root = _visit(root, "", False, memo, untranslated, not tp_ops.merges_batch())
    for m in root.modules():  # tied parameters: every holder gets the one shard
        for name, p in list(m._parameters.items()):
            if p is not None and id(p) in memo:
                m._parameters[name] = memo[id(p)][1]
    for cls, paths in untranslated.items():
        shown = ", ".join(f"'{p}'" for p in paths[:4]) + (f" and {len(paths) - 4} more" if len(paths) > 4 else "")
        warnings.warn(f"smp.tensor_parallelism: {cls} has no tensor-parallel translation ({shown}); it stays "
                      f"replicated on every rank of the TP group (register one with smp.tp_register_with_module)")
    return root


def _visit(module, path, under, memo, untranslated, region):
    """`under`: a translated module above; `region`: a batch region above (nn/sharded.py), or no
    region needed (prescaled_batch)."""
    config = module.__dict__.get("_smp_tp")
    if isinstance(config, dict):
        registered = registration_for(module)
        if registered is not None:
            return _registered(module, path, registered, config)
        plan = plan_for(module)
        if plan is not None and plan.region and not region:
            batch_region(module)
            region = True
        if plan is not None and (plan.column or plan.row or plan.vocab or plan.head or not plan.region):
            translated = _translate(module, path, plan, config, memo, region)
            region = region or (translated and bool(plan.column) and bool(plan.row))  # made a region there
            under = translated or under
        elif not under and any(p.dim() >= 2 and not hasattr(p, "_smp_tp_shard")
                               for p in module._parameters.values() if p is not None):
            untranslated.setdefault(type(module).__name__, []).append(path or type(module).__name__)
    for name, child in list(module._modules.items()):
        if child is not None:
            new = _visit(child, f"{path}.{name}" if path else name, under, memo, untranslated, region)
            if new is not child:
                module._modules[name] = new
    return module


def _get(module, path):
    for part in path.split("."):
        module = getattr(module, part)
    return module


def _translate(module, path, plan, config, memo, region):
    """Applies `plan` to `module`'s children; False (and a warning) when it does not divide. A
    module with column and row children outside a batch region becomes one itself."""
    tp = tp_ops.tp_size()
    where = f"'{path}' ({type(module).__name__})" if path else type(module).__name__
    bad = [f"{a} = {_get(module, a)}" for a in plan.heads if _get(module, a) % tp]
    stacked = dict(plan.stacked)
    for name in plan.column:
        child = getattr(module, name)
        out = child.weight.shape[1 if is_conv1d(child) else 0] // stacked.get(name, 1)
        if out % tp:
            bad.append(f"{name}'s {out} output features")
    for name in plan.row:
        child = getattr(module, name)
        features = child.weight.shape[0 if is_conv1d(child) else 1]
        if features % tp:
            bad.append(f"{name}'s {features} input features")
    if bad:
        warnings.warn(f"smp.tensor_parallelism: {where} stays replicated: {', '.join(bad)} not divisible by "
                      f"tensor_parallel_degree {tp}")
        return False
    forms = [(n, "column", False) for n in plan.column] + [(n, "row", False) for n in plan.row]
    if config.get("distribute_embedding", True):
        forms += [(n, "vocab", False) for n in plan.vocab] + [(n, "column", True) for n in plan.head]
    if not region and plan.column and plan.row:
        batch_region(module)
        region = True
    for name, form, gather in forms:
        module._modules[name] = shard_module(getattr(module, name), form, memo, stack=stacked.get(name, 1),
                                             gather=gather)
    for attr in plan.local:
        setattr(module, attr, getattr(module, attr) // tp)
    return True


class _Registered(torch.nn.Module):
    """A tp_register'ed distributed module with the registration's forward and return hooks."""

    def __init__(self, module, forward_hook, return_hook):
        super().__init__()
        self.module = module
        self._forward_hook, self._return_hook = forward_hook, return_hook

    def forward(self, *args, **kwargs):
        if self._forward_hook is not None:
            args, kwargs = self._forward_hook(*args, **kwargs)
        out = self.module(*args, **kwargs)
        return out if self._return_hook is None else self._return_hook(out)


def _registered(module, path, registered, config):
    dist_cls, init_hook, forward_hook, return_hook = registered
    init = module.__dict__.get("_smp_init_args")
    if init is None:
        raise RuntimeError(f"smp.tp_register: '{path or type(module).__name__}' ({type(module).__name__}) was "
                           "created before its class was registered; register it before creating the model")
    args, kwargs = init
    if init_hook is not None:
        args, kwargs = init_hook(*args, **kwargs)
    dist = dist_cls(*args, **{**kwargs, **config})
    new = dist if forward_hook is None and return_hook is None else _Registered(dist, forward_hook, return_hook)
    for mark in ("_smp_partition", "_smp_checkpointing"):
        if mark in module.__dict__:
            setattr(new, mark, module.__dict__[mark])
    return new


# --- delayed initialisation ---------------------------------------------------------------


def materialize(root, device):
    """Allocates and initialises ``root``'s meta parameters (see the module docstring)."""
    fresh = {}
    for path, m in root.named_modules(remove_duplicate=False):
        for name, b in m._buffers.items():
            if b is not None and b.is_meta:
                raise RuntimeError(f"smp.delay_param_initialization: buffer '{path}.{name}' was created with "
                                   "torch.empty and has no values; build buffers with torch.zeros / ones / arange")
        for name, p in list(m._parameters.items()):
            if p is None or not p.is_meta:
                continue
            if id(p) not in fresh:
                new = torch.nn.Parameter(torch.zeros(p.shape, dtype=p.dtype, device=device),
                                         requires_grad=p.requires_grad)
                for attr in ("_smp_tp_shard", "_smp_hf_shape"):
                    if hasattr(p, attr):
                        setattr(new, attr, getattr(p, attr))
                fresh[id(p)] = (p, new)
            m._parameters[name] = fresh[id(p)][1]
    if not fresh:
        return
    mine = {id(new) for _, new in fresh.values()}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(torch.initial_seed() + 7919 * tp_ops.tp_rank())
        with torch.no_grad():
            _initialise(root, None, mine)


def _initialise(module, owner, fresh):
    """Post-order (children first, as Hugging Face's init runs): each module whose subtree
    holds fresh parameters is initialised by its PreTrainedModel's _init_weights, else (it
    holds fresh parameters itself) by its reset_parameters."""
    if hasattr(module, "_init_weights") and hasattr(module, "config"):
        owner = module
    for child in module.children():
        _initialise(child, owner, fresh)
    if not any(id(p) in fresh for p in module.parameters()):
        return
    if owner is not None:
        owner._init_weights(module)
    elif any(id(p) in fresh for p in module.parameters(recurse=False)):
        if not hasattr(module, "reset_parameters"):
            raise RuntimeError(f"smp.delay_param_initialization: {type(module).__name__} has parameters made with "
                               "torch.empty and no reset_parameters to initialise them")
        module.reset_parameters()
