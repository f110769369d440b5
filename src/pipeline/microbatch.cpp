// Splitting a batch into microbatches, and StepOutput's reductions.
#include "smp/pipeline/microbatch.h"

#include <ATen/ATen.h>

#include "smp/core/error.h"

namespace smp::pipeline {

std::vector<Values> split_microbatches(const Values& batch, int num_microbatches,
                                       const SplitSpec& spec) {
  if (num_microbatches < 1) {
    throw ConfigError("microbatches: got " + std::to_string(num_microbatches) +
                      "; allowed: an integer >= 1");
  }
  std::vector<Values> out(num_microbatches);
  for (int i = 0; i < static_cast<int>(batch.size()); ++i) {
    const at::Tensor& t = batch[i];
    if (spec.non_split.count(i) || !t.defined()) {
      for (auto& mb : out) mb.push_back(t);
      continue;
    }
    const auto it = spec.axes.find(i);
    const int64_t axis = it == spec.axes.end() ? 0 : it->second;
    if (axis < 0 || axis >= t.dim()) {
      throw ConfigError("input_split_axes: batch tensor " + std::to_string(i) + " has " +
                        std::to_string(t.dim()) + " dims; split axis " + std::to_string(axis) +
                        " is out of range (allowed 0.." + std::to_string(t.dim() - 1) +
                        "; list it in non_split_inputs to pass it whole)");
    }
    if (t.size(axis) % num_microbatches != 0) {
      throw ConfigError("microbatches: batch tensor " + std::to_string(i) + " has size " +
                        std::to_string(t.size(axis)) + " along axis " + std::to_string(axis) +
                        ", which " + std::to_string(num_microbatches) +
                        " microbatches do not divide; use a batch size divisible by "
                        "microbatches");
    }
    const auto slices = t.chunk(num_microbatches, axis);
    for (int m = 0; m < num_microbatches; ++m) out[m].push_back(slices[m]);
  }
  return out;
}

}  // namespace smp::pipeline

namespace smp {

at::Tensor StepOutput::reduce_mean() const { return at::stack(outputs_).mean(0); }
at::Tensor StepOutput::reduce_sum() const { return at::stack(outputs_).sum(0); }
at::Tensor StepOutput::concat() const { return at::cat(outputs_, 0); }
at::Tensor StepOutput::stack() const { return at::stack(outputs_); }

}  // namespace smp
