"""smp.nn.DistributedLinear and DistributedEmbedding, and the column-/row-parallel linears and
the vocab-parallel embedding the transformer modules are built from.

Sizes are global (whole); each module splits itself over the TP group (smp.tp_size()). Every
parameter is drawn WHOLE from torch's global generator, as the tp=1 module draws it, and each
rank keeps its slice, marked ``_smp_tp_shard = (dim, whole size)``; replicated parameters carry
no marker. Input and output are whole activations. With ``prescaled_batch`` they are the same on
every rank of the TP group; without it (SMP's default) each rank holds its own samples, and
DistributedLinear and DistributedEmbedding gather the group's batch at entry and return each
rank its own samples (tp_ops.gather_batch / split_batch), unless made with
``_skip_scatter_and_merge``. The column-/row-parallel pieces below never do: the module that
holds them does it once at its boundary.
"""

import math
import warnings

import torch
import torch.nn.functional as F

from . import tp_ops
from .sharded import vocab_lookup
from .tp_ops import copy_to_tp, gather_from_tp, reduce_from_tp, shard_parameter

__all__ = ["DistributedLinear", "DistributedEmbedding"]


class DistributedLinear(torch.nn.Module):
    """SMP's DistributedLinear: ``torch.nn.Linear(in_features, out_features)`` split along
    out_features (column-parallel, output all-gathered): input and output are whole and equal
    nn.Linear's. Initialised as nn.Linear (the same draws from the global seed). ``bias`` is
    an smp extension (SMP's has always a bias). Not prescaled: an input of 2 dims or more is
    gathered over the TP group along dim 0 and the output split back (module docstring)."""

    def __init__(self, in_features, out_features, bias=True, _skip_scatter_and_merge=False):
        super().__init__()
        tp_ops.check_divisible("DistributedLinear: out_features", out_features)
        self.in_features, self.out_features = in_features, out_features
        self.skip_scatter_and_merge = bool(_skip_scatter_and_merge)
        w = torch.empty(out_features, in_features)
        torch.nn.init.kaiming_uniform_(w, a=math.sqrt(5))  # nn.Linear.reset_parameters, exactly
        self.weight = shard_parameter(w, 0)
        if bias:
            b = tp_ops.uniform_full((out_features,), in_features)
            self.bias = shard_parameter(b, 0)
        else:
            self.register_parameter("bias", None)

    def forward(self, x):
        merge = x.dim() >= 2 and tp_ops.merges_batch(self.skip_scatter_and_merge)
        if merge:
            x = tp_ops.gather_batch(x)
        y = gather_from_tp(F.linear(copy_to_tp(x), self.weight, self.bias))
        return tp_ops.split_batch(y) if merge else y

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, tp={tp_ops.tp_size()}"


class DistributedEmbedding(torch.nn.Module):
    """SMP's DistributedEmbedding: ``torch.nn.Embedding`` split along embedding_dim (every rank
    holds all rows and embedding_dim / tp columns); the output is all-gathered to (..., dim)
    unless ``_skip_allgather`` (then (..., dim / tp), this rank's columns). Initialised
    N(0, initializer_range) with the padding row zeroed, or from ``_weight`` (the whole
    initial weight). Not prescaled: ids (of 1 dim or more) are gathered over the TP group along
    dim 0 and the output split back, unless ``_skip_scatter_and_merge``; ``_skip_allgather``
    then needs ``_skip_scatter_and_merge`` too (a rank's columns of its own samples alone: the
    other columns of those samples are on no rank, and split_batch's backward needs every rank
    to hold the same columns)."""

    def __init__(self, num_embeddings, embedding_dim, padding_idx=None, max_norm=None, norm_type=2.0,
                 scale_grad_by_freq=False, sparse=False, _weight=None, initializer_range=0.02,
                 _skip_allgather=False, _skip_scatter_and_merge=False):
        super().__init__()
        if max_norm is not None:
            raise NotImplementedError("smp.nn.DistributedEmbedding: max_norm is not implemented (a row's norm spans "
                                      "every TP rank's columns); allowed: None")
        if sparse:
            raise NotImplementedError("smp.nn.DistributedEmbedding: sparse=True is not implemented; allowed: False")
        tp_ops.check_divisible("DistributedEmbedding: embedding_dim", embedding_dim)
        if padding_idx is not None:
            if not -num_embeddings <= padding_idx < num_embeddings:
                raise ValueError(f"smp.nn.DistributedEmbedding: padding_idx {padding_idx} is out of range "
                                 f"for num_embeddings {num_embeddings}")
            padding_idx = padding_idx % num_embeddings
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.padding_idx = padding_idx
        self.norm_type = norm_type  # only matters with max_norm, which is refused
        self.scale_grad_by_freq = bool(scale_grad_by_freq)
        self.skip_allgather = bool(_skip_allgather)
        self.skip_scatter_and_merge = bool(_skip_scatter_and_merge)
        if self.skip_allgather and tp_ops.merges_batch(self.skip_scatter_and_merge):
            raise ValueError("smp.nn.DistributedEmbedding: _skip_allgather=True needs _skip_scatter_and_merge=True "
                             "when prescaled_batch is false (a rank would hold its own samples' slice of the columns "
                             "only); pass both and feed the TP group's batch, or set \"prescaled_batch\": true")
        if _weight is not None:
            if tuple(_weight.shape) != (num_embeddings, embedding_dim):
                raise ValueError(f"smp.nn.DistributedEmbedding: _weight has shape {tuple(_weight.shape)}; "
                                 f"allowed: ({num_embeddings}, {embedding_dim})")
            full = _weight.detach().float()
        else:
            full = tp_ops.normal_full((num_embeddings, embedding_dim), initializer_range)
            if padding_idx is not None:
                full[padding_idx].zero_()
        self.weight = shard_parameter(full, 1)

    def forward(self, ids):
        merge = ids.dim() >= 1 and tp_ops.merges_batch(self.skip_scatter_and_merge)
        if merge:
            ids = tp_ops.gather_batch(ids)
        rows = F.embedding(ids, self.weight, self.padding_idx, None, 2.0, self.scale_grad_by_freq, False)
        rows = rows if self.skip_allgather else gather_from_tp(rows)
        return tp_ops.split_batch(rows) if merge else rows

    def extra_repr(self):
        return f"{self.num_embeddings}, {self.embedding_dim}, tp={tp_ops.tp_size()}"


