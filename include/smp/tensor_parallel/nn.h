// smp::nn: SMP v1's distributed modules (smp.nn.Distributed*), with SMP's constructor
// parameters and global sizes; each splits itself over the TP group.
//
//   smp::init(config);                        // tensor_parallel_degree > 1 needs "ddp": true
//   torch::manual_seed(seed);                 // the same on every rank: init is tp-independent
//   auto lm = std::make_shared<smp::nn::DistributedTransformerLMHead>(
//       smp::nn::DistributedTransformerOptions().num_layers(12).vocab_size(50257)
//           .hidden_size(768).num_attention_heads(12).attention_head_size(64)
//           .intermediate_size(3072).pre_layernorm(true).post_layernorm(true)
//           .causal_mask_size(1024).num_positions(1024));
//   auto loss = lm->forward({ids, attention_mask, {}, {}, labels})[0];
//
// Python keyword arguments become chained setters on one options struct shared by the three
// transformer modules (each reads the keys it has; SMP's leading underscores are dropped).
// Unset `tp_group` means smp's TP_GROUP (the group of one before smp::init); unset
// `sequence_parallel` follows config "optimize": "memory" (SMP's default) distributes
// LayerNorm and dropout along the sequence, "speed" keeps them replicated. Build modules after
// smp::init and drop them before smp::shutdown; every call is collective over the TP group.
//
// The batch flow (SMP's prescaled_batch, unset: the config's): prescaled, every rank of the TP
// group holds the same batch and modules take and return it whole. Not prescaled (SMP's
// default), the ranks hold different samples: each module gathers the group's batch at its
// entry (every input whose dim 0 is the batch), runs its shard on it, and returns this rank's
// own samples (tp::gather_batch / tp::split_batch, whose gradient scaling keeps every
// parameter's gradient that of the global mean loss). `skip_scatter_and_merge` (SMP's
// _skip_scatter_and_merge) skips both: the input is the group's batch already and the output
// stays so, for modules inside a module that gathered.
#pragma once

#include <torch/arg.h>

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "smp/comm/communicator.h"
#include "smp/layer/layer.h"
#include "smp/tensor_parallel/transformer.h"

namespace smp::nn {


// smp's TP group (TpGroup{} before smp::init) and the sequence-parallel default.
tp::TpGroup default_tp_group();
bool default_sequence_parallel();
bool default_prescaled_batch();  // config "prescaled_batch"; true before smp::init

// A module's boundary in the batch flow above: with `gathers` (tp > 1, not prescaled, not
// skipped) enter() gathers the group's batch and exit() keeps this rank's samples; otherwise
// both are the identity.
class BatchFlow {
 public:
  BatchFlow(std::optional<bool> prescaled_batch, bool skip_scatter_and_merge, tp::TpGroup group);
  bool gathers() const { return gathers_; }
  at::Tensor enter(const at::Tensor& x) const;
  // Every defined tensor whose dim 0 equals the first's (a mask that broadcasts over the batch
  // stays as it is).
  Values enter(const Values& in) const;
  at::Tensor exit(const at::Tensor& y) const;
  Values exit(const Values& out) const;

 private:
  bool gathers_;
  tp::TpGroup group_;
};

struct DistributedLinearOptions {
  TORCH_ARG(bool, bias) = true;
  TORCH_ARG(std::optional<tp::TpGroup>, tp_group);
  TORCH_ARG(std::optional<bool>, prescaled_batch);  // the batch flow (see the top)
  TORCH_ARG(bool, skip_scatter_and_merge) = false;
};

// torch.nn.Linear split along out_features (column-parallel, output gathered): input and
// output are whole along the features. out_features must divide by tp.
class DistributedLinear : public tp::ColumnParallelLinear {
 public:
  DistributedLinear(int64_t in_features, int64_t out_features,
                    const DistributedLinearOptions& options = {});
  at::Tensor forward(const at::Tensor& x);

 private:
  BatchFlow flow_;
};

struct DistributedEmbeddingOptions {
  TORCH_ARG(std::optional<int64_t>, padding_idx);
  TORCH_ARG(std::optional<double>, max_norm);  // not implemented: must stay unset
  TORCH_ARG(double, norm_type) = 2.0;
  TORCH_ARG(bool, scale_grad_by_freq) = false;
  TORCH_ARG(bool, sparse) = false;  // not implemented: must stay false
  TORCH_ARG(at::Tensor, weight);    // SMP's _weight: the full initial weight
  TORCH_ARG(double, initializer_range) = 0.02;
  TORCH_ARG(bool, skip_allgather) = false;  // output stays split along embedding_dim (not in
                                            // the non-prescaled flow unless skipping it)
  TORCH_ARG(bool, skip_scatter_and_merge) = false;  // the batch flow (see the top)
  TORCH_ARG(std::optional<tp::TpGroup>, tp_group);
  TORCH_ARG(std::optional<bool>, prescaled_batch);
};

// torch.nn.Embedding split along embedding_dim (SMP's DistributedEmbedding): every rank holds
// all rows and H/tp columns; the output is all-gathered unless skip_allgather.
class DistributedEmbedding : public tp::TpModule {
 public:
  DistributedEmbedding(int64_t num_embeddings, int64_t embedding_dim,
                       const DistributedEmbeddingOptions& options = {});
  at::Tensor forward(const at::Tensor& ids);  // (B, S) -> (B, S, H) or (B, S, H / tp)
  at::Tensor weight;                          // (num_embeddings, H / tp)

