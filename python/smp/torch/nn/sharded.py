"""Tensor-parallel forms of existing dense layers: ``nn.Linear``, transformers' ``Conv1D``
(GPT-2's, weight stored (in, out)) and ``nn.Embedding``, made from a built module in its place.

``shard_module(module, form, ...)`` returns a module whose class is a subclass of the module's
own (isinstance still holds, so Hugging Face's ``_init_weights`` and users' checks see a Linear,
a Conv1D or an Embedding) holding this rank's slices of its parameters, each marked
``_smp_tp_shard = (dim, whole size)`` as smp.nn's are. The forms (Megatron's):

  column  output features split: y_r = x W_r^T + b_r (this rank's features; whole when gather)
  row     input features split: y = sum_r x_r W_r^T + b (bias replicated, added once)
  vocab   an embedding split by rows (vocabulary), padded to a multiple of tp; lookups of other
          ranks' rows give zeros, the outputs are summed over the group

``stack = k``: the output features are k projections side by side (GPT-2's c_attn: q | k | v);
each is split, so this rank keeps its heads of each. The parameter is then held with the stack
as its own dimension (c_attn.weight (in, 3, hidden) rather than (in, 3 * hidden)), so its shard
is one contiguous slice; ``_smp_hf_shape`` records the module's own shape, which state dicts and
full checkpoints give back.

A parameter shared by several modules (a tied embedding and head) is sharded once: ``memo``
maps the original's id to (original, shard), and both modules hold the same shard.

Without ``prescaled_batch`` (SMP's default: the ranks of a TP group hold different samples),
each rank must run a sharded weight on the whole TP group's batch (tp_ops.gather_batch at the
entry of a region, tp_ops.split_batch at its exit). Where that happens:

- ``batch_region(module)`` (a Plan with ``region=True``: a transformer block) makes the block
  one region: its forward gathers every batch-shaped argument (a tensor of 2 dims or more whose
  dim 0 is the hidden states' batch: hidden states, masks, position ids and rotary tables with
  a batch dim; a dim 0 of 1 with a larger batch is a broadcast and stays) and splits every
  batch-shaped output (dim 0 the group's batch, 2 dims or more). While it runs, nothing inside
  gathers again (tp_ops.batch_region_running: column and row forms, smp.nn modules a
  tp_register put there): the activations between a column and a row form are split by heads
  or features, and the code of the block between them (attention) must see the same samples
  on every rank.
- A vocab form or a gathered (head) form outside a region is a region of its own: its input and
  output are whole over features, and it is a function of each row of dim 0 alone.
- A column or row form outside any region cannot be run so (its output or input is this
  rank's features of this rank's samples only) and raises at its first forward.
"""

import torch
import torch.nn.functional as F

from . import tp_ops
from .tp_ops import copy_to_tp, gather_from_tp, reduce_from_tp

__all__ = ["shard_module", "batch_region", "vocab_lookup", "is_conv1d", "is_batch_region", "is_sharded_form"]

_FORMS = ("column", "row", "vocab")


def is_conv1d(module):
    """transformers' Conv1D (weight (in, out)), found by name so transformers is not imported."""
    return any(c.__name__ == "Conv1D" and c.__module__.startswith("transformers.") for c in type(module).__mro__)


def vocab_lookup(ids, weight, padding_idx=None):
    """Rows of an embedding split by rows over the TP group (rank r holds [r * n, (r + 1) * n)):
    ids outside this rank's rows give zeros; the result, summed over the group, is whole."""
    if tp_ops.tp_size() == 1:
        return F.embedding(ids, weight, padding_idx)
    n = weight.size(0)
    start = tp_ops.tp_rank() * n
    outside = (ids < start) | (ids >= start + n)
    rows = F.embedding((ids - start).masked_fill(outside, 0), weight, padding_idx)
    return reduce_from_tp(rows.masked_fill(outside.unsqueeze(-1), 0.0))


