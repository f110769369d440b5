// smp::DistributedOptimizer: SMP's DistributedOptimizer. Wraps a torch::optim optimizer and
// runs its update on flat buffers: every data-parallel rank holds the whole state, or, with
// "shard_optimizer_state": true (ZeRO-1), only the slice of each gradient bucket it owns; it
// updates that slice and the parameters are all-gathered. fp16/bf16 keep fp32 master weights
// and read the reducer's fp32 gradients (GradientReducer::grad_dtype).
//
//   std::vector<Layer> layers = make_model();
//   std::vector<at::Tensor> params = ...every layer's parameters...;
//   smp::DistributedModel model(std::move(layers));
//   smp::DistributedOptimizer opt(model, std::make_unique<torch::optim::AdamW>(
//       params, torch::optim::AdamWOptions(1e-3)));
//   for (...) {
//     smp::step(model, {x}, {y}, loss_fn);   // gradients are averaged over DP and microbatches
//     double norm = opt.clip_master_grads(1.0);
//     opt.step();                             // skipped (overflow() true) on an fp16 overflow
//     opt.zero_grad();
//   }
//
// Supported: torch::optim::SGD (momentum, dampening, nesterov, weight decay), Adam and AdamW
// (amsgrad too), with any number of parameter groups; each step reads the groups' options, so
// an LR scheduler acts on optimizer(). The update is torch::optim's, operation for operation.
// Parameters the optimizer lists but this rank does not hold (other pipeline stages) are
// ignored; a rank may hold none and still takes part in every collective. Differences from
// torch::optim: a parameter that got no gradient in a step is stepped with a zero gradient
// (as under DDP); parameter groups are read when the first step() runs (after the model is
// partitioned) and cannot be added later. fp16 checks for overflow with a static scale too.
//
// Calls marked "collective" are made by every rank of the world, in the same order.
#pragma once

#include <ATen/core/Tensor.h>

#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "smp/distributed_model.h"
#include "smp/optim/loss_scaler.h"

namespace torch::optim {
class Optimizer;
}

namespace smp {

// SMP's DistributedOptimizer(optimizer, static_loss_scale, dynamic_loss_scale,
// **dynamic_loss_args). The scale applies only with "fp16": true (else ConfigError when set).
struct DistributedOptimizerOptions {
  double static_loss_scale = 1.0;
  bool dynamic_loss_scale = false;
  optim::DynamicLossArgs dynamic_loss_args;
  // Without fp16 (whose scaler handles overflows): steps skipped in a row for inf or NaN
  // gradients before step() throws smp::Error; 0 never stops.
  int64_t max_nonfinite_steps = 10;
  // The learning rates read from a tensor per group on the parameters' device, written only
  // by upload_learning_rates() (a captured CUDA graph replays its kernels' scalar arguments
  // as captured; a tensor it reads anew). Off: the groups' options are read in step().
  bool lr_on_device = false;
  // offload_optimizer_state: the elements of state updated (and so resident) at a time.
  int64_t offload_window = int64_t{1} << 23;
};

// What a checkpoint stores. `meta` holds the optimizer kind, the groups' options and step
// counts, the loss scaler and, for a partial dict, this rank's layout; `tensors` the state.
//   local (partial, `partial` true): 1-D fp32 tensors over this rank's local flat space,
//     "exp_avg", "exp_avg_sq", "max_exp_avg_sq" (Adam/AdamW), "momentum_buffer" (SGD),
//     "fp32_master" (fp16/bf16). meta["segments"] maps them: [param name, param offset, local
//     offset, numel] rows, so any layout can be resharded by arithmetic.
//   full (`partial` false): per parameter of this rank's stages, "<param name>/<state>"
//     tensors shaped like the parameter (ZeRO shards gathered over DP/RDP).
struct OptimizerStateDict {
  bool partial = true;  // SMP's _smp_is_partial
  nlohmann::json meta;
  std::map<std::string, at::Tensor> tensors;
};

class DistributedOptimizer {
 public:
  // `optimizer` must be an SGD, Adam or AdamW over (some of) the model's parameters, else
  // smp::ConfigError naming what is allowed; also for a loss scale without fp16, or
  // shard_optimizer_state without ddp.
  DistributedOptimizer(DistributedModel& model, std::unique_ptr<torch::optim::Optimizer> optimizer,
                       DistributedOptimizerOptions options = {});
  ~DistributedOptimizer();
  DistributedOptimizer(const DistributedOptimizer&) = delete;
  DistributedOptimizer& operator=(const DistributedOptimizer&) = delete;

