// DistributedOptimizer's state (internal to smp_optim): which flat elements this rank updates,
// in runs, and the flat tensors that hold masters, gradients and optimizer state.
//
// A run is a stretch of one bucket's owned slice whose parameters all belong to one optimizer
// group: flat elements [flat, +numel) of the reducer's buffers, local elements [local, +numel)
// of this rank's state. fp32 models update the flat parameter buffer itself; fp16/bf16 update
// fp32 masters (local layout) and copy them back. Gradients are read where the reducer keeps
// them (fp32 under fp16/bf16 too: GradientReducer::grad_dtype).
#pragma once

#include <torch/optim/optimizer.h>

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "smp/distributed_optimizer.h"

namespace smp::optim {

enum class Kind { kSgd, kAdam, kAdamW };
const char* to_string(Kind kind);

struct Run {
  int group = 0;  // optimizer parameter group
  int bucket = 0;
  int64_t flat = 0;
  int64_t local = 0;
  int64_t numel = 0;
  bool in_norm = true;  // counted by this rank in the global gradient norm
};

}  // namespace smp::optim

namespace smp {

struct DistributedOptimizer::Impl {
  Impl(DistributedModel& model, std::unique_ptr<torch::optim::Optimizer> inner,
       const DistributedOptimizerOptions& options);

  // After the model is partitioned: runs, state buffers, masters; applies pending loads.
  void initialize();
  // Once per finished smp::step: settles the last step (settle()), then the reducer's gradients
  // (fp32 under fp16/bf16 too) unscaled in place and checked for inf/NaN into found_inf,
  // all-reduced over the world (collective). Does not wait for the device.
  void prepare();
  // The flag of the prepared gradients on the host: read from the device (a wait) unless known.
  bool read_overflow();
  // The host's bookkeeping of the last step() (once): step counts, momentum started, the loss
  // scaler's host copy, skipped steps (warns; throws smp::Error past max_nonfinite_steps).
  void settle();
  // Whether step() needs the flag on the host before its update (see overflow_tensor's comment).
  bool flag_needed_on_host() const;
  bool first_sgd_step(int group) const;  // is_first_step of a group's fused SGD
  void upload_learning_rates();  // lr_on_device: the groups' options into lrs
  // Step counts (per group) and fp16's dynamic scale copied from the host to the device.
  void upload_counts_and_scale();
  // State dicts (state_dict.cpp).
  nlohmann::json meta() const;
  void load_meta(const nlohmann::json& meta);
  OptimizerStateDict local_dict() const;
  void load_local(const OptimizerStateDict& dict);
  OptimizerStateDict full_dict() const;  // collective over DP_GROUP and RDP_GROUP
  void load_full(const OptimizerStateDict& dict);
  std::map<std::string, at::Tensor> all_state() const;
  void apply_pending_loads();

  // The parameters' own values of a run (the flat buffer, or sharded data parallelism's shard).
  at::Tensor param_source(const optim::Run& run) const;
  // What the update writes: param_source, or the fp32 masters under fp16/bf16.
  at::Tensor param_view(const optim::Run& run) const;
  at::Tensor grad_view(const optim::Run& run) const;
  // Undefined when this optimizer keeps no such state.
  at::Tensor state_view(const std::string& name, const optim::Run& run) const;
  std::vector<std::string> state_names() const;

  // Every run's views into the buffers, in the lists the multi-tensor kernels take. Built once
  // and again only when a buffer was replaced (another storage or offset): narrowing each run
  // on every step would cost a dispatcher call per run and list (hundreds a step, host-bound on
  // a GPU). Freeing a buffer's storage in place (sharded data parallelism's gradients) keeps
  // the views valid.
  struct GroupViews {
    std::vector<at::Tensor> params, grads, m, v, vmax;  // by run (piece) of the group
  };
  struct Window {  // local elements [local, +numel): the whole state, or one offload_window
    int64_t local = 0, numel = 0;
    std::vector<GroupViews> groups;  // by optimizer group; runs cut at the window's edges
    std::vector<at::Tensor> masters, sources;  // fp16/bf16: the masters and where they go back
  };
  struct RunViews {
    std::vector<std::pair<const void*, int64_t>> key;  // each buffer's storage and offset
    std::vector<at::Tensor> grads;       // every run
    std::vector<at::Tensor> norm_grads;  // the runs counted in the norm
    std::vector<Window> windows;
  };
  const RunViews& views();
  // The update of every run: window by window, and in a window, one call of PyTorch's fused
  // kernels (_fused_adamw_, _fused_adam_, _fused_sgd_: what torch.optim's fused=True runs) per
  // parameter group, with the group's current options; fp16/bf16's masters then go into the
  // parameters. Offloaded state leaves resident memory after its window.
  void update();
  void update_group(const GroupViews& views, int group);
  void release_state();  // offloaded: every state page out of resident memory

  DistributedModel& model;
  std::unique_ptr<torch::optim::Optimizer> inner;
  DistributedOptimizerOptions options;
  optim::Kind kind;
  at::Device device = at::kCPU;  // the parameters' (set by initialize)
  optim::LossScaler scaler;
  bool fp16 = false;
  bool mixed = false;  // 16-bit parameters: fp32 masters (set by initialize)
  bool initialized = false;
  bool overflow = false;         // inf or NaN in the gradients of some rank (when overflow_known)
  bool overflow_known = true;    // overflow holds found_inf's value
  bool settled = true;           // settle() ran for the last step()
  int64_t nonfinite_in_a_row = 0;  // skipped steps without fp16 (its scaler handles them)
  int64_t nonfinite_total = 0;
  void skip_nonfinite();  // counts, warns, throws past max_nonfinite_steps
  int64_t prepared_for = -1;  // the reducer step whose gradients are prepared
  int64_t clipped_for = -1;   // the reducer step whose gradients clip_master_grads scaled

  dp::GradientReducer* reducer = nullptr;
  std::vector<int> param_group;       // per reducer parameter: optimizer group or -1
  std::vector<dp::Segment> segments;  // owned elements of optimized parameters
  std::vector<optim::Run> runs;
  std::map<std::string, at::Tensor> state;  // local layout; file-backed when offloaded
  bool offloaded = false;                   // Config::offload_optimizer_state
  at::Tensor master;                        // fp32, local layout (mixed only)
  std::vector<int64_t> steps;               // per group, on the host (as of the last settle)
  std::vector<at::Tensor> step_counts;      // per group, 0-dim float on the device: the fused
                                            // kernels' state_steps, advanced by 1 - found_inf
  double inv_scale_value = 1;               // what inv_scale holds (host-side scale)
  RunViews cached_views;
  at::Tensor found_inf;  // prepare()'s inf/NaN flag (0-dim float, on the device)
  at::Tensor inv_scale;  // 1 / the loss scale, on the device
  // fp16's dynamic scale on the device where LossScaler::device_rule() holds (undefined
  // otherwise): what smp::step multiplies the loss by, and _amp_update_scale_'s tracker.
  at::Tensor scale, growth_tracker;
  std::vector<char> momentum_started;       // per group (SGD), on the host
  std::vector<at::Tensor> lrs;  // per group, 0-dim on the device (options.lr_on_device only)
  std::optional<OptimizerStateDict> pending_local;
  std::optional<OptimizerStateDict> pending_full;
};

}  // namespace smp
