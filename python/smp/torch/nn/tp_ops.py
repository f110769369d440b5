"""Tensor-parallel operations of smp.nn: Megatron's mappings as torch custom ops.

Each op is registered with torch.library (namespace ``smp``) with a fake (meta) kernel and an
autograd formula, so ``torch.export`` records it as one opaque node and the graphs the
DistributedModel's units run (graph_split.py) differentiate through it. The real kernels call
the engine's communicator of the TP group (``_C.all_reduce`` / ``_C.all_gather``); every call is
collective over the TP group, in the same order on each of its ranks.

  op (torch.ops.smp.*)   forward                       backward
  tp_copy                identity                      all-reduce (sum)      copy_to_tp
  tp_reduce              all-reduce (sum)              identity              reduce_from_tp
  tp_gather              all-gather along the last dim own slice             gather_from_tp
  tp_scatter             own slice of the last dim     all-gather            scatter_to_tp
  tp_max                 elementwise max over ranks    none (not differentiable)
  dropout_mask           a keep-mask scaled by 1/(1-p) none (not differentiable)
  gather_batch           all-gather along dim 0        own slice of dim 0, times tp
  split_batch            own slice of dim 0            all-gather along dim 0, over tp

The Python wrappers below (copy_to_tp, ...) skip the op entirely when tp_size() == 1 (the ops
themselves are identities then too), so a tp=1 model's graph is plain PyTorch.

gather_batch / split_batch are SMP's non-prescaled batch flow (config ``prescaled_batch`` false,
SMP's default): the ranks of a TP group hold different samples, and each distributed module
gathers the group's batch at entry ((B, ...) -> (tp * B, ...), group-rank order) and gives each
rank its own samples back at exit. The scales make every parameter's gradient the one of the
global mean loss: inside the region each rank computes on the group's batch, so split_batch's
backward (the group's output gradients over tp) gives the region's parameters the gradient of
the MEAN of the TP ranks' losses, and gather_batch's backward (times tp) hands the part outside
the region exactly its own samples' input gradient. The engine then averages sharded
parameters over RDP_GROUP and replicated ones over DP_GROUP (which holds the TP ranks), so each
parameter gets the gradient of the mean over the whole global batch, as one process on it
would. smp's C++ engine uses the same two ops and scales.

Also here: tp-independent initialisation (every rank draws the WHOLE tensor from torch's global
generator, as the tp=1 module would, and keeps its slice), the shard marker the engine reads
(``param._smp_tp_shard = (dim, whole size along dim)``), the dropout streams (Megatron's rule)
and the vocab-parallel cross-entropy.
"""

import contextlib
import math

import torch
from torch import Tensor

from smp._engine import _C

__all__ = ["tp_size", "tp_rank", "copy_to_tp", "reduce_from_tp", "gather_from_tp", "scatter_to_tp",
           "max_over_tp", "gather_batch", "split_batch", "merges_batch", "gather_batch_shaped", "shard_parameter",
           "DropoutStreams", "mask_vocab_padding", "vocab_parallel_cross_entropy"]


# --- the group --------------------------------------------------------------------------------


def tp_size():
    """The TP group's size; 1 before smp.init (the modules are then their own tp=1 reference)."""
    return _C.group_size(_C.CommGroup.TP_GROUP) if _C.is_initialized() else 1


def tp_rank():
    return _C.group_rank(_C.CommGroup.TP_GROUP) if _C.is_initialized() else 0


def check_divisible(what, value, tp=None):
    tp = tp_size() if tp is None else tp
    if value % tp != 0:
        raise ValueError(f"smp.nn: {what} ({value}) is not divisible by tensor_parallel_degree ({tp})")


_running_regions = [0]  # batch regions (nn/sharded.py) whose forward is running: they gathered already


@contextlib.contextmanager
def batch_region_running():
    """Inside: the input is already the TP group's batch, so merges_batch() is False."""
    _running_regions[0] += 1
    try:
        yield
    finally:
        _running_regions[0] -= 1


