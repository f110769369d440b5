// StaticStep: the body of a CUDA-graph training step over static buffers (see graph_step.h).
#include "smp/train/graph_step.h"

#include <ATen/ATen.h>

#include <string>
#include <utility>

#include "smp/core/error.h"
#include "smp/train/trainer.h"

namespace smp::train {
namespace {

std::string shape(const at::Tensor& t) {
  std::string s = "(";
  for (int64_t d = 0; d < t.dim(); ++d) s += (d ? ", " : "") + std::to_string(t.size(d));
  return s + ")";
}

}  // namespace

StaticStep::StaticStep(DistributedModel& model, DistributedOptimizer& optimizer, LossFn loss_fn,
                       double grad_clip)
    : model_(model), optimizer_(optimizer), loss_fn_(std::move(loss_fn)), grad_clip_(grad_clip) {
  if (model_.context().pp_size() != 1) {
    throw ConfigError("training.cuda_graphs: got true with smp.pipeline_parallel_degree " +
                      std::to_string(model_.context().pp_size()) +
                      "; allowed: only with pipeline_parallel_degree 1");
  }
}

void StaticStep::load(const at::Tensor& x, const at::Tensor& y, const at::Device& device) {
  if (!x_.defined()) {
    x_ = at::empty(x.sizes(), x.options().device(device));
    y_ = at::empty(y.sizes(), y.options().device(device));
    figures_ = at::zeros({3}, at::TensorOptions().dtype(at::kDouble).device(device));
  }
  if (x.sizes() != x_.sizes() || y.sizes() != y_.sizes()) {
    throw ConfigError("training.cuda_graphs: a batch of shape " + shape(x) + " / labels " + shape(y) +
                      " after " + shape(x_) + " / " + shape(y_) +
                      "; allowed: the captured step's shapes only");
  }
  x_.copy_(x, /*non_blocking=*/true);
  y_.copy_(y, /*non_blocking=*/true);
  optimizer_.upload_learning_rates();
}

void StaticStep::run() {
  const std::vector<StepOutput> out = smp::step(model_, {x_}, {y_}, loss_fn_);
  const at::Tensor norm = grad_clip_ > 0 ? optimizer_.clip_master_grads_tensor(grad_clip_)
                                         : optimizer_.master_grad_norm_tensor();
  optimizer_.step();
  optimizer_.zero_grad();
  figures_.copy_(step_figures(out[0].reduce_mean(), norm, optimizer_.overflow_tensor()));
}

}  // namespace smp::train