class _Sharded:
    """The forward of the tensor-parallel forms (mixed in before the module's own class)."""

    def forward(self, x):
        if not tp_ops.merges_batch():  # (prescaled, or inside a batch region)
            return self._smp_forward(x)
        if self._smp_form != "vocab" and not self._smp_gather:
            raise RuntimeError(
                f"smp.tensor_parallelism: a {self._smp_form}-parallel {type(self).__mro__[2].__name__} outside a "
                "batch region: with prescaled_batch false its enclosing block must gather the TP group's batch "
                "(a Plan with region=True in smp/torch/nn/huggingface) or the config needs \"prescaled_batch\": true")
        if x.dim() < (1 if self._smp_form == "vocab" else 2):
            return self._smp_forward(x)
        return tp_ops.split_batch(self._smp_forward(tp_ops.gather_batch(x)))

    def _smp_forward(self, x):
        form = self._smp_form
        if form == "vocab":
            return vocab_lookup(x, self.weight, self.padding_idx)
        w = self.weight
        if self._smp_stack > 1:  # (stack, n, in) or (in, stack, n) -> the module's 2-D layout
            w = w.reshape(-1, w.shape[-1]) if not self._smp_conv1d else w.reshape(w.shape[0], -1)
        if self._smp_conv1d:
            w = w.t()
        if form == "row":
            y = reduce_from_tp(F.linear(x, w))
            return y if self.bias is None else y + self.bias
        b = None if self.bias is None else self.bias.reshape(-1)
        y = F.linear(copy_to_tp(x), w, b)
        if not self._smp_gather:
            return y
        y = gather_from_tp(y)
        whole = self._smp_whole_out
        return y if y.shape[-1] == whole else y.narrow(-1, 0, whole)

    def extra_repr(self):
        return f"{super().extra_repr()}, tensor_parallel={self._smp_form}, tp={tp_ops.tp_size()}"


_CLASSES = {}


class _BatchRegion:
    """The forward of a block made a batch region (mixed in before the block's own class)."""

    def forward(self, *args, **kwargs):
        if not tp_ops.merges_batch():
            return super().forward(*args, **kwargs)
        first = args[0] if args else kwargs.get("hidden_states")
        if not isinstance(first, torch.Tensor) or first.dim() < 2:
            raise TypeError(f"smp.tensor_parallelism: {type(self).__mro__[2].__name__} is a batch region and takes "
                            "its hidden states (batch first) as its first argument or as hidden_states")
        b = first.shape[0]
        args = _map_tensors(args, lambda t: tp_ops.gather_batch_shaped(t, b, min_dim=2))
        kwargs = _map_tensors(kwargs, lambda t: tp_ops.gather_batch_shaped(t, b, min_dim=2))
        with tp_ops.batch_region_running():
            out = super().forward(*args, **kwargs)
        group = b * tp_ops.tp_size()
        return _map_tensors(out, lambda t: tp_ops.split_batch(t) if t.dim() >= 2 and t.shape[0] == group else t)


