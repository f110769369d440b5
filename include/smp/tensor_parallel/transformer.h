// Megatron-style parallel transformer pieces: self-attention with heads split across the TP
// group, an MLP with its intermediate dim split, and the layer around them (LayerNorms,
// dropout, residuals), optionally sequence-parallel.
//
// Communication per layer (b·s·h elements per collective, without sequence parallelism):
// forward two all-reduces (after attention and after the MLP), backward two all-reduces
// (before the QKV and the first MLP projection). With sequence parallelism each all-reduce
// becomes an all-gather (of b·s·h/tp) and a reduce-scatter (of b·s·h) of the same wire volume,
// and backward adds one all-reduce of the replicated parameters' gradients (LayerNorms and
// row-parallel biases: 6·h elements). Layouts: hidden states are (B, S, H), or (B, S/tp, H)
// with sequence parallelism; the attention mask is additive, (B, 1, 1, S) or undefined.
#pragma once

#include <memory>
#include <string>

#include "smp/tensor_parallel/layers.h"

namespace smp::tp {

struct TransformerOptions {
  int64_t hidden_size = 1024;
  int64_t num_attention_heads = 32;
  int64_t attention_head_size = 32;  // heads * head size need not equal hidden_size
  int64_t intermediate_size = 4096;
  double attention_dropout_prob = 0.1;
  double hidden_dropout_prob = 0.1;
  std::string activation = "gelu";  // "gelu" (exact), "relu", "swiglu" (LLaMA: silu(gate) * up)
  double layernorm_epsilon = 1e-5;
  Init init;
  bool causal = false;
  int64_t causal_mask_size = 0;  // > 0: longest allowed sequence (SMP's causal_mask_size)
  // pre: x + f(LN(x)) (GPT-2); otherwise post: LN(x + f(x)) (BERT, SMP's default); neither
  // pre nor post: x + f(x).
  bool pre_layernorm = false;
  bool post_layernorm = true;
  bool sequence_parallel = false;
  // Throws smp::ConfigError for a value out of range, naming it.
  void validate(int tp) const;
};

// Attention over this rank's heads. forward returns the row-parallel output WITHOUT its bias
// (dense->bias), so the layer adds it (and syncs its gradient under sequence parallelism).
class ParallelAttention : public TpModule {
 public:
  ParallelAttention(const TransformerOptions& options, TpGroup group);
  at::Tensor forward(const at::Tensor& x, const at::Tensor& mask, DropoutRng& rng);
  std::shared_ptr<ColumnParallelLinear> qkv;  // (3, heads * head_size, H), split by heads
  std::shared_ptr<RowParallelLinear> dense;   // (H, heads * head_size)

 private:
  at::Tensor core(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                  const at::Tensor& mask, DropoutRng& rng);
  TransformerOptions options_;
  int64_t local_heads_;
};

// dense_h_to_4h -> activation -> dense_4h_to_h; forward leaves out the second bias like
// ParallelAttention.
class ParallelMLP : public TpModule {
 public:
  ParallelMLP(const TransformerOptions& options, TpGroup group);
  at::Tensor forward(const at::Tensor& x);
  std::shared_ptr<ColumnParallelLinear> dense_h_to_4h;  // (I, H), or (2, I, H) for swiglu
  std::shared_ptr<RowParallelLinear> dense_4h_to_h;     // (H, I)

 private:
  std::string activation_;
};

// A replicated LayerNorm's parameters (weight 1, bias 0).
class LayerNormParams : public torch::nn::Module {
 public:
  explicit LayerNormParams(int64_t hidden);
  at::Tensor weight, bias;
};

class ParallelTransformerLayer : public TpModule {
 public:
  ParallelTransformerLayer(const TransformerOptions& options, TpGroup group);
  // x: (B, S, H), or (B, S/tp, H) with sequence parallelism; same shape out.
  at::Tensor forward(const at::Tensor& x, const at::Tensor& mask);
  const TransformerOptions& options() const { return options_; }

  std::shared_ptr<ParallelAttention> attention;
  std::shared_ptr<ParallelMLP> mlp;
  std::shared_ptr<LayerNormParams> attention_layernorm, output_layernorm;  // null without LN

 private:
  TransformerOptions options_;
  DropoutRng rng_;
};

// The additive mask a layer applies: `mask` (undefined, or (B, 1, 1, S)) plus, when causal, -inf
// above the diagonal. Undefined when there is nothing to add.
at::Tensor attention_bias(const at::Tensor& mask, int64_t seq, bool causal,
                          const at::TensorOptions& options);

}  // namespace smp::tp
