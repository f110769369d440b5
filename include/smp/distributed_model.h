// smp::DistributedModel: a model as an ordered list of layers, split into pipeline stages on
// the first step (SMP's DistributedModel).
//
//   std::vector<Layer> layers = ...;      // the whole model, on every rank
//   smp::DistributedModel model(std::move(layers));
//   auto out = smp::step(model, {x}, {y}, loss_fn);        // partitions, then runs the pipeline
//   optimizer over model.local_parameters() ...
//
// Partitioning follows the config: with auto_partition, every rank profiles the layers on the
// first microbatch and rank 0's measurements split them to minimise the largest stage cost (memory_weight balances memory
// against time), then broadcasts the split so every rank agrees; otherwise set_partition (or
// default_partition) places each layer. After partitioning a rank keeps only its own stages'
// layers. Build it after smp::init; every rank builds the same model.
#pragma once

#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "smp/comm/parallel_context.h"
#include "smp/data_parallel/gradient_reducer.h"
#include "smp/pipeline/executor.h"
#include "smp/layer/layer.h"
#include "smp/pipeline/partition.h"
#include "smp/pipeline/schedule.h"

namespace smp {

struct DistributedModelOptions {
  // Virtual pipeline stages per rank (Megatron's interleaved schedule); an smp extension.
  // With v > 1 the model splits into pp * v stages and config "pipeline": "interleaved" runs the
  // interleaved-virtual 1F1B schedule.
  int chunks_per_rank = 1;
  // SMP: true averages gradients over microbatches (the loss is scaled by 1/microbatches);
  // false sums them, for sum-reduced losses.
  bool average_grads_across_microbatches = true;
  // SMP's backward_passes_per_step (gradient accumulation, as DDP's no_sync): smp::step's
  // training steps count backward passes, and the gradients are reduced only on every k-th;
  // the passes between accumulate this rank's gradients locally and communicate nothing. The
  // optimizer steps after the k-th (scale the loss by 1/k for an average, as Hugging Face's
  // Trainer does). Sharded data parallelism reduce-scatters on every pass all the same (a
  // layer's whole gradients live only during its backward); its slices accumulate likewise.
  int backward_passes_per_step = 1;
  // SMP's bucket_cap_mb: gradient buckets of about this many MiB are reduced together (ddp).
  double bucket_cap_mb = 25;
  // SMP's overlapping_allreduce: start each bucket's reduction during the last microbatch's
  // backward; false reduces everything after backward.
  bool overlapping_allreduce = true;
  // Parameters that are copies of a parameter another pipeline stage holds, copy -> original
  // ("head.weight" -> "embed.wte.weight": GPT-2's tied head when embedding and head are stages
  // apart). Each pair's gradients are summed over the pipeline group, so both take the same
  // update (after the data-parallel reduction; with shard_optimizer_state, before it, as the
  // two stages' shards do not line up); gradient norms count such a copy once, on the other
  // stage; checkpoints store the original only and load copies from it.
  std::map<std::string, std::string> tied_copies;
  // When set, every step writes a Chrome-trace/Perfetto JSON of each rank's actions here
  // (timeline_rank<r>.json), and step_stats() reports the measured bubble.
  std::string timeline_dir;
  // SMP's delayed_parameter_initialization under sharded data parallelism: the slices taken as
  // each layer was built (DelayedSlices::take), whose parameters then hold no storage. The
  // model's layers must have been built in order, each handed over right after it was built.
  std::shared_ptr<dp::DelayedSlices> delayed_slices;
  // Where this rank's stages run. Set: the model may be built anywhere (the host); profiling
  // runs each layer there in turn, and once partitioned only this rank's own stages move there
  // (their parameters, keeping the tensors' identity, as Module::to does), so no rank ever holds
  // the whole model on its device. Unset: the parameters stay where they are.
  std::optional<at::Device> device;
};

// SMP's set_activation_checkpointing options (its checkpoint_sequential strategies).
struct ActivationCheckpointing {
  // "each": every layer recomputes on its own; "contiguous": consecutive checkpointed layers of
  // one stage recompute as one run; "group_<N>": runs of up to N of them. Runs never cross
  // stages (SMP: a sequence may span partitions, each part recomputed where it runs).
  std::string strategy = "each";
  // Recompute from the generators' states the forward started from (the default CPU and CUDA
  // generators and each layer's own streams, Layer::get_state), so dropout draws the same masks.
  bool preserve_rng_state = true;

