// DistributedOptimizer: runs, preparation (unscale, overflow), the update, write-back and
// all-gather, clipping (see distributed_optimizer.h). State dicts live in state_dict.cpp.
#include "smp/distributed_optimizer.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>

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
  if (im.overflow) {
    im.scaler.update(true);
    im.model.set_loss_scale(im.scaler.scale());
    return;
  }
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

double DistributedOptimizer::clip_master_grads(double max_norm) {
  Impl& im = ready();
  im.clipped_for = im.reducer->steps_finished();
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
  const double norm = std::sqrt(total.item<double>());
  const double coef = max_norm / (norm + 1e-6);
  if (coef < 1) {
    for (const Run& run : im.runs) im.grad_view(run).mul_(coef);
  }
  return norm;
}

}  // namespace smp
