// Whether the calling thread is inside activation checkpointing's recomputation: running a
// recomputed run's layers' forwards again, right before their backward. Wrappers around a
// layer's forward read it (sharded data parallelism keeps what a recompute gathers for the
// backward that follows at once); the pipeline executor sets it around each recomputed run.
#pragma once

#include <map>
#include <string>
#include <utility>
#include <vector>

#include <ATen/ATen.h>

#include "smp/layer/layer.h"

namespace smp {

bool recomputing();

// Marks the calling thread as recomputing while it lives.
class RecomputeScope {
 public:
  RecomputeScope();
  ~RecomputeScope();
  RecomputeScope(const RecomputeScope&) = delete;
  RecomputeScope& operator=(const RecomputeScope&) = delete;

 private:
  bool previous_;
};

// The generators a forward draws from: the default ones of the CPU and of `device`, and each
// layer's own state (Layer::get_state: dropout streams, BatchNorm's running statistics). A
// recompute starts from the states they had when its forward began, so dropout draws the same
// masks; profiling's trial runs put them back after (pipeline/profile.cpp).
struct RngState {
  std::vector<std::pair<at::Generator, at::Tensor>> generators;
  std::vector<std::pair<const Layer*, std::map<std::string, at::Tensor>>> layers;
};

// The states of the generators and of layers [begin, end).
RngState capture_rng(const std::vector<const Layer*>& layers, size_t begin, size_t end,
                     const at::Device& device);
void restore_rng(RngState& state);

}  // namespace smp
