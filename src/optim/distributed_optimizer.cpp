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

namespace {
constexpr int64_t kUpdateChunk = 1 << 18;  // elements: 1 MiB per fp32 tensor
}  // namespace

DistributedOptimizer::DistributedOptimizer(DistributedModel& model,
                                           std::unique_ptr<torch::optim::Optimizer> optimizer,
                                           DistributedOptimizerOptions options)
    : impl_(std::make_unique<Impl>(model, std::move(optimizer), options)) {}

DistributedOptimizer::~DistributedOptimizer() = default;

torch::optim::Optimizer& DistributedOptimizer::optimizer() { return *impl_->inner; }
double DistributedOptimizer::loss_scale() const { return impl_->scaler.scale(); }
bool DistributedOptimizer::overflow() const { return impl_->overflow; }
int64_t DistributedOptimizer::skipped_steps() const { return impl_->nonfinite_total; }

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
    clip_master_grads(im.model.context().config().sdp_gradient_clipping);
  }
  if (im.overflow && im.fp16) {
    im.scaler.update(true);
    im.model.set_loss_scale(im.scaler.scale());
    return;
  }
  if (im.overflow) {
    skip_nonfinite(im);
    return;
  }
  im.nonfinite_in_a_row = 0;
  for (auto& count : im.steps) ++count;
  // Element-wise updates in cache-sized pieces: each piece goes through all of the update's
  // operations while it is in cache (3-4x faster here than whole runs); the results are those
  // of whole runs.
  for (const Run& run : im.runs) {
    for (int64_t off = 0; off < run.numel; off += kUpdateChunk) {
      Run piece = run;
      piece.flat += off;
      piece.local += off;
      piece.numel = std::min(kUpdateChunk, run.numel - off);
      im.update(piece);
    }
  }
  std::fill(im.momentum_started.begin(), im.momentum_started.end(), 1);
  im.write_back();
  im.scaler.update(false);
  im.model.set_loss_scale(im.scaler.scale());
}

void DistributedOptimizer::skip_nonfinite(Impl& im) {
  ++im.nonfinite_in_a_row;
  ++im.nonfinite_total;
  const int64_t limit = im.options.max_nonfinite_steps;
  const std::string counts = std::to_string(im.nonfinite_in_a_row) + " in a row, " +
                             std::to_string(im.nonfinite_total) + " in all";
  if (limit > 0 && im.nonfinite_in_a_row >= limit) {
    throw Error("smp: DistributedOptimizer.step: inf or NaN gradients in " + std::to_string(limit) +
                " steps in a row (" + counts + "); stopping (max_nonfinite_steps = " + std::to_string(limit) +
                "; lower the learning rate, clip gradients, or check the data)");
  }
  if (im.model.context().rank() == 0) {
    std::fprintf(stderr, "smp warning: optimizer step skipped: inf or NaN in the gradients (%s; stops after %lld "
                 "in a row)\n", counts.c_str(), static_cast<long long>(limit));
  }
}

double DistributedOptimizer::master_grad_norm() {
  Impl& im = ready();
  if (im.overflow) return -1;
  double sum_sq = 0;
  for (const Run& run : im.runs) {
    if (!run.in_norm) continue;
    const at::Tensor g = im.grad_view(run);
    sum_sq += g.dot(g).item<double>();
  }
  // Each element once: the runs counted in the norm, summed over the ranks holding the rest.
  at::Tensor total = at::full({1}, sum_sq, at::kDouble);
  im.reducer->store().sum_norm(total);
  return std::sqrt(total.item<double>());
}

double DistributedOptimizer::clip_master_grads(double max_norm) {
  Impl& im = ready();
  im.clipped_for = im.reducer->steps_finished();
  const double norm = master_grad_norm();
  if (norm < 0) return norm;
  const double coef = max_norm / (norm + 1e-6);
  if (coef < 1) {
    for (const Run& run : im.runs) im.grad_view(run).mul_(coef);
  }
  return norm;
}

}  // namespace smp
