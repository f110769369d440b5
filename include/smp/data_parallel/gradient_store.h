// GradientStore: what the optimizer sees of data parallelism, one interface for its three
// forms, so that the optimizer, clipping and write-back have no branch on the form.
//
//   ReplicatedStore  ddp (or no ddp): every rank holds every parameter and its averaged
//                    gradient in the reducer's flat buffers and updates all of them.
//   Zero1Store       shard_optimizer_state: parameters whole in the flat buffer, the averaged
//                    gradients only for this rank's slice of each bucket; after the update the
//                    slices are all-gathered.
//   ShardedStore     sharded_data_parallel_degree > 1: parameters and gradients exist only as
//                    this rank's slices (ParameterShards); after the update the persistent
//                    buckets are gathered again.
//
// A run is a stretch of one bucket that this rank updates: elements [flat, flat + numel) of
// the layout's flat order and [local, local + numel) of this rank's slice (FlatLayout's
// owned segments). GradientReducer makes the store for its form; it lives as long as the
// reducer.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "smp/comm/parallel_context.h"
#include "smp/data_parallel/flat_layout.h"
#include "smp/data_parallel/parameter_shards.h"

namespace smp::dp {

class GradientStore {
 public:
  virtual ~GradientStore() = default;
  // The parameters' values of a run, writable: the update writes here (fp32 models) or the
  // fp32 masters start from and are copied back here (fp16/bf16).
  virtual at::Tensor params(int64_t flat, int64_t local, int64_t numel) const = 0;
  // The averaged gradients of a run, after the step's reduction finished.
  virtual at::Tensor grads(int64_t flat, int64_t local, int64_t numel) const = 0;
  // The buffers params() and grads() cut their runs from (grads: allocated, when freed between
  // steps). Views of runs stay valid while these keep their storage and offset.
  virtual const at::Tensor& params_buffer() const = 0;
  virtual const at::Tensor& grads_buffer() const = 0;
  // Whether this rank's slice of `bucket` counts in the global gradient norm: over the ranks
  // sum_norm adds up, every element is counted exactly once.
  virtual bool counts_in_norm(const Bucket& bucket) const = 0;
  // Collective: adds each rank's partial sum of squares (a one-element tensor) over the ranks
  // that hold the other elements of the model.
  virtual void sum_norm(at::Tensor& sum_sq) const = 0;
  // Collective over the groups the parameters are sharded over: after the optimizer wrote
  // this rank's runs, every rank's parameters are whole (or re-sliced) again.
  virtual void after_update() = 0;
};

class ReplicatedStore : public GradientStore {
 public:
  // `flat_params` / `flat_grads`: the reducer's buffers, in the layout's flat order.
  ReplicatedStore(const ParallelContext& context, at::Tensor flat_params, at::Tensor flat_grads);
  at::Tensor params(int64_t flat, int64_t local, int64_t numel) const override;
  at::Tensor grads(int64_t flat, int64_t local, int64_t numel) const override;
  const at::Tensor& params_buffer() const override { return flat_params_; }
  const at::Tensor& grads_buffer() const override { return flat_grads_; }
  // Tensor-parallel shards on every tp rank; TP-replicated parameters on tp rank 0 only.
  bool counts_in_norm(const Bucket& bucket) const override;
  void sum_norm(at::Tensor& sum_sq) const override;  // over MP_GROUP: one replica's stages and shards
  void after_update() override {}

 private:
  const ParallelContext& context_;
  at::Tensor flat_params_, flat_grads_;
};

class Zero1Store : public GradientStore {
 public:
  // `shard_grads`: this rank's averaged slices, in the layout's local order.
  Zero1Store(const ParallelContext& context, const FlatLayout& layout, at::Tensor flat_params,
             at::Tensor shard_grads);
  at::Tensor params(int64_t flat, int64_t local, int64_t numel) const override;
  at::Tensor grads(int64_t flat, int64_t local, int64_t numel) const override;
  const at::Tensor& params_buffer() const override { return flat_params_; }
  const at::Tensor& grads_buffer() const override { return shard_grads_; }
  bool counts_in_norm(const Bucket&) const override { return true; }  // every slice is unique
  void sum_norm(at::Tensor& sum_sq) const override;  // over the world
  void after_update() override;  // all-gathers each sharded bucket over its group

 private:
  const ParallelContext& context_;
  const FlatLayout& layout_;
  at::Tensor flat_params_, shard_grads_;
};

class ShardedStore : public GradientStore {
 public:
  ShardedStore(const ParallelContext& context, ParameterShards& shards);
  at::Tensor params(int64_t flat, int64_t local, int64_t numel) const override;
  at::Tensor grads(int64_t flat, int64_t local, int64_t numel) const override;
  const at::Tensor& params_buffer() const override;
  const at::Tensor& grads_buffer() const override;
  // As replicated, within the sharding group: TP-replicated parameters on tp rank 0 only.
  bool counts_in_norm(const Bucket& bucket) const override;
  // Over the sharding group, then the TP group (pp is 1: the slices tile each tp rank's model).
  void sum_norm(at::Tensor& sum_sq) const override;
  void after_update() override;

 private:
  const ParallelContext& context_;
  ParameterShards& shards_;
};

}  // namespace smp::dp