def merges_batch(skip=False):
    """Whether a distributed module gathers its TP group's batch at entry and splits it at exit:
    tp > 1 and the config's ``prescaled_batch`` false (SMP's default flow: the ranks of a TP group
    hold different samples), unless the module was made with ``_skip_scatter_and_merge`` (its
    input is already the group's batch and its output stays so) or runs inside a batch region
    that gathered already (batch_region_running). Read at each forward."""
    if skip or tp_size() == 1 or _running_regions[0]:
        return False
    from ..state import state  # noqa: PLC0415 (smp.torch imports this package first)

    return not state.cfg["prescaled_batch"]


# --- the collectives (no autograd) ------------------------------------------------------------


def _all_reduced(x):
    if tp_size() == 1:
        return x.clone()
    out = x.contiguous().clone()
    _C.all_reduce(out, _C.CommGroup.TP_GROUP)
    return out


def _stacked(x):
    """(tp, *x.shape): every rank's x in group-rank order."""
    if tp_size() == 1:
        return x.unsqueeze(0).clone()
    return _C.all_gather(x.contiguous(), _C.CommGroup.TP_GROUP)


def _gathered_last(x):
    tp = tp_size()
    if tp == 1:
        return x.clone()
    g = _stacked(x)  # (tp, ..., n)
    return torch.cat(list(g.unbind(0)), dim=-1)


def _own_slice_last(x):
    tp = tp_size()
    if tp == 1:
        return x.clone()
    n = x.size(-1) // tp
    return x.narrow(-1, tp_rank() * n, n).clone(memory_format=torch.contiguous_format)  # one copy


def _gathered_batch(x):
    """Every rank's x concatenated along dim 0 (group-rank order)."""
    if tp_size() == 1:
        return x.clone()
    return _stacked(x).flatten(0, 1)


def _own_slice_batch(x):
    tp = tp_size()
    if tp == 1:
        return x.clone()
    n = x.size(0) // tp
    return x.narrow(0, tp_rank() * n, n).clone(memory_format=torch.contiguous_format)


# --- the ops ----------------------------------------------------------------------------------


@torch.library.custom_op("smp::tp_copy", mutates_args=())
def _tp_copy(x: Tensor) -> Tensor:
    return x.clone()


@_tp_copy.register_fake
def _(x):
    return torch.empty_like(x)


_tp_copy.register_autograd(lambda ctx, grad: _all_reduced(grad))


@torch.library.custom_op("smp::tp_reduce", mutates_args=())
def _tp_reduce(x: Tensor) -> Tensor:
    return _all_reduced(x)


@_tp_reduce.register_fake
def _(x):
    return torch.empty_like(x)


_tp_reduce.register_autograd(lambda ctx, grad: grad)


@torch.library.custom_op("smp::tp_gather", mutates_args=())
def _tp_gather(x: Tensor) -> Tensor:
    return _gathered_last(x)


@_tp_gather.register_fake
def _(x):
    return x.new_empty((*x.shape[:-1], x.shape[-1] * tp_size()))


_tp_gather.register_autograd(lambda ctx, grad: _own_slice_last(grad))


@torch.library.custom_op("smp::tp_scatter", mutates_args=())
def _tp_scatter(x: Tensor) -> Tensor:
    check_divisible("the last dim of scatter_to_tp's input", x.size(-1))
    return _own_slice_last(x)


