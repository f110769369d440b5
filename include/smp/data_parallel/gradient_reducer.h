// GradientReducer: the gradient path of data parallelism (SMP's overlapping_allreduce).
//
// DistributedModel builds one when it partitions, from this rank's parameters. It
//   - makes every parameter a view into one flat buffer (cast to fp16/bf16 when the config
//     asks), laid out by FlatLayout in gradient buckets; the flat gradient buffer is fp32 when
//     the parameters are fp16/bf16 (grad_dtype(): Megatron's main_grad), so gradients
//     accumulate over microbatches and are reduced in fp32;
//   - with "ddp": true, broadcasts each bucket from rank 0 of its group so replicas start equal;
//   - during a training step, hooks each parameter's AccumulateGrad node. fp32 parameters'
//     .grad is a view of its slot, so backward accumulates in place; a 16-bit .grad (autograd
//     makes it in the parameter's dtype) is added into its fp32 slot as soon as it lands and
//     released. Once the last microbatch's backward of a stage has begun, each gradient that
//     lands is final, is in its bucket (copied there if autograd made a fresh tensor), and a
//     bucket whose gradients are all final starts its all-reduce (kAvg) at once, in bucket
//     order, overlapping the backward still running; with shard_optimizer_state it is a
//     reduce-scatter instead, so each rank ends with the averaged slice of every bucket it
//     owns (ZeRO-1);
//   - finish() starts what is left and waits.
// With sharded_data_parallel_degree > 1 the parameters themselves are sharded: a
// ParameterShards holds them (one bucket per layer) and takes the gradients, reduce-scattered
// every microbatch; the "DP" group of the layout is then the sharding group, and sharded()
// holds as under ZeRO-1 (shard_grads() is this rank's slice).
// Replicated parameters average over DP_GROUP, tensor-parallel shards over RDP_GROUP (SMP).
// Microbatch averaging is the loss scale 1/m that smp::step applies. Without ddp, or when
// every group has one rank, nothing is communicated; finish() only gathers the gradients into
// the flat buffer for the optimizer.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "smp/comm/communicator.h"
#include "smp/comm/parallel_context.h"
#include "smp/data_parallel/flat_layout.h"
#include "smp/data_parallel/gradient_store.h"
#include "smp/data_parallel/parameter_shards.h"

namespace torch::autograd {
struct Node;
}

namespace smp::dp {

struct ReducedParam {
  std::string name;
  at::Tensor tensor;
  bool tp_sharded = false;  // reduced over RDP_GROUP instead of DP_GROUP
  int stage = 0;            // the pipeline stage holding it
  int layer = 0;            // the first layer using it (sharded data parallelism's buckets)
};

struct ReducerOptions {
  double bucket_cap_mb = 25;  // SMP's bucket_cap_mb
  bool overlapping = true;    // SMP's overlapping_allreduce: false reduces only in finish()
  // Sharded data parallelism with delayed_parameter_initialization: the slices taken while the
  // model was built (the parameters hold no storage).
  const DelayedSlices* delayed = nullptr;
};

// What the last step did.
struct ReducerStats {
  int buckets = 0;
  int launched_during_backward = 0;  // buckets whose reduction started before finish()
  double finish_wait_s = 0;          // time finish() spent waiting for reductions
};

class GradientReducer {
 public:
  // Collective over DP_GROUP and RDP_GROUP when ddp is on (the initial broadcast). Parameters
  // that do not require grad are left alone; a tensor listed twice (tied) counts once. Throws
  // smp::ConfigError for parameters of mixed dtypes.
  // The context's config decides ddp, shard_optimizer_state, sharded data parallelism and the
  // parameter dtype (fp16/bf16); its groups carry the reductions. It must outlive the reducer.
  GradientReducer(const ParallelContext& context, std::vector<ReducedParam> params,
                  const ReducerOptions& options);
  ~GradientReducer();
  GradientReducer(const GradientReducer&) = delete;
  GradientReducer& operator=(const GradientReducer&) = delete;

  // --- called by smp::step, in this order, on training steps ---------------------------------
  // `reduce` false (backward_passes_per_step): the step's gradients only accumulate into the
  // flat buffer and nothing is communicated; sharded data parallelism reduces all the same.
  void begin_step(int num_microbatches, bool reduce = true);
  // Before each backward of global stage `stage` that accumulates parameter gradients (a full
  // or weight backward; an input-only backward is not reported): counts them per stage, and
  // at a stage's last one its gradients are armed.
  void before_weight_backward(int stage);
  // Starts the buckets not yet started and waits for all. Blocks. Afterwards, unsharded: every
  // fp32 .grad is a view of its averaged slot in flat_grads() (a 16-bit .grad is undefined: the
  // gradient lives in the fp32 slot alone); sharded: shard_grads() holds this rank's averaged
  // slices, an fp32 .grad the local (unreduced) gradient.
  void finish();
  // Holds back the buckets holding `params` (indices) until finish(), which first runs `hook`
  // with every slot of flat_grads() filled but nothing reduced, then reduces them: for work that
  // must see the local gradients before the reduction (tied copies under ZeRO-1, whose shards
  // of the two stages do not line up after it).
  void hold_until_finish(const std::vector<int>& params, std::function<void()> hook);
  // Backward accumulates into parameter `param` `count` times per microbatch (default 1): a
  // tensor that layers share (a tied embedding) and whose uses activation checkpointing puts in
  // separate backward walks. Its gradient is final at the count-th accumulation of the last
  // microbatch.
  void set_accumulations(int param, int count);
  // Parameter `param`'s gradient slot in flat_grads(), shaped like the parameter.
  at::Tensor grad_slot(int param) const;
  // The dtype the parameters and the model's floating inputs have (fp32, fp16 or bf16).
  at::ScalarType param_dtype() const { return dtype_; }
  // The dtype of flat_grads(), shard_grads() and the store's gradients: fp32 for fp16/bf16
  // parameters, else the parameters' own.
  at::ScalarType grad_dtype() const { return grad_dtype_; }

