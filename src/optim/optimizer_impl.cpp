// DistributedOptimizer::Impl: construction checks, runs, preparation and write-back
// (see optimizer_impl.h).
#include "optimizer_impl.h"
#include "smp/core/error.h"
#include "smp/core/files.h"
#include "state_file.h"

#include <ATen/ATen.h>
#include <torch/optim/adam.h>
#include <torch/optim/adamw.h>
#include <torch/optim/sgd.h>

#include <algorithm>
#include <cstdio>
#include <string>


namespace smp::optim {

const char* to_string(Kind kind) {
  switch (kind) {
    case Kind::kSgd:
      return "sgd";
    case Kind::kAdam:
      return "adam";
    case Kind::kAdamW:
      return "adamw";
  }
  return "?";
}

namespace {

Kind kind_of(torch::optim::Optimizer* optimizer) {
  if (optimizer == nullptr) throw ConfigError("DistributedOptimizer: the optimizer is null");
  if (dynamic_cast<torch::optim::SGD*>(optimizer)) return Kind::kSgd;
  if (dynamic_cast<torch::optim::AdamW*>(optimizer)) return Kind::kAdamW;
  if (dynamic_cast<torch::optim::Adam*>(optimizer)) return Kind::kAdam;
  throw ConfigError(
      "DistributedOptimizer: unsupported optimizer type; allowed: "
      "torch::optim::SGD, torch::optim::Adam, torch::optim::AdamW");
}

LossScaler make_scaler(const Config& config, const DistributedOptimizerOptions& o) {
  const bool fp16 = config.fp16;
  if (!fp16 && (o.dynamic_loss_scale || o.static_loss_scale != 1.0)) {
    throw ConfigError(
        "DistributedOptimizer: static_loss_scale / dynamic_loss_scale apply only "
        "with \"fp16\": true; got static_loss_scale " +
        std::to_string(o.static_loss_scale) + ", dynamic_loss_scale " +
        (o.dynamic_loss_scale ? "true" : "false"));
  }
  if (o.max_nonfinite_steps < 0) {
    throw ConfigError("DistributedOptimizer: max_nonfinite_steps: got " + std::to_string(o.max_nonfinite_steps) +
                      "; allowed: an integer >= 0 (0: never stop)");
  }
  return LossScaler(fp16 && o.dynamic_loss_scale, o.static_loss_scale, o.dynamic_loss_args);
}

bool amsgrad(const torch::optim::Optimizer& opt, Kind kind) {
  using torch::optim::AdamOptions;
  using torch::optim::AdamWOptions;
  for (const auto& g : opt.param_groups()) {
    const bool on = kind == Kind::kAdam    ? static_cast<const AdamOptions&>(g.options()).amsgrad()
                    : kind == Kind::kAdamW ? static_cast<const AdamWOptions&>(g.options()).amsgrad()
                                           : false;
    if (on) return true;
  }
  return false;
}

}  // namespace
}  // namespace smp::optim