@_tp_scatter.register_fake
def _(x):
    return x.new_empty((*x.shape[:-1], x.shape[-1] // tp_size()))


_tp_scatter.register_autograd(lambda ctx, grad: _gathered_last(grad))


@torch.library.custom_op("smp::tp_max", mutates_args=())
def _tp_max(x: Tensor) -> Tensor:
    return _stacked(x).amax(0)


@_tp_max.register_fake
def _(x):
    return torch.empty_like(x)


@torch.library.custom_op("smp::gather_batch", mutates_args=())
def _gather_batch(x: Tensor) -> Tensor:
    return _gathered_batch(x)


@_gather_batch.register_fake
def _(x):
    return x.new_empty((x.shape[0] * tp_size(), *x.shape[1:]))


_gather_batch.register_autograd(lambda ctx, grad: _own_slice_batch(grad).mul_(tp_size()))


@torch.library.custom_op("smp::split_batch", mutates_args=())
def _split_batch(x: Tensor) -> Tensor:
    check_divisible("dim 0 of split_batch's input (the TP group's batch)", x.size(0))
    return _own_slice_batch(x)


@_split_batch.register_fake
def _(x):
    return x.new_empty((x.shape[0] // tp_size(), *x.shape[1:]))


_split_batch.register_autograd(lambda ctx, grad: _gathered_batch(grad).div_(tp_size()))


def copy_to_tp(x):
    """Enters a region whose ranks each use the whole x (column-parallel input)."""
    return x if tp_size() == 1 else torch.ops.smp.tp_copy(x)


def reduce_from_tp(x):
    """Leaves a region whose ranks each hold a partial sum (row-parallel output)."""
    return x if tp_size() == 1 else torch.ops.smp.tp_reduce(x)


def gather_from_tp(x):
    """Every rank's x concatenated along the last dim (group-rank order)."""
    return x if tp_size() == 1 else torch.ops.smp.tp_gather(x)


def scatter_to_tp(x):
    """This rank's slice of x's last dim (x the same on every rank)."""
    return x if tp_size() == 1 else torch.ops.smp.tp_scatter(x)


def max_over_tp(x):
    """Elementwise max over the group, not differentiable (x is detached)."""
    x = x.detach()
    return x if tp_size() == 1 else torch.ops.smp.tp_max(x)


def gather_batch(x):
    """The TP group's batch: every rank's x concatenated along dim 0, in group-rank order
    ((B, ...) -> (tp * B, ...)); the backward hands back this rank's slice times tp (see the
    module docstring). Every rank's x must have the same shape."""
    return x if tp_size() == 1 else torch.ops.smp.gather_batch(x)


def split_batch(x):
    """This rank's samples of the TP group's batch: its slice of dim 0 ((tp * B, ...) -> (B, ...));
    the backward all-gathers the gradient along dim 0 and divides it by tp."""
    return x if tp_size() == 1 else torch.ops.smp.split_batch(x)


def gather_batch_shaped(t, batch, min_dim=1):
    """gather_batch(t) where t is batch-shaped (a tensor of at least ``min_dim`` dims whose dim 0
    is ``batch``), else t unchanged: None, non-tensors, and broadcast tensors (dim 0 of 1 with a
    batch larger than 1, say a (1, 1, S, S) mask) apply to every sample as they are."""
    if isinstance(t, Tensor) and t.dim() >= max(1, min_dim) and t.size(0) == batch:
        return gather_batch(t)
    return t


# --- parameters -------------------------------------------------------------------------------


def shard_parameter(full, dim, whole=None):
    """A Parameter holding this rank's slice of ``full`` along ``dim`` (None: replicated, no
    marker). A sharded one carries ``_smp_tp_shard = (dim, whole size along dim)``; ``whole``
    overrides that size (a vocabulary padded to a multiple of tp: the rows that count)."""
    full = full.detach()
    if dim is None:
        return torch.nn.Parameter(full.clone())
    tp = tp_size()
    size = full.size(dim)
    check_divisible(f"dim {dim} of a sharded parameter", size, tp)
    n = size // tp
    p = torch.nn.Parameter(full.narrow(dim, tp_rank() * n, n).contiguous().clone())
    p._smp_tp_shard = (dim, size if whole is None else whole)
    return p


def uniform_full(shape, fan_in):
    """torch's default Linear draw (U(-1/sqrt(fan_in), 1/sqrt(fan_in))), the whole tensor."""
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    return torch.empty(shape).uniform_(-bound, bound)


def normal_full(shape, std):
    return torch.empty(shape).normal_(0.0, std)


# --- dropout ----------------------------------------------------------------------------------


def _mix(*values):
    """splitmix64 over the values: a 63-bit seed."""
    z = 0
    for v in values:
        z = (z + 0x9E3779B97F4A7C15 + (int(v) & 0xFFFFFFFFFFFFFFFF)) & 0xFFFFFFFFFFFFFFFF
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
        z ^= z >> 31
    return z & 0x7FFFFFFFFFFFFFFF


@torch.library.custom_op("smp::dropout_mask", mutates_args=("counter",))
def _dropout_mask(x: Tensor, p: float, seed: int, stream: int, sharded: bool, counter: Tensor) -> Tensor:
    # One generator per call, seeded from (module seed, stream, draw number[, tp rank]): the
    # replicated stream is the same on every rank of the group, the sharded one differs per rank.
    n = int(counter.item())
    counter.add_(1)
    gen = torch.Generator(device=x.device)
    gen.manual_seed(_mix(seed, stream, n, tp_rank() + 1) if sharded else _mix(seed, stream, n))
    keep = torch.empty(x.shape, dtype=x.dtype, device=x.device).bernoulli_(1.0 - p, generator=gen)
    return keep.mul_(1.0 / (1.0 - p))


@_dropout_mask.register_fake
def _(x, p, seed, stream, sharded, counter):
    return torch.empty_like(x)


def draw_seed():
    """One draw from the global generator (smp's C++ DropoutRng draws its seed the same way)."""
    return int(torch.empty(1, dtype=torch.long).random_().item())


class DropoutStreams(torch.nn.Module):
    """A module's dropout RNG (Megatron's rule, as smp's C++ DropoutRng): one seed drawn from the
    global generator at construction (the same on every rank, whatever tp), two streams:
    replicated (the same masks on every rank of the TP group: activations every rank holds
    whole) and sharded (different per TP rank: each rank's own attention heads). The number of
    masks drawn so far is a buffer, so checkpoints and a recompute of the forward draw the same
    masks again."""

    def __init__(self, seed=None, stream=0):
        super().__init__()
        self.seed = draw_seed() if seed is None else int(seed)
        self.stream = int(stream)  # modules sharing a seed draw from different streams
        self.register_buffer("draws", torch.zeros((), dtype=torch.long))

    def dropout(self, x, p, sharded):
        if not self.training or p == 0.0:
            return x
        if not 0.0 <= p < 1.0:
            raise ValueError(f"smp.nn: dropout probability {p}; allowed: [0, 1)")
        return x * torch.ops.smp.dropout_mask(x.detach(), float(p), self.seed, self.stream, bool(sharded),
                                                  self.draws)


# --- vocab-parallel cross-entropy -------------------------------------------------------------


def mask_vocab_padding(logits, vocab_size):
    """This rank's vocabulary slice of logits (..., n), its padding columns (>= vocab_size)
    set to -inf: never a class, never an argmax or a sample."""
    n = logits.size(-1)
    start = tp_rank() * n
    if start + n <= vocab_size:
        return logits
    return logits.masked_fill(torch.arange(n, device=logits.device) >= vocab_size - start, float("-inf"))


def vocab_parallel_cross_entropy(logits, labels, vocab_size):
    """Per-token cross-entropy over a vocabulary split across the TP group: ``logits`` (..., n)
    are this rank's columns [rank * n, (rank + 1) * n); columns >= vocab_size (padding) never
    count; labels < 0 give 0. The result is the same on every rank. Forward: one max and one
    all-reduce of two values per token; backward communicates nothing."""
    n = logits.size(-1)
    start = tp_rank() * n
    x = mask_vocab_padding(logits.float(), vocab_size)
    shifted = x - max_over_tp(x.amax(-1)).unsqueeze(-1)
    ignored = labels < 0
    local = labels - start
    mine = (local >= 0) & (local < n) & ~ignored
    index = local.masked_fill(~mine, 0).unsqueeze(-1)
    target = shifted.gather(-1, index).squeeze(-1).masked_fill(~mine, 0.0)
    stats = reduce_from_tp(torch.stack([shifted.exp().sum(-1), target]))
    return (stats[0].log() - stats[1]).masked_fill(ignored, 0.0)