 private:
  DistributedEmbeddingOptions options_;
  BatchFlow flow_;
};

// SMP's keyword arguments of DistributedTransformerLayer, DistributedTransformer and
// DistributedTransformerLMHead, with SMP's defaults.
struct DistributedTransformerOptions {
  TORCH_ARG(int64_t, num_layers) = 12;
  TORCH_ARG(int64_t, num_attention_heads) = 32;
  TORCH_ARG(int64_t, attention_head_size) = 32;
  TORCH_ARG(int64_t, hidden_size) = 1024;
  TORCH_ARG(int64_t, intermediate_size) = 4096;
  TORCH_ARG(double, attention_dropout_prob) = 0.1;
  TORCH_ARG(double, hidden_dropout_prob) = 0.1;
  TORCH_ARG(std::string, activation) = "gelu";  // "gelu", "relu"; smp: "gelu_tanh", "swiglu"
  TORCH_ARG(double, layernorm_epsilon) = 1e-5;
  TORCH_ARG(double, initializer_range) = 0.02;
  TORCH_ARG(bool, use_normal_initialization) = false;
  TORCH_ARG(std::optional<int64_t>, causal_mask_size);  // set: causal attention
  TORCH_ARG(bool, add_cross_attention) = false;         // not implemented: must stay false
  TORCH_ARG(bool, pre_layernorm) = false;
  TORCH_ARG(bool, post_layernorm) = true;
  TORCH_ARG(bool, use_alibi) = false;  // not implemented: must stay false
  // DistributedTransformerLMHead only.
  TORCH_ARG(int64_t, vocab_size) = 30522;
  TORCH_ARG(int64_t, num_positions) = 1024;
  TORCH_ARG(int64_t, num_token_types) = 0;
  TORCH_ARG(bool, add_lm_head) = true;
  // smp extensions.
  TORCH_ARG(std::optional<bool>, sequence_parallel);
  TORCH_ARG(std::optional<tp::TpGroup>, tp_group);
  TORCH_ARG(std::optional<bool>, prescaled_batch);  // the batch flow (see the top)
  TORCH_ARG(bool, skip_scatter_and_merge) = false;

 public:
  tp::TransformerOptions to_tp() const;  // validates; resolves the defaults above
  tp::TpGroup group() const;
  BatchFlow flow() const;
};
using DistributedTransformerLayerOptions = DistributedTransformerOptions;

class DistributedTransformerLayer : public tp::ParallelTransformerLayer {
 public:
  explicit DistributedTransformerLayer(const DistributedTransformerOptions& options = {});
  // SMP's forward((hidden (N, S, H), mask (N, 1, 1, S) additive)) -> (hidden, mask), whole
  // sequences in and out, in the batch flow. The native forward(x, mask) takes (N, S/tp, H)
  // under sequence parallelism, always the group's batch.
  Values forward(const Values& in);
  using tp::ParallelTransformerLayer::forward;

 private:
  BatchFlow flow_;
};

// A stack of layers (seq_layers.<i>); with pre_layernorm and post_layernorm both set, a final
// LayerNorm normalises the stack's output (GPT-2's ln_f).
class DistributedTransformer : public tp::TpModule {
 public:
  explicit DistributedTransformer(const DistributedTransformerOptions& options = {});
  Values forward(const Values& in);  // as DistributedTransformerLayer's
  // The native layout: (B, S/tp, H) under sequence parallelism, the group's batch. Includes the
  // final norm.
  at::Tensor forward(const at::Tensor& x, const at::Tensor& mask);
  at::Tensor final_norm(const at::Tensor& x);  // identity without a final LayerNorm
  bool sequence_parallel() const { return options_.sequence_parallel; }

  std::vector<std::shared_ptr<DistributedTransformerLayer>> layers;
  std::shared_ptr<tp::NormParams> final_layernorm;  // null unless pre and post (a LayerNorm)

 private:
  tp::TransformerOptions options_;
  BatchFlow flow_;
};

}  // namespace smp::nn

#include "smp/tensor_parallel/lm_head.h"
