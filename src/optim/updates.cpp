// SGD, Adam and AdamW on flat runs, in torch::optim's order of operations (see updates.h).
#include "updates.h"

#include <ATen/ATen.h>

#include <cmath>

namespace smp::optim {

void sgd_update(at::Tensor& param, const at::Tensor& grad, at::Tensor& momentum_buffer, bool first,
                const torch::optim::SGDOptions& o) {
  at::Tensor d_p = grad;
  if (o.weight_decay() != 0) d_p = d_p.add(param, o.weight_decay());
  if (o.momentum() != 0) {
    if (first) {
      momentum_buffer.copy_(d_p);
    } else {
      momentum_buffer.mul_(o.momentum()).add_(d_p, 1 - o.dampening());
    }
    d_p = o.nesterov() ? d_p.add(momentum_buffer, o.momentum()) : momentum_buffer;
  }
  param.add_(d_p, -1 * o.lr());
}

namespace {

// The moments, the denominator and the update shared by Adam and AdamW.
template <typename Options>
void adam_core(at::Tensor& param, const at::Tensor& grad, at::Tensor& exp_avg,
               at::Tensor& exp_avg_sq, at::Tensor& max_exp_avg_sq, int64_t step, const Options& o) {
  const double beta1 = std::get<0>(o.betas());
  const double beta2 = std::get<1>(o.betas());
  const double bias_correction1 = 1 - std::pow(beta1, step);
  const double bias_correction2 = 1 - std::pow(beta2, step);
  exp_avg.mul_(beta1).add_(grad, 1 - beta1);
  exp_avg_sq.mul_(beta2).addcmul_(grad, grad, 1 - beta2);
  at::Tensor denom;
  if (o.amsgrad()) {
    at::max_out(max_exp_avg_sq, exp_avg_sq, max_exp_avg_sq);
    denom = (max_exp_avg_sq.sqrt() / std::sqrt(bias_correction2)).add_(o.eps());
  } else {
    denom = (exp_avg_sq.sqrt() / std::sqrt(bias_correction2)).add_(o.eps());
  }
  const double step_size = o.lr() / bias_correction1;
  param.addcdiv_(exp_avg, denom, -step_size);
}

}  // namespace

void adam_update(at::Tensor& param, const at::Tensor& grad, at::Tensor& exp_avg,
                 at::Tensor& exp_avg_sq, at::Tensor& max_exp_avg_sq, int64_t step,
                 const torch::optim::AdamOptions& o) {
  // L2 penalty folded into the gradient (Adam's weight_decay).
  const at::Tensor g = o.weight_decay() != 0 ? grad.add(param, o.weight_decay()) : grad;
  adam_core(param, g, exp_avg, exp_avg_sq, max_exp_avg_sq, step, o);
}

void adamw_update(at::Tensor& param, const at::Tensor& grad, at::Tensor& exp_avg,
                  at::Tensor& exp_avg_sq, at::Tensor& max_exp_avg_sq, int64_t step,
                  const torch::optim::AdamWOptions& o) {
  // Decoupled weight decay, applied to the parameter before the moments (AdamW).
  if (o.weight_decay() != 0) param.mul_(1 - o.lr() * o.weight_decay());
  adam_core(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, step, o);
}

}  // namespace smp::optim
