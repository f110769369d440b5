// module_layer: a libtorch module as a pipeline layer.
#include "smp/layer/layer.h"

#include <map>

#include <ATen/ATen.h>
#include <torch/nn/module.h>

namespace smp {

Layer module_layer(std::string name, std::shared_ptr<torch::nn::Module> module,
                   std::function<Values(const Values&)> forward) {
  Layer layer;
  layer.name = std::move(name);
  layer.forward = std::move(forward);
  // Which parameters are tensor-parallel shards: ask the submodule that owns each one.
  std::map<std::string, ShardSpec> shards;
  for (const auto& sub : module->named_modules()) {
    const auto* owner = dynamic_cast<const ShardedModule*>(sub.value().get());
    if (!owner) continue;
    const std::string prefix = sub.key().empty() ? "" : sub.key() + ".";
    for (const auto& item : sub.value()->named_parameters(/*recurse=*/false)) {
      shards[prefix + item.key()] = owner->tp_shard(item.key());
    }
  }
  for (const auto& item : module->named_parameters(/*recurse=*/true)) {
    layer.parameter_names.push_back(item.key());
    layer.parameters.push_back(item.value());
    layer.tp_shards.push_back(shards.count(item.key()) ? shards[item.key()] : ShardSpec{});
  }
  layer.owner = std::move(module);
  return layer;
}

Values detach_as_leaves(const Values& values) {
  Values out;
  for (const at::Tensor& t : values) {
    if (!t.defined()) {
      out.emplace_back();
      continue;
    }
    at::Tensor leaf = t.detach();
    if (at::isFloatingType(leaf.scalar_type())) leaf.requires_grad_(true);
    out.push_back(leaf);
  }
  return out;
}

}  // namespace smp