  // Collective. Unscales (fp16), skips on inf or NaN gradients anywhere (overflow() true; under
  // fp16 the scale drops, otherwise the step is counted in skipped_steps(), a warning printed
  // by world rank 0, and past max_nonfinite_steps in a row smp::Error, when the flag is
  // settled: see overflow_tensor), else updates this rank's slice; then, when sharded,
  // all-gathers the parameters over DP_GROUP / RDP_GROUP. Throws smp::Error before the model's first smp::step. Under sharded
  // data parallelism it first clips at the config's sdp_gradient_clipping (SMP), unless
  // clip_master_grads was called for these gradients.
  void step();
  // Zeroes the gradients in place (torch's zero_grad(set_to_none = false)): each fp32 .grad
  // stays a view into the flat gradient buffer, so backward accumulates there directly (a
  // 16-bit .grad is dropped: the reducer adds each one into its fp32 slot). Not collective.
  void zero_grad();
  // Whether the last step() (or clip_master_grads) found an inf/nan gradient on any rank.
  // Reads the device's flag (a wait) unless record_overflow gave it.
  bool overflow();
  // Steps skipped for inf or NaN gradients without fp16, since construction (reads the flag
  // as overflow() does).
  int64_t skipped_steps();
  // The last step()'s inf/NaN flag (overflow()) as a 0-dim float tensor on the gradients'
  // device, 1 where the step was skipped, without waiting for it: fetch it together with the
  // loss and hand its value to record_overflow. Valid until the next smp::step's gradients
  // are prepared.
  //
  // step() never waits for the flag itself: the fused kernels skip the update on the device
  // when it is set, the step counts advance there by 1 - flag, and fp16's dynamic scale is
  // updated there (at::_amp_update_scale_). The bookkeeping that needs its value on the host
  // (overflow(), skipped_steps(), the warning and max_nonfinite_steps' error, the step counts
  // and loss scale a checkpoint stores) runs when record_overflow gives it, or else when the
  // next gradients are prepared or any of these is asked for (then reading the flag: a wait).
  // Except where step() needs it (then it reads it): SGD with momentum and dampening until its
  // first step, a skip that would be the max_nonfinite_steps-th in a row (it throws from
  // step()), and fp16 dynamic scaling that the device rule cannot follow (device_rule false).
  at::Tensor overflow_tensor();
  // Not collective. `overflow`: the value of overflow_tensor() after the last step() (the same
  // on every rank). Settles that step's bookkeeping (may throw smp::Error past
  // max_nonfinite_steps, as step() did).
  void record_overflow(bool overflow);
  // Not collective. A step() that a captured CUDA graph replayed (its host part did not run):
  // settles the step before, and leaves this one's bookkeeping pending like step() does (for
  // record_overflow or a read of the flag). train::CudaGraphStep calls it after each replay.
  void step_replayed();
  // Collective. The master gradients' global L2 norm, counted as clip_master_grads counts it,
  // without changing them (for logging when not clipping); -1 on an fp16 overflow.
  double master_grad_norm();
  // Collective. Scales the master gradients so their global L2 norm, over every pipeline
  // stage, tensor shard and (sharded) data-parallel slice, with TP-replicated parameters
  // counted once, is at most max_norm (torch's clip_grad_norm_ rule). Returns the norm before
  // clipping, or -1 on an fp16 overflow (SMP/Apex).
  double clip_master_grads(double max_norm);
  // master_grad_norm and clip_master_grads without waiting for the device: the norm as a
  // 0-dim fp64 tensor on the gradients' device (clipping's coefficient never leaves it),
  // to be fetched later, e.g. together with the loss and overflow_tensor(). On an overflow
  // it holds inf or NaN (the gradients' own norm), not -1: the flag says so.
  at::Tensor master_grad_norm_tensor();
  at::Tensor clip_master_grads_tensor(double max_norm);
  // With lr_on_device: the groups' current learning rates into their device tensors (not
  // collective; no wait). Call after changing them, before step(); outside a CUDA graph.
  void upload_learning_rates();
  // The wrapped optimizer: its param_groups' options are read every step (LR schedulers).
  torch::optim::Optimizer& optimizer();
  // fp16's loss scale after the last step() (settles it as overflow() does).
  double loss_scale();
  // Bytes of optimizer state and fp32 master weights this rank holds (0 before the first step).
  int64_t state_bytes() const;

  // Not collective: this rank's state (SMP's local_state_dict, partial). Its tensors are the
  // state itself, which later steps update (as torch.optim's state_dict), not copies.
  OptimizerStateDict local_state_dict();
  // Loads a dict from local_state_dict() of the same layout (ranks, buckets, parameters).
  void load_local_state_dict(const OptimizerStateDict& dict);
  // Collective over DP_GROUP and RDP_GROUP: per-parameter state of this rank's stages.
  OptimizerStateDict state_dict();
  // Loads a per-parameter dict: each rank takes its slice (any sharding, any bucket layout).
  void load_state_dict(const OptimizerStateDict& dict);

  // For checkpoints. Not collective. One run of the state this rank holds: elements
  // [param_offset, param_offset + values.numel()) of parameter `param`'s flattened local
  // tensor, as a 1-D view into the live buffer (writing it loads state). `owner` is false where
  // other ranks of the data-parallel group hold the same values (the state is not sharded)
  // and the group's first rank writes them. "fp32_master" is among the states under fp16/bf16.
  struct StateSlice {
    std::string param;
    std::string state;
    int64_t param_offset = 0;
    at::Tensor values;
    bool owner = true;
  };
  // Initializes the optimizer when it has not stepped yet (the model must be partitioned).
  std::vector<StateSlice> state_slices();
  // The groups' options and step counts and the loss scaler: the same on every rank.
  nlohmann::json state_meta();
  void load_state_meta(const nlohmann::json& meta);

  struct Impl;

 private:
  Impl& ready();
  std::unique_ptr<Impl> impl_;
};

}  // namespace smp