namespace smp {

using optim::Kind;
using optim::Run;

DistributedOptimizer::Impl::Impl(DistributedModel& m, std::unique_ptr<torch::optim::Optimizer> opt,
                                 const DistributedOptimizerOptions& o)
    : model(m),
      inner(std::move(opt)),
      options(o),
      kind(optim::kind_of(inner.get())),
      scaler(optim::make_scaler(model.context().config(), o)) {
  fp16 = model.context().config().fp16;
  model.set_loss_scale(scaler.scale());
  model.set_loss_scale_tensor({});  // an earlier optimizer's device scale is not this one's
}

std::vector<std::string> DistributedOptimizer::Impl::state_names() const {
  if (kind == Kind::kSgd) return {"momentum_buffer"};
  if (optim::amsgrad(*inner, kind)) return {"exp_avg", "exp_avg_sq", "max_exp_avg_sq"};
  return {"exp_avg", "exp_avg_sq"};
}

void DistributedOptimizer::Impl::initialize() {
  if (!model.partitioned()) {
    throw Error("DistributedOptimizer: the model is not partitioned yet; run smp::step first");
  }
  reducer = &model.gradient_reducer();
  // 16-bit parameters (fp16/bf16, or a model built so): fp32 masters, next to the reducer's
  // fp32 gradients.
  mixed = reducer->grad_dtype() != reducer->param_dtype();
  const dp::FlatLayout& layout = reducer->layout();
  // Which optimizer group each of this rank's parameters is in (-1: not optimized).
  std::map<const void*, int> group_of;
  const auto& groups = inner->param_groups();
  for (size_t g = 0; g < groups.size(); ++g) {
    for (const at::Tensor& p : groups[g].params())
      group_of[p.unsafeGetTensorImpl()] = static_cast<int>(g);
  }
  for (const dp::ReducedParam& p : reducer->params()) {
    auto it = group_of.find(p.tensor.unsafeGetTensorImpl());
    param_group.push_back(it == group_of.end() ? -1 : it->second);
  }
  // Owned segments of optimized parameters, merged into runs.
  const int dp_rank = reducer->rank_in(dp::ReduceGroup::kDp);
  const int rdp_rank = reducer->rank_in(dp::ReduceGroup::kRdp);
  for (const dp::Segment& s : layout.owned_segments(dp_rank, rdp_rank)) {
    const int g = param_group[s.param];
    if (g < 0) continue;
    segments.push_back(s);
    const dp::Bucket& bucket = layout.buckets()[s.bucket];
    // A tied copy (model.options().tied_copies) is counted on the stage holding the original.
    const bool tied_copy = model.options().tied_copies.count(reducer->params()[s.param].name) > 0;
    const bool in_norm = !tied_copy && reducer->store().counts_in_norm(bucket);
    if (!runs.empty() && runs.back().group == g && runs.back().bucket == s.bucket &&
        runs.back().in_norm == in_norm && runs.back().flat + runs.back().numel == s.flat_offset) {
      runs.back().numel += s.numel;
    } else {
      runs.push_back({g, s.bucket, s.flat_offset, s.local_offset, s.numel, in_norm});
    }
  }
  // State, masters and step counts.
  const at::ScalarType dtype = mixed ? at::kFloat : reducer->param_dtype();
  device = reducer->params().empty() ? at::Device(at::kCPU) : reducer->params()[0].tensor.device();
  const auto opts = at::TensorOptions().dtype(dtype).device(device);
  offloaded = model.context().config().offload_optimizer_state;
  if (offloaded && !device.is_cpu()) {
    throw ConfigError("config key \"offload_optimizer_state\": got true with parameters on " + device.str() +
                      "; allowed: host (CPU) parameters only (offloading a GPU's optimizer state is not built)");
  }
  if (options.offload_window < 1) {
    throw ConfigError("DistributedOptimizer: offload_window: got " + std::to_string(options.offload_window) +
                      "; allowed: an integer >= 1 (elements)");
  }
  for (const std::string& name : state_names()) {
    state[name] = offloaded ? optim::file_backed_zeros(layout.local_numel(), dtype, files::temp_dir())
                            : at::zeros({layout.local_numel()}, opts);
  }
  if (mixed) {
    master = offloaded ? optim::file_backed_zeros(layout.local_numel(), at::kFloat, files::temp_dir())
                       : at::zeros({layout.local_numel()}, opts);
    for (const Run& run : runs) {
      master.narrow(0, run.local, run.numel).copy_(param_source(run));
    }
  }
  steps.assign(groups.size(), 0);
  const auto flag_opts = at::TensorOptions().dtype(at::kFloat).device(device);
  for (size_t g = 0; g < groups.size(); ++g) step_counts.push_back(at::zeros({}, flag_opts));
  found_inf = at::zeros({}, flag_opts);
  inv_scale = at::ones({}, flag_opts);
  if (scaler.device_rule()) {
    // From here on the scale lives on the device: smp::step multiplies the loss by it.
    scale = at::empty({}, flag_opts);
    growth_tracker = at::empty({}, flag_opts.dtype(at::kInt));
    model.set_loss_scale(1.0);
    model.set_loss_scale_tensor(scale);
  }
  momentum_started.assign(groups.size(), 0);
  if (options.lr_on_device) {
    // fp64 on the CPU (its fused kernels read the value as a double: the same update as a
    // scalar lr); fp32 on a GPU (the CUDA kernels compute in fp32 either way).
    const auto lr_opts = flag_opts.dtype(device.is_cpu() ? at::kDouble : at::kFloat);
    for (size_t g = 0; g < groups.size(); ++g) lrs.push_back(at::empty({}, lr_opts));
    upload_learning_rates();
  }
  upload_counts_and_scale();
  initialized = true;
  apply_pending_loads();
}

void DistributedOptimizer::Impl::upload_learning_rates() {
  const auto& groups = inner->param_groups();
  for (size_t g = 0; g < lrs.size(); ++g) lrs[g].fill_(groups[g].options().get_lr());
}

void DistributedOptimizer::Impl::upload_counts_and_scale() {
  for (size_t g = 0; g < steps.size(); ++g) step_counts[g].fill_(static_cast<double>(steps[g]));
  if (scale.defined()) {
    scale.fill_(scaler.scale());
    growth_tracker.fill_(scaler.growth_tracker());
  } else {
    model.set_loss_scale(scaler.scale());
  }
}

at::Tensor DistributedOptimizer::Impl::param_source(const Run& run) const {
  return reducer->store().params(run.flat, run.local, run.numel);
}

at::Tensor DistributedOptimizer::Impl::param_view(const Run& run) const {
  if (mixed) return master.narrow(0, run.local, run.numel);
  return param_source(run);
}

at::Tensor DistributedOptimizer::Impl::grad_view(const Run& run) const {
  return reducer->store().grads(run.flat, run.local, run.numel);
}

at::Tensor DistributedOptimizer::Impl::state_view(const std::string& name, const Run& run) const {
  auto it = state.find(name);
  return it == state.end() ? at::Tensor() : it->second.narrow(0, run.local, run.numel);
}

const DistributedOptimizer::Impl::RunViews& DistributedOptimizer::Impl::views() {
  const dp::GradientStore& store = reducer->store();
  std::vector<std::pair<const void*, int64_t>> key;
  const auto add = [&](const at::Tensor& t) {
    key.emplace_back(t.defined() ? t.storage().unsafeGetStorageImpl() : nullptr,
                     t.defined() ? t.storage_offset() : 0);
  };
  add(store.grads_buffer());
  add(store.params_buffer());
  add(master);
  for (const auto& [name, t] : state) add(t);
  if (key == cached_views.key) return cached_views;
  RunViews v;
  v.key = std::move(key);
  for (const Run& run : runs) {
    const at::Tensor grad = grad_view(run);
    v.grads.push_back(grad);
    if (run.in_norm) v.norm_grads.push_back(grad);
  }
  // Windows over the local elements: one for in-memory state, offload_window each when the
  // state is in a file. A run crossing a window's edge is updated in pieces (elementwise: the
  // same result).
  const int64_t local_numel = reducer->layout().local_numel();
  const int64_t width = offloaded ? options.offload_window : std::max<int64_t>(local_numel, 1);
  for (int64_t begin = 0; begin < std::max<int64_t>(local_numel, 1); begin += width) {
    v.windows.push_back({begin, std::min(width, local_numel - begin), {}});
    v.windows.back().groups.resize(steps.size());
  }
  const bool sgd = kind == Kind::kSgd;
  for (const Run& run : runs) {
    for (int64_t at = run.local; at < run.local + run.numel;) {
      Window& w = v.windows[at / width];
      Run piece = run;
      piece.local = at;
      piece.flat = run.flat + (at - run.local);
      piece.numel = std::min(run.local + run.numel, w.local + w.numel) - at;
      at += piece.numel;
      if (mixed) w.masters.push_back(param_view(piece)), w.sources.push_back(param_source(piece));
      GroupViews& g = w.groups[run.group];
      g.params.push_back(param_view(piece));
      g.grads.push_back(grad_view(piece));
      g.m.push_back(state_view(sgd ? "momentum_buffer" : "exp_avg", piece));
      if (!sgd) g.v.push_back(state_view("exp_avg_sq", piece)), g.vmax.push_back(state_view("max_exp_avg_sq", piece));
    }
  }
  cached_views = std::move(v);
  return cached_views;
}

void DistributedOptimizer::Impl::update() {
  for (const Window& w : views().windows) {
    for (size_t g = 0; g < w.groups.size(); ++g) update_group(w.groups[g], static_cast<int>(g));
    if (!w.sources.empty()) at::_foreach_copy_(w.sources, w.masters);  // the new values, in 16 bits
    if (!offloaded) continue;
    for (const auto& [name, t] : all_state()) optim::release(t.narrow(0, w.local, w.numel));
  }
  // A read fault maps the cached pages around it too (the kernel's fault-around), earlier
  // windows' included: drop those as well.
  release_state();
}

void DistributedOptimizer::Impl::release_state() {
  if (!offloaded) return;
  for (const auto& [name, t] : all_state()) optim::release(t);
}

void DistributedOptimizer::Impl::prepare() {
  if (prepared_for == reducer->steps_finished()) return;
  settle();  // the last step's flag is about to be overwritten
  prepared_for = reducer->steps_finished();
  const std::vector<at::Tensor>& grads = views().grads;  // fp32 under fp16/bf16 too
  // Unscaled by what smp::step multiplied the loss by, and checked for inf or NaN, in one pass
  // (AMP's fused check): in every precision an inf or NaN gradient would reach the update
  // (clipping's coefficient comparison is false for NaN), so the step is skipped instead.
  if (scale.defined()) {
    at::reciprocal_out(inv_scale, scale);  // a power of two: exact
  } else {
    const double inv = 1.0 / model.loss_scale();
    if (inv != inv_scale_value) inv_scale.fill_(inv), inv_scale_value = inv;
  }
  found_inf.zero_();
  if (!grads.empty()) at::_amp_foreach_non_finite_check_and_unscale_(grads, found_inf, inv_scale);
  // Every rank skips together: an overflow anywhere is an overflow everywhere. (Alone, no
  // collective: on a GPU its wait would poll the host, which a captured graph cannot.)
  comm::Communicator& world = model.context().group(CommGroup::WORLD);
  if (world.size() > 1) world.all_reduce(found_inf, comm::ReduceOp::kMax).wait();
  overflow_known = false;
}

bool DistributedOptimizer::Impl::read_overflow() {
  if (!overflow_known) overflow = found_inf.item<float>() != 0, overflow_known = true;
  return overflow;
}

bool DistributedOptimizer::Impl::flag_needed_on_host() const {
  // SGD's first step with momentum and dampening starts the buffers undamped (is_first_step):
  // only a step taken does.
  if (kind == Kind::kSgd) {
    for (size_t g = 0; g < momentum_started.size(); ++g) {
      if (first_sgd_step(static_cast<int>(g))) return true;
    }
  }
  // A skip that would be the max_nonfinite_steps-th in a row throws from step() itself.
  const int64_t limit = options.max_nonfinite_steps;
  if (!fp16 && limit > 0 && nonfinite_in_a_row + 1 >= limit) return true;
  return scaler.dynamic() && !scale.defined();  // the host's scale is the next step's
}

bool DistributedOptimizer::Impl::first_sgd_step(int group) const {
  // Without dampening the ordinary rule, buffer = momentum * buffer + gradient, starts the
  // zeroed buffers exactly as is_first_step's buffer = gradient does: no host read needed.
  const auto& o = static_cast<const torch::optim::SGDOptions&>(inner->param_groups().at(group).options());
  return o.momentum() != 0 && o.dampening() != 0 && !momentum_started[group];
}

void DistributedOptimizer::Impl::settle() {
  if (settled) return;
  settled = true;
  if (read_overflow()) {
    if (fp16) {
      scaler.update(true);
      if (!scale.defined()) model.set_loss_scale(scaler.scale());
    } else {
      skip_nonfinite();
    }
    return;
  }
  nonfinite_in_a_row = 0;
  for (auto& count : steps) ++count;
  std::fill(momentum_started.begin(), momentum_started.end(), 1);
  scaler.update(false);
  if (!scale.defined()) model.set_loss_scale(scaler.scale());
}

void DistributedOptimizer::Impl::skip_nonfinite() {
  ++nonfinite_in_a_row;
  ++nonfinite_total;
  const int64_t limit = options.max_nonfinite_steps;
  const std::string counts = std::to_string(nonfinite_in_a_row) + " in a row, " +
                             std::to_string(nonfinite_total) + " in all";
  if (limit > 0 && nonfinite_in_a_row >= limit) {
    throw Error("smp: DistributedOptimizer.step: inf or NaN gradients in " + std::to_string(limit) +
                " steps in a row (" + counts + "); stopping (max_nonfinite_steps = " + std::to_string(limit) +
                "; lower the learning rate, clip gradients, or check the data)");
  }
  if (model.context().rank() == 0) {
    std::fprintf(stderr, "smp warning: optimizer step skipped: inf or NaN in the gradients (%s; stops after %lld "
                 "in a row)\n", counts.c_str(), static_cast<long long>(limit));
  }
}

void DistributedOptimizer::Impl::update_group(const GroupViews& views, int group) {
  const auto& [params, grads, m, v, vmax] = views;
  if (params.empty()) return;
  const auto& options = inner->param_groups().at(group).options();
  // Every kernel skips the update on the device where found_inf is set.
  if (kind == Kind::kSgd) {
    const auto& o = static_cast<const torch::optim::SGDOptions&>(options);
    const at::TensorList momentum = o.momentum() != 0 ? at::TensorList(m) : at::TensorList();
    const bool first = first_sgd_step(group);
    if (!lrs.empty()) {
      at::_fused_sgd_(params, grads, momentum, o.weight_decay(), o.momentum(), lrs[group], o.dampening(),
                      o.nesterov(), /*maximize=*/false, first, std::nullopt, found_inf);
    } else {
      at::_fused_sgd_(params, grads, momentum, o.weight_decay(), o.momentum(), o.lr(), o.dampening(),
                      o.nesterov(), /*maximize=*/false, first, std::nullopt, found_inf);
    }
    return;
  }
  // The step count as the kernels read it: one tensor per parameter (here the group's one).
  const std::vector<at::Tensor> counts(params.size(), step_counts[group]);
  auto fused = [&](const auto& o, auto kernel) {
    const bool amsgrad = o.amsgrad();
    const at::TensorList max_v = amsgrad ? at::TensorList(vmax) : at::TensorList();
    const auto [beta1, beta2] = o.betas();
    if (!lrs.empty()) {
      kernel(params, grads, m, v, max_v, counts, lrs[group], beta1, beta2, o.weight_decay(), o.eps(),
             amsgrad, /*maximize=*/false, std::nullopt, found_inf);
    } else {
      kernel(params, grads, m, v, max_v, counts, o.lr(), beta1, beta2, o.weight_decay(), o.eps(),
             amsgrad, /*maximize=*/false, std::nullopt, found_inf);
    }
  };
  if (kind == Kind::kAdam) {
    fused(static_cast<const torch::optim::AdamOptions&>(options),
          [](auto&&... a) { at::_fused_adam_(a...); });
  } else {
    fused(static_cast<const torch::optim::AdamWOptions&>(options),
          [](auto&&... a) { at::_fused_adamw_(a...); });
  }
}

}  // namespace smp