  // --- used by DistributedOptimizer ----------------------------------------------------------
  // This rank's parameters and averaged gradients as the optimizer updates them, whatever the
  // form of data parallelism.
  GradientStore& store() const { return *store_; }
  const FlatLayout& layout() const { return layout_; }
  const std::vector<ReducedParam>& params() const { return params_; }
  bool communicates() const { return communicates_; }
  bool sharded() const { return sharded_; }
  const at::Tensor& flat_params() const { return flat_params_; }
  const at::Tensor& flat_grads() const { return flat_grads_; }
  // Local layout; sharded only (sharded data parallelism's are ParameterShards::grads()).
  const at::Tensor& shard_grads() const { return shards_ ? shards_->grads() : shard_grads_; }
  // Sharded data parallelism's parameters; null without it.
  ParameterShards* parameter_shards() const { return shards_.get(); }
  // Whether this rank writes the optimizer state of bucket b to checkpoints: the owner of a
  // sharded slice, or the group's first rank; under sharded data parallelism, the owner in the
  // first sharding group (and for TP-replicated parameters on tp rank 0).
  bool writes_state(int bucket) const;
  // This rank's rank in DP_GROUP / RDP_GROUP, and the communicator of a bucket's group.
  int rank_in(ReduceGroup group) const;
  comm::Communicator& communicator(ReduceGroup group) const;
  // Zeroes the flat gradient buffer and makes every fp32 .grad a view of its slot, so backward
  // accumulates in place. (Dropping the gradients instead costs a fresh allocation per
  // gradient — fresh pages, page faults — and a copy into the slot each step.) 16-bit .grads
  // are dropped: each microbatch's is added into the fp32 slot as it lands.
  void zero_grad();
  int64_t steps_finished() const { return steps_finished_; }
  const ReducerStats& stats() const { return stats_; }

 private:
  void adopt_parameters();
  void broadcast_parameters();
  void index_stages();
  void install_hooks();
  void on_grad_ready(int param);
  void copy_into_slot(int param);
  void add_into_slot(int param);
  bool widened() const { return grad_dtype_ != dtype_; }  // 16-bit parameters, fp32 gradients
  void launch_ready();
  void launch(int bucket);
  void poll();
  void finish_buckets();  // finish() without sharded data parallelism
  void remove_hooks();

  const ParallelContext& context_;
  std::vector<ReducedParam> params_;
  ReducerOptions options_;
  FlatLayout layout_;
  at::ScalarType dtype_;
  at::ScalarType grad_dtype_;
  bool communicates_ = false;
  bool overlaps_ = false;  // buckets start during backward (communicates_ and overlapping)
  bool sharded_ = false;
  at::Tensor flat_params_;
  at::Tensor flat_grads_;
  at::Tensor shard_grads_;

  // Per step.
  int num_microbatches_ = 1;
  bool in_step_ = false;
  bool reducing_ = true;                 // begin_step's `reduce`
  std::vector<int> backwards_seen_;      // by local stage index
  std::vector<int> stage_index_;         // param -> local stage index
  std::vector<int> stages_;              // local stage numbers
  std::vector<char> armed_;              // by local stage index
  std::vector<char> ready_;              // by param
  std::vector<int> accumulations_;       // by param: per microbatch (set_accumulations)
  std::vector<int> accumulated_;         // by param: seen in the last microbatch so far
  std::vector<int> pending_;             // by bucket: params not yet ready
  int next_[2] = {0, 0};                 // next bucket to launch, per reduce group
  std::vector<std::vector<int>> order_;  // buckets of each group, in launch order
  std::vector<comm::Work> works_;
  std::vector<char> held_;                // by bucket: launched only in finish()
  std::function<void()> finish_hook_;     // runs in finish() before the held buckets

  std::unique_ptr<ParameterShards> shards_;  // sharded data parallelism only
  std::unique_ptr<GradientStore> store_;
  std::vector<std::shared_ptr<torch::autograd::Node>> accumulators_;  // the hooked nodes
  std::vector<uintptr_t> hook_keys_;
  int64_t steps_finished_ = 0;
  ReducerStats stats_;
};

// Floating tensors converted to `dtype`, others as they are (mixed-precision inputs).
std::vector<at::Tensor> cast_floating(const std::vector<at::Tensor>& values, at::ScalarType dtype);

}  // namespace smp::dp
