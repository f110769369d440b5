// Megatron-style parallel transformer pieces: self-attention with heads split across the TP
// group, an MLP with its intermediate dim split, and the layer around them (norms, dropout,
// residuals), optionally sequence-parallel. The one transformer of smp: SMP's smp::nn layers
// (nn.h) and the GPT-2 / LLaMA models (smp/models/gpt.h) are both built from it; the options
// cover both (LayerNorm or RMSNorm, GELU or SwiGLU, biases or none, RoPE or positions added
// outside).
//
// Communication per layer (b·s·h elements per collective, without sequence parallelism):
// forward two all-reduces (after attention and after the MLP), backward two all-reduces
// (before the QKV and the first MLP projection). With sequence parallelism each all-reduce
// becomes an all-gather (of b·s·h/tp) and a reduce-scatter (of b·s·h) of the same wire volume,
// and backward adds one all-reduce of the replicated parameters' gradients (LayerNorms and
// row-parallel biases: 6·h elements; 2·h with RMSNorm and no biases). Layouts: hidden states
// are (B, S, H), or (B, S/tp, H) with sequence parallelism; the attention mask is additive,
// (B, 1, 1, S) or undefined.
#pragma once

#include <memory>
#include <optional>
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
  // "gelu" (exact), "gelu_tanh" (GPT-2's gelu_new), "relu", "swiglu" (LLaMA: silu(gate) * up)
  std::string activation = "gelu";
  double layernorm_epsilon = 1e-5;  // the epsilon of either norm
  bool rms_norm = false;            // RMSNorm (x * rsqrt(mean(x^2) + eps) * weight, no bias)
  bool bias = true;                 // biases on the four projections (LLaMA has none)
  // Rotary position embedding of q and k (LLaMA; Hugging Face's rotate-half layout), positions
  // 0..S-1 of the whole sequence. Needs an even attention_head_size.
  bool rope = false;
  double rope_theta = 10000.0;
  Init init;
  // The row-parallel output projections (dense, dense_4h_to_h); unset: `init`. GPT-2 scales
  // their std by 1/sqrt(2 layers).
  std::optional<Init> output_init;
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
// (dense->bias, when there is one), so the layer adds it (and syncs its gradient under sequence
// parallelism). The mask is additive, (B, 1, 1, S) or undefined.
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

// A replicated norm's parameters: LayerNorm (weight 1, bias 0) or RMSNorm (weight 1, no bias).
class NormParams : public torch::nn::Module {
 public:
  NormParams(int64_t hidden, bool rms);
  at::Tensor weight, bias;  // bias undefined for RMSNorm
};

// The norm over x's last dim: LayerNorm when `bias` is defined, RMSNorm when it is not (the
// parameters a NormParams holds, or their gradient-synced views).
at::Tensor apply_norm(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                      double eps);

class ParallelTransformerLayer : public TpModule {
 public:
  ParallelTransformerLayer(const TransformerOptions& options, TpGroup group);
  // x: (B, S, H), or (B, S/tp, H) with sequence parallelism; same shape out.
  at::Tensor forward(const at::Tensor& x, const at::Tensor& mask);
  const TransformerOptions& options() const { return options_; }
  // The hidden and attention dropout streams (checkpoints and activation checkpointing's
  // recompute save and restore them).
  DropoutRng& rng() { return rng_; }

  std::shared_ptr<ParallelAttention> attention;
  std::shared_ptr<ParallelMLP> mlp;
  std::shared_ptr<NormParams> attention_layernorm, output_layernorm;  // null without norms

 private:
  TransformerOptions options_;
  DropoutRng rng_;
};

// The additive mask a layer applies: `mask` (undefined, or (B, 1, 1, S)) plus, when causal, -inf
// above the diagonal. Undefined when there is nothing to add.
at::Tensor attention_bias(const at::Tensor& mask, int64_t seq, bool causal,
                          const at::TensorOptions& options);

}  // namespace smp::tp
