// module_layer: a libtorch module as a pipeline layer.
#include "smp/pipeline/layer.h"

#include <torch/nn/module.h>

namespace smp::pipeline {

Layer module_layer(std::string name, std::shared_ptr<torch::nn::Module> module,
                   std::function<Values(const Values&)> forward) {
  Layer layer;
  layer.name = std::move(name);
  layer.forward = std::move(forward);
  for (const auto& item : module->named_parameters(/*recurse=*/true)) {
    layer.parameter_names.push_back(item.key());
    layer.parameters.push_back(item.value());
  }
  layer.owner = std::move(module);
  return layer;
}

}  // namespace smp::pipeline
