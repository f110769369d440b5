// The executor's split backward (kBackwardInput, then kBackwardWeight): two halves over one
// autograd graph that together do a whole backward's work once. The input half
// runs backward to the leaves only: a node where a path to a parameter branches off the paths
// to the leaves (a matrix product with a weight, say) computes only its input-side gradients
// there, and a hook keeps the gradients that flowed into it. The weight half runs each such
// node again from those gradients, asking only for its own parameters, so it computes just
// the weight-side gradients (the weight's matrix product) and walks no input path again; roots
// whose graph reaches parameters only start there. (PyTorch's stage_backward_weight does the
// same with gradient edges.)
#pragma once

#include <memory>
#include <utility>
#include <vector>

#include <torch/csrc/autograd/function.h>

#include "smp/layer/layer.h"

namespace smp::pipeline {

// One place the weight half starts from.
struct WeightStart {
  torch::autograd::edge_list roots;   // (node, input) pairs
  std::vector<at::Tensor> grads;      // parallel to roots, filled by the input half's hook
  torch::autograd::edge_list params;  // the parameters reached from here
};
struct SplitBackward {
  std::vector<std::shared_ptr<WeightStart>> starts;
  // Some weight-side node is reached from two starts (a weight transformed before two uses):
  // the graph must then outlive each start's walk.
  bool shared = false;
};

// The input half: gradients of `leaves` (undefined where unreached), given `roots` and their
// `grads` (an undefined one is a scalar loss's implicit 1). Keeps the graph for the weight half,
// whose starting points it returns.
std::pair<Values, SplitBackward> input_half(const Values& roots, const Values& grads,
                                            const Values& leaves,
                                            const std::vector<at::Tensor>& params);

// The weight half: each starting point's own parameters, accumulated into .grad (their
// AccumulateGrad hooks fire, as in a whole backward). Each walk frees what it ran through
// (unless starts share weight-side nodes): nothing runs it again.
void weight_half(const SplitBackward& split);

}  // namespace smp::pipeline
