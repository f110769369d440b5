// Parallel attention, MLP and transformer layer (see transformer.h).
#include "smp/tensor_parallel/transformer.h"

#include <ATen/ATen.h>

#include <cmath>
#include <limits>

#include "smp/core/error.h"
#include "smp/tensor_parallel/primitives.h"

namespace smp::tp {

namespace {
// The options of a layer's column (first) or row (second, bias left to the caller) projection.
LinearOptions projection(const TransformerOptions& options, bool row, int64_t stack = 1) {
  LinearOptions out;
  out.bias = options.bias;
  out.init = row ? options.output_init.value_or(options.init) : options.init;
  out.sequence_parallel = options.sequence_parallel;
  out.stack = stack;
  out.skip_bias_add = row;
  return out;
}

void check_range(const std::string& key, double value, bool ok, const std::string& allowed) {
  if (!ok) throw ConfigError(key + ": got " + std::to_string(value) + "; allowed: " + allowed);
}

// Rotary position embedding in Hugging Face's rotate-half layout; x: (B, N, S, D), positions
// 0..S-1. The angles are computed in fp32 whatever x's dtype, as Hugging Face does.
at::Tensor apply_rope(const at::Tensor& x, double theta) {
  const int64_t s = x.size(2), d = x.size(3);
  const auto options = at::TensorOptions().dtype(at::kFloat).device(x.device());
  const at::Tensor inv_freq = 1.0 / at::pow(theta, at::arange(0, d, 2, options) / d);
  const at::Tensor freqs = at::outer(at::arange(s, options), inv_freq);  // (S, D/2)
  const at::Tensor emb = at::cat({freqs, freqs}, -1);
  const at::Tensor cos = emb.cos().to(x.scalar_type()), sin = emb.sin().to(x.scalar_type());
  const at::Tensor x1 = x.narrow(-1, 0, d / 2), x2 = x.narrow(-1, d / 2, d / 2);
  return x * cos + at::cat({-x2, x1}, -1) * sin;
}
}  // namespace

void TransformerOptions::validate(int tp) const {
  check_range("hidden_size", hidden_size, hidden_size >= 1, ">= 1");
  check_range("num_attention_heads", num_attention_heads, num_attention_heads >= 1, ">= 1");
  check_range("attention_head_size", attention_head_size, attention_head_size >= 1, ">= 1");
  check_range("intermediate_size", intermediate_size, intermediate_size >= 1, ">= 1");
  check_range("attention_dropout_prob", attention_dropout_prob,
              attention_dropout_prob >= 0 && attention_dropout_prob < 1, "[0, 1)");
  check_range("hidden_dropout_prob", hidden_dropout_prob,
              hidden_dropout_prob >= 0 && hidden_dropout_prob < 1, "[0, 1)");
  check_range("layernorm_epsilon", layernorm_epsilon, layernorm_epsilon > 0, "> 0");
  if (rope) {
    check_range("rope_theta", rope_theta, rope_theta > 0, "> 0");
    check_range("attention_head_size", attention_head_size, attention_head_size % 2 == 0,
                "even with rope");
  }
  if (activation != "gelu" && activation != "gelu_tanh" && activation != "relu" &&
      activation != "swiglu") {
    throw ConfigError("activation: got \"" + activation +
                      "\"; allowed: \"gelu\", \"gelu_tanh\", \"relu\", \"swiglu\"");
  }
  check_divisible("num_attention_heads", num_attention_heads, tp);
  check_divisible("intermediate_size", intermediate_size, tp);
}

at::Tensor attention_bias(const at::Tensor& mask, int64_t seq, bool causal,
                          const at::TensorOptions& options) {
  at::Tensor bias;
  if (causal) {
    bias = at::full({seq, seq}, -std::numeric_limits<float>::infinity(), options).triu(1);
  }
  if (mask.defined()) bias = bias.defined() ? bias + mask : mask;  // -> (B, 1, S, S)
  return bias;
}

// ---- attention -------------------------------------------------------------------------------

ParallelAttention::ParallelAttention(const TransformerOptions& options, TpGroup group)
    : TpModule(group), options_(options) {
  options.validate(group.size());
  const int64_t inner = options.num_attention_heads * options.attention_head_size;
  local_heads_ = options.num_attention_heads / group.size();
  qkv =
      register_module("qkv", std::make_shared<ColumnParallelLinear>(
                                 options.hidden_size, inner, group, projection(options, false, 3)));
  dense =
      register_module("dense", std::make_shared<RowParallelLinear>(
                                   inner, options.hidden_size, group, projection(options, true)));
}

at::Tensor ParallelAttention::forward(const at::Tensor& x, const at::Tensor& mask,
                                      DropoutRng& rng) {
  const at::Tensor qkv_out = qkv->forward(x);  // (B, S, 3 * local_heads * d), whole sequence
  const int64_t b = qkv_out.size(0), s = qkv_out.size(1), d = options_.attention_head_size;
  if (options_.causal_mask_size > 0 && s > options_.causal_mask_size) {
    throw ConfigError("sequence length " + std::to_string(s) + " exceeds causal_mask_size (" +
                      std::to_string(options_.causal_mask_size) + ")");
  }
  const at::Tensor parts = qkv_out.view({b, s, 3, local_heads_, d}).permute({2, 0, 3, 1, 4});
  at::Tensor q = parts[0], k = parts[1];  // (B, heads, S, d)
  if (options_.rope) {
    q = apply_rope(q, options_.rope_theta);
    k = apply_rope(k, options_.rope_theta);
  }
  at::Tensor context = core(q, k, parts[2], mask, rng);  // (B, heads, S, d)
  context = context.transpose(1, 2).reshape({b, s, local_heads_ * d});
  return dense->forward(context);
}

// softmax(q k^T / sqrt(d) + bias) v over this rank's heads; q, k, v: (B, heads, S, d).
at::Tensor ParallelAttention::core(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                   const at::Tensor& mask, DropoutRng& rng) {
  const double scale = 1.0 / std::sqrt(static_cast<double>(options_.attention_head_size));
  const bool causal = options_.causal || options_.causal_mask_size > 0;
  const int64_t s = q.size(2);
  const double p = options_.attention_dropout_prob;
  if (!is_training() || p == 0.0) {
    if (causal && !mask.defined()) {
      return at::scaled_dot_product_attention(q, k, v, {}, 0.0, /*is_causal=*/true, scale);
    }
    const at::Tensor bias = attention_bias(mask, s, causal, q.options());
    const std::optional<at::Tensor> attn_mask =
        bias.defined() ? std::optional<at::Tensor>(bias) : std::nullopt;
    return at::scaled_dot_product_attention(q, k, v, attn_mask, 0.0, false, scale);
  }
  if (q.is_cuda()) {
    // With dropout on a GPU: SDPA's fused kernels, drawing their mask from this rank's
    // (sharded) stream standing in for the device's default generator.
    const bool plain_causal = causal && !mask.defined();
    const at::Tensor bias = plain_causal ? at::Tensor() : attention_bias(mask, s, causal, q.options());
    const std::optional<at::Tensor> attn_mask =
        bias.defined() ? std::optional<at::Tensor>(bias) : std::nullopt;
    return rng.with_stream(/*sharded=*/true, q.device(), [&] {
      return at::scaled_dot_product_attention(q, k, v, attn_mask, p, plain_causal, scale);
    });
  }
  // With dropout on the host: the math path (what SDPA would take there too), the mask drawn
  // from this rank's (sharded) stream.
  const at::Tensor bias = attention_bias(mask, s, causal, q.options());
  at::Tensor scores = at::matmul(q, k.transpose(-2, -1)) * scale;
  if (bias.defined()) scores = scores + bias;
  const at::Tensor probs = rng.dropout(at::softmax(scores, -1), p, /*sharded=*/true, true);
  return at::matmul(probs, v);
}

// ---- MLP -------------------------------------------------------------------------------------

ParallelMLP::ParallelMLP(const TransformerOptions& options, TpGroup group)
    : TpModule(group), activation_(options.activation) {
  options.validate(group.size());
  dense_h_to_4h = register_module("dense_h_to_4h",
                                  std::make_shared<ColumnParallelLinear>(
                                      options.hidden_size, options.intermediate_size, group,
                                      projection(options, false, activation_ == "swiglu" ? 2 : 1)));
  dense_4h_to_h = register_module(
      "dense_4h_to_h",
      std::make_shared<RowParallelLinear>(options.intermediate_size, options.hidden_size, group,
                                          projection(options, true)));
}

at::Tensor ParallelMLP::forward(const at::Tensor& x) {
  const at::Tensor h = dense_h_to_4h->forward(x);  // (B, S, I / tp), or gate and up halves
  at::Tensor a;
  if (activation_ == "swiglu") {
    const int64_t n = h.size(-1) / 2;
    a = at::silu(h.narrow(-1, 0, n)) * h.narrow(-1, n, n);
  } else if (activation_ == "relu") {
    a = at::relu(h);
  } else if (activation_ == "gelu_tanh") {
    a = at::gelu(h, "tanh");
  } else {
    a = at::gelu(h);
  }
  return dense_4h_to_h->forward(a);
}

}  // namespace smp::tp
