// DistributedOptimizer: runs, preparation (unscale, overflow), the update, write-back and
// all-gather, clipping (see distributed_optimizer.h). State dicts live in state_dict.cpp.
#include "smp/distributed_optimizer.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>

#include "optimizer_impl.h"
#include "smp/core/error.h"

namespace smp {

using optim::Run;

DistributedOptimizer::DistributedOptimizer(DistributedModel& model,
                                           std::unique_ptr<torch::optim::Optimizer> optimizer,
                                           DistributedOptimizerOptions options)
    : impl_(std::make_unique<Impl>(model, std::move(optimizer), options)) {}

DistributedOptimizer::~DistributedOptimizer() = default;

torch::optim::Optimizer& DistributedOptimizer::optimizer() { return *impl_->inner; }
void DistributedOptimizer::upload_learning_rates() {
  if (impl_->initialized) impl_->upload_learning_rates();  // initialize() uploads them too
}

double DistributedOptimizer::loss_scale() {
  impl_->settle();
  return impl_->scaler.scale();
}

bool DistributedOptimizer::overflow() { return impl_->initialized && impl_->read_overflow(); }

int64_t DistributedOptimizer::skipped_steps() {
  impl_->settle();
  return impl_->nonfinite_total;
}

at::Tensor DistributedOptimizer::overflow_tensor() { return ready().found_inf; }

void DistributedOptimizer::record_overflow(bool overflow) {
  Impl& im = *impl_;
  if (!im.initialized) throw Error("DistributedOptimizer::record_overflow: no step() was taken yet");
  im.overflow = overflow;
  im.overflow_known = true;
  im.settle();
}

void DistributedOptimizer::step_replayed() {
  Impl& im = *impl_;
  if (!im.initialized) throw Error("DistributedOptimizer::step_replayed: no step() was taken yet");
  im.settle();
  im.settled = false;
  im.overflow_known = false;
}

DistributedOptimizer::Impl& DistributedOptimizer::ready() {
  if (!impl_->initialized) impl_->initialize();
  impl_->prepare();
  return *impl_;
}

void DistributedOptimizer::zero_grad() {
  if (impl_->model.partitioned()) {
    impl_->model.gradient_reducer().zero_grad();
  } else {
    impl_->inner->zero_grad();
  }
}

int64_t DistributedOptimizer::state_bytes() const {
  int64_t bytes = impl_->master.defined() ? static_cast<int64_t>(impl_->master.nbytes()) : 0;
  for (const auto& [name, t] : impl_->state) bytes += static_cast<int64_t>(t.nbytes());
  return bytes;
}

void DistributedOptimizer::step() {
  Impl& im = ready();
  // SMP: under sharded data parallelism the optimizer clips at sdp_gradient_clipping itself,
  // unless clip_master_grads already did for these gradients.
  if (im.model.context().sdp_degree() > 1 && im.clipped_for != im.reducer->steps_finished()) {
    clip_master_grads_tensor(im.model.context().config().sdp_gradient_clipping);
  }
  im.settle();  // a second step() on the same gradients: the first one's bookkeeping
  im.settled = false;
  if (im.flag_needed_on_host() && im.read_overflow()) {
    im.settle();
    return;
  }
  // No wait for the flag: the kernels skip on the device where it is set, the step counts
  // advance there by 1 - flag (before the kernels, which read the new count).
  if (im.kind != optim::Kind::kSgd && !im.step_counts.empty()) {
    at::_foreach_add_(im.step_counts, at::rsub(im.found_inf, 1));
  }
  // One fused multi-tensor update per parameter group (PyTorch's _fused_adamw_ and kin, on the
  // CPU as on CUDA: on the CPU 3x faster than the same operations run by run in cache-sized
  // pieces; on a GPU a handful of kernels instead of thousands).
  im.release_state();  // what a checkpoint read or a load brought in since the last step
  im.update();
  im.reducer->store().after_update();  // the new values (update() wrote fp16/bf16's masters back)
  if (im.scale.defined()) {
    const optim::DynamicLossArgs& a = im.scaler.args();
    at::_amp_update_scale_(im.scale, im.growth_tracker, im.found_inf, a.scale_factor,
                           1.0 / a.scale_factor, a.scale_window);
    im.scale.clamp_min_(a.min_scale);
  }
  if (im.overflow_known) im.settle();  // read in this step already: nothing to wait for
}

at::Tensor DistributedOptimizer::master_grad_norm_tensor() {
  Impl& im = ready();
  // One sum of squares over every run counted in the norm, on the gradients' device, in fp64
  // from fp64 per-run norms; then summed over the ranks holding the rest (each element once).
  const std::vector<at::Tensor>& counted = im.views().norm_grads;
  at::Tensor sum_sq;
  if (counted.empty()) {
    sum_sq = at::zeros({}, at::TensorOptions().dtype(at::kDouble).device(im.device));
  } else {
    const at::Tensor norms = at::stack(at::_foreach_norm(counted, 2, at::kDouble));
    sum_sq = at::dot(norms, norms);
  }
  im.reducer->store().sum_norm(sum_sq);
  return sum_sq.sqrt_();
}

at::Tensor DistributedOptimizer::clip_master_grads_tensor(double max_norm) {
  Impl& im = ready();
  im.clipped_for = im.reducer->steps_finished();
  at::Tensor norm = master_grad_norm_tensor();
  // The coefficient stays on the device: no host round trip (x * 1.0 leaves x as it was). On
  // an overflow it scales gradients the update skips anyway.
  const std::vector<at::Tensor>& grads = im.views().grads;
  if (!grads.empty()) {
    const at::Tensor coef = norm.to(at::kFloat).add_(1e-6).reciprocal_().mul_(max_norm).clamp_max_(1.0);
    at::_foreach_mul_(grads, coef);
  }
  return norm;
}

double DistributedOptimizer::master_grad_norm() {
  const at::Tensor norm = master_grad_norm_tensor();
  return impl_->read_overflow() ? -1.0 : norm.item<double>();
}

double DistributedOptimizer::clip_master_grads(double max_norm) {
  const at::Tensor norm = clip_master_grads_tensor(max_norm);
  return impl_->read_overflow() ? -1.0 : norm.item<double>();
}

}  // namespace smp