# --- the pieces of the transformer (not SMP names) --------------------------------------------


class ColumnParallelLinear(torch.nn.Module):
    """y = x W^T + b with W (stack, out, in) split along out: this rank's out / tp outputs of
    each of the ``stack`` projections (3 for Q, K, V). The input is whole (enters through
    copy_to_tp); the output (..., stack * out / tp) stays split."""

    def __init__(self, in_features, out_features, init_std=None, stack=1, bias=True):
        super().__init__()
        tp_ops.check_divisible("out_features", out_features)
        self.in_features, self.stack = in_features, stack
        shape = (stack, out_features, in_features) if stack > 1 else (out_features, in_features)
        b_shape = shape[:-1]
        dim = 1 if stack > 1 else 0
        if init_std is None:
            w = tp_ops.uniform_full(shape, in_features)
            b = tp_ops.uniform_full(b_shape, in_features) if bias else None
        else:
            w = tp_ops.normal_full(shape, init_std)
            b = torch.zeros(b_shape) if bias else None
        self.weight = shard_parameter(w, dim)
        self.bias = shard_parameter(b, dim) if bias else None

    def forward(self, x):
        w = self.weight.reshape(-1, self.in_features) if self.stack > 1 else self.weight
        b = self.bias.reshape(-1) if self.bias is not None and self.stack > 1 else self.bias
        return F.linear(copy_to_tp(x), w, b)


class RowParallelLinear(torch.nn.Module):
    """y = x W^T (+ b) with W (out, in) split along in: x is this rank's slice of in; the
    partial products are summed over the group (reduce_from_tp). The bias is replicated and
    left to the caller (``bias``), as smp's C++ layers do."""

    def __init__(self, in_features, out_features, init_std=None, bias=True):
        super().__init__()
        tp_ops.check_divisible("in_features", in_features)
        if init_std is None:
            w = tp_ops.uniform_full((out_features, in_features), in_features)
            b = tp_ops.uniform_full((out_features,), in_features) if bias else None
        else:
            w = tp_ops.normal_full((out_features, in_features), init_std)
            b = torch.zeros(out_features) if bias else None
        self.weight = shard_parameter(w, 1)
        self.bias = shard_parameter(b, None) if bias else None

    def forward(self, x):
        return reduce_from_tp(F.linear(x, self.weight))


class VocabParallelEmbedding(torch.nn.Module):
    """Embedding with the vocabulary split across the group (rows [r * V/tp, (r+1) * V/tp) on
    rank r); a vocabulary that does not divide by tp is padded with zero rows (Megatron's way).
    The output is whole (the ranks' partial lookups summed)."""

    def __init__(self, num_embeddings, embedding_dim, init_std):
        super().__init__()
        tp = tp_ops.tp_size()
        self.vocab_size = num_embeddings
        self.padded_vocab_size = -(-num_embeddings // tp) * tp
        full = tp_ops.normal_full((num_embeddings, embedding_dim), init_std)
        if self.padded_vocab_size != num_embeddings:
            full = torch.cat([full, torch.zeros(self.padded_vocab_size - num_embeddings, embedding_dim)])
            warnings.warn(f"smp.nn: vocab_size {num_embeddings} padded to {self.padded_vocab_size}, a multiple of "
                          f"tensor_parallel_degree {tp} (zero rows, never predicted)")
        self.weight = shard_parameter(full, 0, whole=num_embeddings)

    def forward(self, ids):
        return vocab_lookup(ids, self.weight)