  // The most layers one recomputed run may hold: 1 ("each"), N ("group_<N>"), or no limit
  // ("contiguous"). Throws smp::ConfigError, naming `what`, for a strategy not listed above.
  size_t max_run_length(const std::string& what) const;
};

// What the last step measured on this rank.
struct StepStats {
  double wall_s = 0;
  double busy_s = 0;
  double measured_bubble = 0;     // 1 - busy / wall
  double theoretical_bubble = 0;  // of the schedule that ran
};

class DistributedModel {
 public:
  // The model over `context`'s groups and config (which must outlive it).
  DistributedModel(ParallelContext& context, std::vector<Layer> layers,
                   DistributedModelOptions options = {});
  // SMP's form: over the context smp::init built.
  explicit DistributedModel(std::vector<Layer> layers, DistributedModelOptions options = {});

  ParallelContext& context() const { return context_; }

  // SMP's set_partition: puts the layer named `layer_name` on stage `stage` (the pipeline rank;
  // with v > 1 chunks the global stage index). Before the first step; used when auto_partition
  // is false. Throws smp::ConfigError for an unknown layer name.
  void set_partition(const std::string& layer_name, int stage);

  // SMP's set_activation_checkpointing: the layer named `layer_name`, or every layer whose name
  // starts with `layer_name + "."` ("block": block.0, block.1, ...), keeps only its inputs from
  // the forward and runs its forward again right before its backward (activation
  // checkpointing: the activations inside it are not held between the two, for about one more
  // forward of compute). Before the first step; throws smp::ConfigError for a name that matches
  // no layer, an unknown strategy, or a call after the first step.
  void set_activation_checkpointing(const std::string& layer_name,
                                    const ActivationCheckpointing& options = {});
  // The same over several names at once, as one call: consecutive layers of them join one
  // recomputed run under "contiguous" and "group_<N>" (runs never join two calls' layers).
  void set_activation_checkpointing(const std::vector<std::string>& layer_names,
                                    const ActivationCheckpointing& options = {});

  // Partitions now, using `trial_inputs` (one microbatch) for profiling when auto_partition is
  // on. Collective over the world; smp::step calls it on the first step.
  void partition(const Values& trial_inputs);
  // Partitions with a split decided before (a checkpoint's): stage_of_layer[i] is layer i's
  // stage. Not collective; every rank must pass the same. Throws smp::ConfigError when the
  // split has the wrong length, is not contiguous or leaves a stage empty.
  void set_partition_assignment(const std::vector<int>& stage_of_layer);
  bool partitioned() const { return partition_.has_value(); }
  // Every layer's name, in order (before and after partitioning).
  std::vector<std::string> layer_names() const;
  const pipeline::Partition& partition_assignment() const;
  int num_stages() const;

  // The parameters of this rank's stages (SMP's local_parameters), after partitioning.
  std::vector<at::Tensor> local_parameters() const;
  // Names are "<layer name>.<parameter name>".
  std::vector<std::pair<std::string, at::Tensor>> local_named_parameters() const;
  // Every parameter of this rank's stages with its name and whether it is a tensor-parallel
  // shard (reduced over RDP_GROUP) or replicated across the TP group (reduced over DP_GROUP).
  struct LocalParameter {
    std::string name;
    at::Tensor tensor;
    bool tp_sharded = false;
    int stage = 0;  // the pipeline stage holding it
    ShardSpec tp_shard;  // where it sits in the whole tensor
    int layer = 0;  // the first layer that lists it
  };
  std::vector<LocalParameter> local_parameter_info() const;
  // The extra state of this rank's layers (Layer::get_state), "<layer>/<name>" -> tensor, and
  // setting it back (names of layers this rank does not hold are an error).
  std::map<std::string, at::Tensor> local_layer_state() const;
  void load_local_layer_state(const std::map<std::string, at::Tensor>& state);
  // Global indices of this rank's stages, ascending.
  std::vector<int> local_stages() const;
  // Sharded data parallelism ("sharded_data_parallel_degree" > 1) keeps each rank's slice of the
  // parameters and makes a layer's parameters whole only around its forward and backward.
  // Code that reads or writes local_parameters() outside smp::step brackets it with these:
  // gather_parameters() makes every parameter whole (collective over the sharding group);
  // release_parameters(written) frees them again, first taking this rank's slices from them
  // when they were written (not collective). Both do nothing without sharded data parallelism.
  void gather_parameters();
  void release_parameters(bool written);

