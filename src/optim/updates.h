// One optimizer step on a contiguous run of fp32 elements, written op for op as libtorch's
// torch::optim SGD, Adam and AdamW, so that a run gives what torch::optim gives on the same
// elements. `param`, `grad` and the state tensors are views of equal size; the caller owns
// them. Internal to smp_optim.
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/optim/adam.h>
#include <torch/optim/adamw.h>
#include <torch/optim/sgd.h>

#include <cstdint>

namespace smp::optim {

// `first`: the momentum buffer is new (torch::optim starts it as a copy of the gradient).
void sgd_update(at::Tensor& param, const at::Tensor& grad, at::Tensor& momentum_buffer, bool first,
                const torch::optim::SGDOptions& o);

// `step`: this group's step count after incrementing (1 on the first step). `max_exp_avg_sq`
// is used only with amsgrad.
void adam_update(at::Tensor& param, const at::Tensor& grad, at::Tensor& exp_avg,
                 at::Tensor& exp_avg_sq, at::Tensor& max_exp_avg_sq, int64_t step,
                 const torch::optim::AdamOptions& o);
void adamw_update(at::Tensor& param, const at::Tensor& grad, at::Tensor& exp_avg,
                  at::Tensor& exp_avg_sq, at::Tensor& max_exp_avg_sq, int64_t step,
                  const torch::optim::AdamWOptions& o);

}  // namespace smp::optim
