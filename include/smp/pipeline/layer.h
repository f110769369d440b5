// Layer: one element of the ordered list a pipeline splits.
//
// A layer takes a tuple of tensors and returns one (hidden states plus a mask, say; tensors
// that need no gradient simply travel along). It is any callable with parameters: a libtorch
// module through module_layer(), or, later, a Python module handed in by the bindings. A stage
// is a contiguous run of layers.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

namespace torch::nn {
class Module;
}

namespace smp::pipeline {

// A layer's inputs or outputs, in order.
using Values = std::vector<at::Tensor>;

struct Layer {
  std::string name;
  std::function<Values(const Values&)> forward;
  // The tensors it trains, by identity: two layers listing one tensor share it (a tied
  // embedding) and are kept in one stage.
  std::vector<at::Tensor> parameters;
  // Names of those tensors ("weight"), parallel to `parameters`.
  std::vector<std::string> parameter_names;
  // Keeps whatever owns the parameters alive (the module).
  std::shared_ptr<void> owner;
};

// A layer over a libtorch module: `forward` calls the module; parameters are the module's
// (recursively) with their names.
Layer module_layer(std::string name, std::shared_ptr<torch::nn::Module> module,
                   std::function<Values(const Values&)> forward);

}  // namespace smp::pipeline
