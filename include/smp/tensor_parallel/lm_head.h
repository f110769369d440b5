// smp::nn::DistributedTransformerLMHead: word (vocab-parallel) + position (+ token type)
// embeddings, a DistributedTransformer, and an LM head tied to the word embedding whose logits
// stay split by vocabulary; the loss is the vocab-parallel cross-entropy.
//
// As pipeline layers (pipeline_layers): "embedding", "layer_<i>", "lm_head". The tied weight
// cannot sit in two pipeline stages, so with pp > 1 ask for a separate head weight (Megatron's
// approach): it starts equal to the word embedding; pass tied_copies() to the
// DistributedModel (DistributedModelOptions::tied_copies) and smp::step sums the two copies'
// gradients so they stay equal.
#pragma once

#include <map>
#include <string>

#include "smp/tensor_parallel/nn.h"

namespace smp::nn {

// word_embeddings, position_embeddings, token_type_embeddings, then dropout.
class LMEmbedding : public tp::TpModule {
 public:
  LMEmbedding(const DistributedTransformerOptions& options, const tp::TransformerOptions& layer);
  // ids, attention_mask (B, S) of 1/0, token_type_ids, position_ids (each may be undefined)
  // -> {hidden (B, S, H), or (B, S/tp, H) under sequence parallelism; additive mask
  // (B, 1, 1, S) or undefined}.
  Values forward(const at::Tensor& ids, const at::Tensor& attention_mask,
                 const at::Tensor& token_type_ids, const at::Tensor& position_ids);

  std::shared_ptr<tp::VocabParallelEmbedding> word_embeddings;
  at::Tensor position_embeddings, token_type_embeddings;  // replicated

 private:
  tp::TransformerOptions layer_;
  int64_t num_positions_;
  tp::DropoutRng rng_;
};

class DistributedTransformerLMHead : public tp::TpModule {
 public:
  explicit DistributedTransformerLMHead(const DistributedTransformerOptions& options = {});

  // SMP's forward((input_ids, attention_mask, token_type_ids, position_ids, labels)); all but
  // the ids may be undefined or absent. Labels: the target at each position (no shift), < 0 to
  // ignore. Returns {mean loss over labelled tokens} with labels, else {logits of this rank's
  // vocabulary slice (B, S, V_pad / tp)}, its padding columns (>= V) -inf so that nothing
  // predicts them, and at tp 1 the whole vocabulary (B, S, V) (or {hidden (B, S, H)} without
  // add_lm_head); in the non-prescaled batch flow (nn.h) the loss and the outputs are this
  // rank's own samples', the logits then over the whole vocabulary (B, S, V): no other rank
  // holds those samples.
  Values forward(const Values& in);

  // Hidden states in the native layout (after the final norm) -> this rank's logits.
  at::Tensor logits(const at::Tensor& hidden, const at::Tensor& head_weight) const;
  // Mean vocab-parallel cross-entropy over labels >= 0. In the non-prescaled batch flow the
  // logits are the group's batch and the labels this rank's own: the mean over this rank's
  // own labelled tokens.
  at::Tensor loss(const at::Tensor& logits, const at::Tensor& labels) const;
  const BatchFlow& flow() const { return flow_; }

  // The model as pipeline layers (see the top of this file). Inputs of "embedding": {ids} or
  // {ids, attention_mask}; output of "lm_head": {logits} (without add_lm_head: {hidden}, the
  // final norm applied). In the non-prescaled flow "embedding" gathers the group's batch,
  // which the logits stay (loss() takes them with this rank's labels); hidden states come
  // back as this rank's own. Call once.
  std::vector<Layer> pipeline_layers(bool separate_head_weight);
  // For DistributedModelOptions::tied_copies: {"lm_head.weight": "embedding.word_embeddings.weight"}
  // once pipeline_layers(true) made a separate head weight; empty otherwise.
  std::map<std::string, std::string> tied_copies() const;

  int64_t vocab_size() const { return vocab_size_; }
  std::shared_ptr<LMEmbedding> embedding;
  std::shared_ptr<DistributedTransformer> transformer;
  at::Tensor head_weight;  // the separate head weight, once pipeline_layers(true) made it

 private:
  int64_t vocab_size_;
  bool add_lm_head_;
  BatchFlow flow_;
};

}  // namespace smp::nn
