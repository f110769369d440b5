// Layer: one element of the ordered list a model is (what a pipeline splits, what data
// parallelism buckets, what checkpoints name). The shared vocabulary of the floors above.
//
// A layer takes a tuple of tensors and returns one (hidden states plus a mask, say; tensors
// that need no gradient simply travel along). It is any callable with parameters: a libtorch
// module through module_layer(), or, later, a Python module handed in by the bindings. A stage
// is a contiguous run of layers.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

namespace torch::nn {
class Module;
}

namespace smp {

// A layer's inputs or outputs, in order.
using Values = std::vector<at::Tensor>;

// How a parameter is split over the tensor-parallel group. Sharded (dim >= 0): TP rank r holds
// rows [r * n, (r + 1) * n) of dim `dim` of the whole tensor, n being its local size there; the
// whole tensor has `size` rows, and rows past it on the last ranks are padding (a vocabulary
// padded to tp::padded_vocab_size) that belongs to no whole tensor. Replicated (dim < 0): every rank
// holds the whole tensor.
struct ShardSpec {
  int64_t dim = -1;
  int64_t size = 0;
  bool sharded() const { return dim >= 0; }
};

struct Layer {
  std::string name;
  std::function<Values(const Values&)> forward;
  // The tensors it trains, by identity: two layers listing one tensor share it (a tied
  // embedding) and are kept in one stage.
  std::vector<at::Tensor> parameters;
  // Names of those tensors ("weight"), parallel to `parameters`.
  std::vector<std::string> parameter_names;
  // Parallel to `parameters`: how each tensor is split over the tensor-parallel group. A shard's
  // gradient is reduced over RDP_GROUP, a replicated tensor's over DP_GROUP (as in SMP);
  // checkpoints place shards in the whole tensor with it. Empty: all replicated.
  std::vector<ShardSpec> tp_shards;
  // Keeps whatever owns the parameters alive (the module).
  std::shared_ptr<void> owner;
  // Optional state besides the parameters that a checkpoint keeps per rank and restores under
  // the same layout (dropout RNG streams): tensors by name, and setting them back.
  std::function<std::map<std::string, at::Tensor>()> get_state;
  std::function<void(const std::map<std::string, at::Tensor>&)> set_state;
};

// Implemented by modules that hold tensor-parallel shards (smp::tp's parallel layers), so that
// module_layer can tell a shard from a replicated parameter.
class ShardedModule {
 public:
  virtual ~ShardedModule() = default;
  // `name` is the parameter's name inside this module ("weight").
  virtual ShardSpec tp_shard(const std::string& name) const = 0;
};

// A layer over a libtorch module: `forward` calls the module; parameters are the module's
// (recursively) with their names; tp_shards asks each submodule that is a ShardedModule.
Layer module_layer(std::string name, std::shared_ptr<torch::nn::Module> module,
                   std::function<Values(const Values&)> forward);

// Each tensor detached from the graph that made it; floating ones become leaves that require
// grad (where a stage, a recomputed run or a profiled layer starts its own graph). Undefined
// tensors stay undefined.
Values detach_as_leaves(const Values& values);

}  // namespace smp
