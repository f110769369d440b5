// Initialisation independent of tp, and the dropout RNG rule.
//
// Parameters: every rank draws the FULL tensor from the default generator (the global seed,
// set the same on every rank before the model is built) and keeps its slice. The draws do not
// depend on tp, so a tp=N shard equals (torch::equal) the slice of the tp=1 parameter built
// from the same seed, and a model's later draws are the same under every layout.
//
// Dropout (Megatron's rule, written down): each module that drops out draws one 64-bit seed
// from the default generator when it is built (the same on every rank) and keeps two streams:
//   - replicated: seeded with that seed on every rank of the group. Used where activations
//     are replicated across the TP group (hidden and embedding dropout without sequence
//     parallelism), so the group's copies stay identical.
//   - sharded: seeded with a mix of that seed and the tp rank, different on every rank. Used
//     where each rank holds a different part (attention probabilities of its own heads;
//     everything under sequence parallelism), so the parts do not repeat one mask.
// The streams are the module's own state (no globals); ranks of one TP group call them in the
// same order because they run the same layers.
#pragma once

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <map>
#include <string>

#include "smp/tensor_parallel/group.h"

namespace smp::tp {

// How a weight is drawn. kTorchDefault is torch.nn.Linear's (kaiming-uniform, a = sqrt(5):
// U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias); kNormal is N(0, std) for weights
// and zeros for biases (SMP's use_normal_initialization with initializer_range).
struct Init {
  enum Kind { kTorchDefault, kNormal };
  Kind kind = kTorchDefault;
  double std = 0.02;
  static Init normal(double std) { return {kNormal, std}; }
};

// Full tensors drawn from the default generator (float32, CPU).
at::Tensor init_weight(at::IntArrayRef shape, int64_t fan_in, const Init& init);
at::Tensor init_bias(at::IntArrayRef shape, int64_t fan_in, const Init& init);
// This rank's slice of `full` along `dim` (-1: all of it), as a new contiguous tensor.
at::Tensor shard_of(const at::Tensor& full, int64_t dim, const TpGroup& group);

class DropoutRng {
 public:
  // Draws the module's seed from the default generator.
  explicit DropoutRng(const TpGroup& group);
  // x with elements zeroed with probability p and the rest scaled by 1/(1-p), using the
  // sharded or the replicated stream. Identity when p == 0 or !train.
  at::Tensor dropout(const at::Tensor& x, double p, bool sharded, bool train);
  // Runs `draw` (a kernel that draws from the device's default generator only, as
  // scaled_dot_product_attention's dropout does) with that generator standing in for this
  // module's stream: the stream's state goes in, the advanced state comes back into the stream,
  // and the default generator is left as it was. Draws from the default generator on other
  // threads meanwhile would take the stream's numbers: such kernels are serialised here, and
  // smp's own dropouts draw from their streams, not the default generator.
  at::Tensor with_stream(bool sharded, const at::Device& device,
                         const std::function<at::Tensor()>& draw);
  uint64_t seed() const { return seed_; }
  uint64_t sharded_seed() const;
  // The streams drawn from so far, "<r|s><device>" -> generator state (for checkpoints and
  // activation checkpointing's recompute), and setting them back exactly: streams named there
  // are created as needed, streams not named start again from their seed when next drawn from.
  std::map<std::string, at::Tensor> state() const;
  void load_state(const std::map<std::string, at::Tensor>& state);

 private:
  at::Generator& stream(bool sharded, const at::Device& device);
  uint64_t seed_ = 0;
  int tp_rank_ = 0;
  std::map<std::string, at::Generator> streams_;  // by "<r|s><device>"
};

}  // namespace smp::tp