def _map_tensors(obj, fn):
    """fn applied to every tensor in obj (tuples, lists and dicts, nested); anything else as is."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, tuple):
        items = [_map_tensors(o, fn) for o in obj]
        return type(obj)(*items) if hasattr(obj, "_fields") else tuple(items)  # (a namedtuple's own type)
    if isinstance(obj, list):
        return [_map_tensors(o, fn) for o in obj]
    if type(obj) is dict:
        return {k: _map_tensors(v, fn) for k, v in obj.items()}
    return obj


_REGIONS = {}


def batch_region(module):
    """Makes ``module`` (in place: its class becomes a subclass of its own) gather the TP group's
    batch at entry and split it at exit when prescaled_batch is false (the module docstring)."""
    cls = type(module)
    if issubclass(cls, _BatchRegion):
        return module
    if cls not in _REGIONS:
        _REGIONS[cls] = type(f"BatchRegion{cls.__name__}", (_BatchRegion, cls), {"__module__": __name__})
    module.__class__ = _REGIONS[cls]
    return module


def is_batch_region(module):
    """Whether batch_region made ``module`` a region."""
    return isinstance(module, _BatchRegion)


def is_sharded_form(module):
    """Whether ``module`` is a tensor-parallel form made by shard_module."""
    return isinstance(module, _Sharded)


def _sharded_class(cls):
    if cls not in _CLASSES:
        _CLASSES[cls] = type(f"TensorParallel{cls.__name__}", (_Sharded, cls), {"__module__": __name__})
    return _CLASSES[cls]


def _shard(p, dim, memo, pad_to=None, hf_shape=None, stack_shape=None):
    """This rank's Parameter of `p` split along `dim` (memoised by identity: tied parameters
    stay tied). `stack_shape` first views p with the stack as a dimension; `pad_to` pads dim
    with zero rows (a vocabulary) and `whole` is then the size that counts."""
    old = memo.get(id(p), (None, None))[1]
    if old is not None:
        if getattr(old, "_smp_tp_shard", (None,))[0] != dim:
            raise ValueError(f"smp.tensor_parallelism: a parameter shared by two modules is split along dim "
                             f"{old._smp_tp_shard[0]} by one and {dim} by the other; leave one module replicated")
        return old
    full = p.detach()
    if stack_shape is not None:
        full = full.reshape(stack_shape)
    size = full.shape[dim]
    if pad_to is not None and pad_to > size:
        pad = list(full.shape)
        pad[dim] = pad_to - size
        full = torch.cat([full, full.new_zeros(pad)], dim=dim)
    new = tp_ops.shard_parameter(full, dim, whole=size)
    new.requires_grad_(p.requires_grad)
    if hf_shape is not None:
        new._smp_hf_shape = tuple(hf_shape)
    memo[id(p)] = (p, new)  # the original is kept: its id is not reused while memo lives
    return new


def shard_module(module, form, memo, stack=1, gather=False):
    """The tensor-parallel form of `module` (see the module docstring): a new module object of
    a subclass of its class, sharing its attributes, with this rank's slices as parameters.
    Divisibility is the caller's to check (a padded vocabulary excepted)."""
    if form not in _FORMS:
        raise ValueError(f"smp.nn.sharded: form {form!r}; allowed: {', '.join(_FORMS)}")
    conv1d = is_conv1d(module)
    new = _sharded_class(type(module)).__new__(_sharded_class(type(module)))
    new.__dict__.update(module.__dict__)
    new._parameters = dict(module._parameters)
    new._smp_form, new._smp_stack, new._smp_conv1d, new._smp_gather = form, stack, conv1d, gather
    tp = tp_ops.tp_size()
    w, b = module.weight, getattr(module, "bias", None)
    if form == "vocab":
        rows = w.shape[0]
        new.weight = _shard(w, 0, memo, pad_to=-(-rows // tp) * tp)
        pad = module.padding_idx
        start = tp_ops.tp_rank() * new.weight.shape[0]
        new.padding_idx = pad - start if pad is not None and start <= pad < start + new.weight.shape[0] else None
        return new
    out_dim = 1 if conv1d else 0
    out = w.shape[out_dim]
    new._smp_whole_out = out
    if form == "row":
        new.weight = _shard(w, 0 if conv1d else 1, memo)
        return new
    if stack > 1:
        n = out // stack
        shape = (w.shape[0], stack, n) if conv1d else (stack, n, w.shape[1])
        new.weight = _shard(w, out_dim + 1, memo, hf_shape=w.shape, stack_shape=shape)
        if b is not None:
            new.bias = _shard(b, 1, memo, hf_shape=b.shape, stack_shape=(stack, n))
        return new
    padded = -(-out // tp) * tp if gather else None  # a vocabulary head may not divide by tp
    new.weight = _shard(w, out_dim, memo, pad_to=padded)
    if b is not None:
        new.bias = _shard(b, 0, memo, pad_to=padded)
    return new
