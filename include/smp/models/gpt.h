// GPT-2 and LLaMA-style language models, written for one device from smp's tensor-parallel
// layers, as the ordered pipeline layers smp::DistributedModel splits:
//
//   "embed"      token embedding (vocab-parallel) [+ learned positions for GPT-2]
//   "block.<i>"  a pre-norm transformer block: smp's one transformer layer,
//                tp::ParallelTransformerLayer (heads and the MLP split over TP), with the
//                GPT-2 or LLaMA options (tensor_parallel/transformer.h)
//   "head"       final norm + the vocab-parallel output projection
//
// The model never touches process groups itself: the TP group it is given decides the
// shards (the group of one gives the plain single-device model), and any pp x tp x dp layout
// applies to it from outside. Parameters are drawn in full from the global seed and sliced, so
// every layout starts from the same weights.
#pragma once

#include <functional>

#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "smp/models/model_config.h"
#include "smp/layer/layer.h"
#include "smp/tensor_parallel/group.h"

namespace smp::models {


struct Model {
  ModelConfig config;
  tp::TpGroup tp;
  std::vector<Layer> layers;
  // Per token: inputs {tokens (B, S)} -> the head's outputs {logits (B, S, V_pad / tp)}, this
  // rank's vocabulary columns. loss(outputs, {labels (B, S)}) = {mean cross-entropy}, computed
  // without gathering the vocabulary. `logits_consumed`: the caller keeps no use of the logits
  // (nor of a view of them) past the loss's backward, which then writes their gradient over
  // them (a pipeline's loss function: smp-train's).
  Values loss(const Values& outputs, const Values& targets, bool logits_consumed = false) const;
  // SMP's batch flow (smp/tensor_parallel/nn.h). Prescaled (the default here), every rank of
  // the TP group holds the same tokens. Not prescaled (tp > 1), the ranks hold different
  // samples: the embedding gathers the group's tokens (tp * B rows flow through the blocks and
  // the head) and loss() takes this rank's labels and returns its own samples' mean, with the
  // gradients of the group's mean (tp::gather_batch / tp::split_batch). Generating from one
  // prompt, every rank holds the same tokens: set it back to prescaled.
  void set_prescaled_batch(bool prescaled) const { *gathers_batch_ = !prescaled && tp.size() > 1; }
  // Gathers the vocabulary: (B, S, V) logits, padding dropped. Collective over the TP group.
  at::Tensor full_logits(const at::Tensor& local_logits) const;
  // GPT-2's tied head: with `separate_tied_head` the head holds its own copy of the token
  // embedding (pipeline stages apart): copy -> original, for DistributedModelOptions.
  std::map<std::string, std::string> tied_copies;
  // Dropout on/off for every layer (shared with the layers).
  void set_training(bool training) const { *training_ = training; }
  std::shared_ptr<bool> training_ = std::make_shared<bool>(true);
  std::shared_ptr<bool> gathers_batch_ = std::make_shared<bool>(false);
};

// Builds the model on `group`'s shards. `separate_tied_head`: give a tied head its own copy of
// the embedding (needed when embedding and head sit on different pipeline stages); otherwise
// the head uses the embedding tensor itself. Throws smp::ConfigError when heads, hidden or
// ffn_hidden do not divide by the TP size (naming both numbers).
// `on_layer`, when given, is called with each layer right after it is built, in order (before
// the next is built): sharded data parallelism's delayed initialisation slices it there.
Model build_model(const ModelConfig& config, const tp::TpGroup& group, bool separate_tied_head,
                  const std::function<void(Layer&)>& on_layer = {});

}  // namespace smp::models
