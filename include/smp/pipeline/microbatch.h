// Microbatches: splitting a batch along its batch axis, and SMP's StepOutput.
#pragma once

#include <map>
#include <set>
#include <vector>

#include <ATen/core/Tensor.h>

#include "smp/layer/layer.h"

namespace smp::pipeline {

// How each tensor of a batch splits (SMP's input_split_axes and non_split_inputs): by index
// into the batch; default axis 0.
struct SplitSpec {
  std::map<int, int64_t> axes;
  std::set<int> non_split;
};

// Splits every tensor of `batch` into `num_microbatches` equal slices along its axis (views,
// no copies); non-split tensors are repeated as they are. Throws smp::ConfigError naming the
// tensor's index, its size along the axis and the microbatch count when they do not divide,
// and when an axis is out of range.
std::vector<Values> split_microbatches(const Values& batch, int num_microbatches,
                                       const SplitSpec& spec = {});

}  // namespace smp::pipeline

namespace smp {

// SMP's StepOutput: one value a step returned, per microbatch.
class StepOutput {
 public:
  explicit StepOutput(std::vector<at::Tensor> outputs) : outputs_(std::move(outputs)) {}
  // The value of each microbatch, in order.
  const std::vector<at::Tensor>& outputs() const { return outputs_; }
  at::Tensor reduce_mean() const;  // mean over microbatches
  at::Tensor reduce_sum() const;
  at::Tensor concat() const;  // along the batch axis (0)
  at::Tensor stack() const;   // a new leading axis of size microbatches

 private:
  std::vector<at::Tensor> outputs_;
};

}  // namespace smp
