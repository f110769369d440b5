// Tensor-parallel primitives: where a computation enters or leaves a tensor-parallel region
// (Megatron's mappings), as autograd functions in pairs, each taking its group explicitly.
//
//   pair                                forward                     backward
//   copy_to_tp / reduce_from_tp         identity / all-reduce       all-reduce / identity
//   scatter_to_tp / gather_from_tp      own slice / all-gather      all-gather / own slice
//     (along the last dim)
//   all_gather_sequence /               all-gather / reduce-scatter reduce-scatter / all-gather
//   reduce_scatter_sequence             (along the sequence dim: sequence parallelism)
//   scatter_to_sequence /               own slice / all-gather      all-gather / own slice
//   gather_from_sequence
//   gather_batch / split_batch          all-gather / own slice      tp x own slice / all-gather / tp
//     (along the batch dim 0: SMP's non-prescaled flow)
//   sync_replicated_grads               identity                    one all-reduce of all grads
//
// Every call is collective over the group (all its ranks call it, in the same order, and so do
// their backwards); with a group of one each is the identity and communicates nothing. Calls
// block until their collective is done. "Own slice" assumes the input (or the incoming
// gradient) is the same on every rank of the group, as it is where activations are replicated.
// Sizes along a split dim must divide by the group size (smp::ConfigError otherwise).
#pragma once

#include <ATen/core/Tensor.h>

#include <vector>

#include "smp/tensor_parallel/group.h"

namespace smp::tp {

// Enters a region whose ranks each use the whole input (column-parallel linear): the input's
// gradient is the sum of every rank's.
at::Tensor copy_to_tp(const at::Tensor& x, const TpGroup& group);
// Leaves a region whose ranks each hold a partial sum (row-parallel linear).
at::Tensor reduce_from_tp(const at::Tensor& x, const TpGroup& group);

// Keeps this rank's slice of the last dim.
at::Tensor scatter_to_tp(const at::Tensor& x, const TpGroup& group);
// Concatenates every rank's x along the last dim (rank order).
at::Tensor gather_from_tp(const at::Tensor& x, const TpGroup& group);

// Sequence parallelism: x holds this rank's slice of the sequence dim; returns the whole
// sequence. Backward reduce-scatters (each rank's region used the whole sequence).
at::Tensor all_gather_sequence(const at::Tensor& x, const TpGroup& group, int64_t dim = 1);
// x is this rank's partial sum over the whole sequence; returns the sum's slice of the
// sequence dim for this rank.
at::Tensor reduce_scatter_sequence(const at::Tensor& x, const TpGroup& group, int64_t dim = 1);

// Enters sequence parallelism from replicated activations (no communication forward).
at::Tensor scatter_to_sequence(const at::Tensor& x, const TpGroup& group, int64_t dim = 1);
// Leaves sequence parallelism to replicated activations.
at::Tensor gather_from_sequence(const at::Tensor& x, const TpGroup& group, int64_t dim = 1);

// SMP's non-prescaled batch flow (prescaled_batch false: the ranks of a TP group hold different
// samples). A distributed module gathers the group's batch at its entry, (B, ...) ->
// (tp * B, ...) in rank order, and returns each rank its own samples at its exit. Inside, every
// rank computes on the group's batch, so the region's parameters get the gradient of the MEAN
// of the group's losses: split_batch's backward divides the gathered gradient by tp and
// gather_batch's multiplies this rank's slice by tp, so the gradient leaving the region is
// exactly this rank's own samples'. Data-parallel averaging (TP-sharded parameters over
// RDP_GROUP, the others over DP_GROUP) then gives every parameter the gradient of the global
// mean loss, as one process on the whole global batch.
at::Tensor gather_batch(const at::Tensor& x, const TpGroup& group);
at::Tensor split_batch(const at::Tensor& x, const TpGroup& group);

// For parameters replicated across the group but used on sharded activations (LayerNorm and
// biases under sequence parallelism): returns aliases to use in forward; once all their
// gradients are known, one all-reduce over the group sums them (flattened together), so
// every rank accumulates the same, whole gradient.
std::vector<at::Tensor> sync_replicated_grads(const std::vector<at::Tensor>& params,
                                              const TpGroup& group);

// --- the collectives underneath, without autograd (x need not be contiguous) -------------
// Concatenation of every rank's x along `dim`.
at::Tensor all_gather_along(const at::Tensor& x, int64_t dim, const TpGroup& group);
// Sum over ranks, this rank's slice along `dim`.
at::Tensor reduce_scatter_along(const at::Tensor& x, int64_t dim, const TpGroup& group);
// Sum over ranks, as a new tensor.
at::Tensor all_reduced(const at::Tensor& x, const TpGroup& group);
// This rank's slice along `dim` (a view).
at::Tensor own_slice(const at::Tensor& x, int64_t dim, const TpGroup& group);

}  // namespace smp::tp