  const DistributedModelOptions& options() const { return options_; }
  // Data parallelism's gradient path (flat buffers, bucketed reduction), made when the model
  // is partitioned; smp::step drives it and DistributedOptimizer reads it. Throws before.
  dp::GradientReducer& gradient_reducer();
  // The factor smp::step multiplies the loss by before backward, on top of 1/microbatches:
  // fp16's loss scale, which DistributedOptimizer keeps here. 1 by default.
  double loss_scale() const { return loss_scale_; }
  void set_loss_scale(double scale) { loss_scale_ = scale; }
  // A factor kept on the device (fp16's dynamic scale, updated there by the optimizer), which
  // the loss is multiplied by too; undefined (the default): none.
  const at::Tensor& loss_scale_tensor() const { return loss_scale_tensor_; }
  void set_loss_scale_tensor(at::Tensor scale) { loss_scale_tensor_ = std::move(scale); }
  const StepStats& step_stats() const { return stats_; }
  // The actions of the last step that traced (StepOptions::trace or timeline_dir), with times.
  const std::vector<pipeline::TraceEvent>& last_trace() const { return last_trace_; }
  // What activation offloading did in that step (empty without offload_activations).
  const std::vector<pipeline::OffloadEvent>& last_offload() const { return last_offload_; }

  // Used by smp::step: the schedule for `num_microbatches` and this rank's executor.
  pipeline::Executor& executor_for(int num_microbatches, bool train);
  const pipeline::Schedule& schedule_for(int num_microbatches, bool train);
  void record_step(const pipeline::ExecutorResult& result, const pipeline::Schedule& schedule);
  // Used by smp::step on each training step: counts its backward pass and says whether the
  // pass reduces the gradients (every backward_passes_per_step-th does).
  bool count_backward_pass() { return ++backward_passes_ % options_.backward_passes_per_step == 0; }
  // After the gradients are reduced (smp::step): each tied copy and its original get the sum
  // of their gradients, point-to-point over the pipeline group. With shard_optimizer_state the
  // reducer has done it before reducing, and this does nothing.
  void sum_tied_gradients();

 private:
  void build_in_fp16();    // fp16_params
  void require_nccl_transport() const;  // ddp_dist_backend "nccl"
  void keep_own_stages();  // after partition_ is set: drop other stages' layers, build the reducer
  void sum_tied_slots();   // the sum, on the reducer's gradient slots
  std::vector<pipeline::RecomputedRun> recomputed_runs(int begin, int end) const;
  void shard_layers();     // sharded data parallelism: each layer gathers its buckets

  ParallelContext& context_;
  std::vector<Layer> layers_;
  DistributedModelOptions options_;
  std::map<std::string, int> manual_stage_;  // from set_partition
  // From set_activation_checkpointing, by layer name: the call's run length and RNG option, and
  // the call's number (runs join only layers of one call).
  struct Checkpointed {
    size_t max_run = 1;
    bool preserve_rng_state = true;
    int call = 0;
  };
  std::map<std::string, Checkpointed> checkpointed_;
  int checkpoint_calls_ = 0;
  std::optional<pipeline::Partition> partition_;
  // Schedules and executors by (microbatches, train).
  std::map<std::pair<int, bool>, std::unique_ptr<pipeline::Schedule>> schedules_;
  std::map<std::pair<int, bool>, std::unique_ptr<pipeline::Executor>> executors_;
  StepStats stats_;
  std::vector<pipeline::TraceEvent> last_trace_;
  std::vector<pipeline::OffloadEvent> last_offload_;
  int steps_ = 0;
  std::unique_ptr<dp::GradientReducer> reducer_;  // after partitioning
  // Each tied pair: the pipeline ranks of original and copy, and their reducer indices on this
  // rank (-1 where this rank holds neither).
  struct TiedPair {
    int original_rank = 0, copy_rank = 0;
    int original = -1, copy = -1;
  };
  std::vector<TiedPair> tied_;
  double loss_scale_ = 1.0;
  at::Tensor loss_scale_tensor_;
  int64_t backward_passes_ = 0;  // training steps run
};

}  // namespace smp
