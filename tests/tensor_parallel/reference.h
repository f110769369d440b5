// Non-parallel references, written in plain ATen from the layer definitions (independent of
// the smp::tp code): each takes the FULL parameters by name and the whole input.
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <limits>
#include <map>
#include <string>

namespace smp::testing {

using Params = std::map<std::string, at::Tensor>;

struct RefLayer {
  int64_t heads = 4, head_size = 4, hidden = 16;
  std::string activation = "gelu";
  bool pre = false, post = true, causal = false;
  double eps = 1e-5;
  double rope_theta = 0;  // > 0: rotary position embedding of q and k
};

// p[name], or undefined when the module has no such parameter (a bias left out).
inline at::Tensor optional_param(const Params& p, const std::string& name) {
  const auto it = p.find(name);
  return it == p.end() ? at::Tensor() : it->second;
}

inline at::Tensor ref_linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) {
  at::Tensor y = at::matmul(x, w.t());
  return b.defined() ? y + b : y;
}

// The `i`th of a stacked projection's blocks: weight[i] and, when there is a bias, bias[i].
inline at::Tensor ref_stacked(const Params& p, const std::string& name, const at::Tensor& x,
                              int i) {
  const at::Tensor b = optional_param(p, name + ".bias");
  return ref_linear(x, p.at(name + ".weight")[i], b.defined() ? b[i] : b);
}

// Rotary embedding as rotations: the pair (x_i, x_{i + D/2}) at position m turns by the angle
// m * theta^(-2i/D) (angles in double). x: (B, heads, S, D).
inline at::Tensor ref_rope(const at::Tensor& x, double theta) {
  const int64_t s = x.size(2), d = x.size(3), half = d / 2;
  const at::Tensor position = at::arange(s, at::kDouble).unsqueeze(1);
  const at::Tensor frequency = at::pow(theta, at::arange(half, at::kDouble) * (-2.0 / d));
  const at::Tensor angle = (position * frequency).to(at::kFloat);  // (S, D/2)
  const at::Tensor a = x.narrow(-1, 0, half), b = x.narrow(-1, half, half);
  return at::cat({a * angle.cos() - b * angle.sin(), a * angle.sin() + b * angle.cos()}, -1);
}

// Q, K, V from a (3, inner, H) weight, rotated when rope_theta > 0; softmax(q k^T / sqrt(d) +
// causal + mask) v; dense.
inline at::Tensor ref_attention(const Params& p, const std::string& at_, const at::Tensor& x,
                                const at::Tensor& mask, const RefLayer& o) {
  const int64_t b = x.size(0), s = x.size(1);
  auto head = [&](int i) {
    at::Tensor t = ref_stacked(p, at_ + "qkv", x, i).view({b, s, o.heads, o.head_size});
    t = t.transpose(1, 2);  // (B, a, S, d)
    return o.rope_theta > 0 && i < 2 ? ref_rope(t, o.rope_theta) : t;
  };
  at::Tensor scores =
      at::matmul(head(0), head(1).transpose(-2, -1)) / std::sqrt(double(o.head_size));
  if (o.causal) {
    scores = scores.masked_fill(at::ones({s, s}, at::kBool).triu(1),
                                -std::numeric_limits<float>::infinity());
  }
  if (mask.defined()) scores = scores + mask;
  at::Tensor ctx = at::matmul(at::softmax(scores, -1), head(2));
  ctx = ctx.transpose(1, 2).reshape({b, s, o.heads * o.head_size});
  return ref_linear(ctx, p.at(at_ + "dense.weight"), optional_param(p, at_ + "dense.bias"));
}

// gelu (exact), gelu_tanh, relu, or swiglu: silu(gate) * up from a (2, I, H) weight.
inline at::Tensor ref_mlp(const Params& p, const std::string& at_, const at::Tensor& x,
                          const std::string& activation) {
  const std::string first = at_ + "dense_h_to_4h";
  at::Tensor a;
  if (activation == "swiglu") {
    a = at::silu(ref_stacked(p, first, x, 0)) * ref_stacked(p, first, x, 1);
  } else {
    const at::Tensor h =
        ref_linear(x, p.at(first + ".weight"), optional_param(p, first + ".bias"));
    if (activation == "relu") a = at::relu(h);
    if (activation == "gelu") a = at::gelu(h);
    if (activation == "gelu_tanh") {  // GPT-2's gelu_new, written out
      a = 0.5 * h * (1 + at::tanh(std::sqrt(2.0 / M_PI) * (h + 0.044715 * h.pow(3))));
    }
  }
  return ref_linear(a, p.at(at_ + "dense_4h_to_h.weight"),
                    optional_param(p, at_ + "dense_4h_to_h.bias"));
}

// LayerNorm, or RMSNorm (x / sqrt(mean(x^2) + eps) * weight) for a norm without a bias.
inline at::Tensor ref_norm(const Params& p, const std::string& name, const at::Tensor& x,
                           double eps) {
  const at::Tensor bias = optional_param(p, name + ".bias");
  if (bias.defined()) return at::layer_norm(x, {x.size(-1)}, p.at(name + ".weight"), bias, eps);
  return x / at::sqrt(x.pow(2).mean(-1, /*keepdim=*/true) + eps) * p.at(name + ".weight");
}

inline at::Tensor ref_layer(const Params& p, const std::string& at_, const at::Tensor& x,
                            const at::Tensor& mask, const RefLayer& o) {
  auto attn = [&](const at::Tensor& t) { return ref_attention(p, at_ + "attention.", t, mask, o); };
  auto mlp = [&](const at::Tensor& t) { return ref_mlp(p, at_ + "mlp.", t, o.activation); };
  auto ln1 = [&](const at::Tensor& t) {
    return ref_norm(p, at_ + "attention_layernorm", t, o.eps);
  };
  auto ln2 = [&](const at::Tensor& t) { return ref_norm(p, at_ + "output_layernorm", t, o.eps); };
  if (o.pre) {
    const at::Tensor y = x + attn(ln1(x));
    return y + mlp(ln2(y));
  }
  if (o.post) {
    const at::Tensor y = ln1(x + attn(x));
    return ln2(y + mlp(y));
  }
  const at::Tensor y = x + attn(x);
  return y + mlp(y);
}

// DistributedTransformerLMHead: embeddings, layers, final norm (pre and post), tied head, mean
// cross-entropy.
inline at::Tensor ref_lm_loss(const Params& p, const at::Tensor& ids, const at::Tensor& keep,
                              const at::Tensor& labels, int64_t vocab, int num_layers,
                              const RefLayer& o) {
  const int64_t b = ids.size(0), s = ids.size(1);
  // The vocabulary's rows (the module's weight is padded): the padding is no class.
  const at::Tensor word = p.at("embedding.word_embeddings.weight").narrow(0, 0, vocab);
  at::Tensor h = word.index_select(0, ids.reshape(-1)).view({b, s, -1}) +
                 p.at("embedding.position_embeddings").narrow(0, 0, s);
  const at::Tensor mask = (1.0 - keep.to(at::kFloat)).view({b, 1, 1, s}) * -10000.0;
  for (int i = 0; i < num_layers; ++i) {
    h = ref_layer(p, "transformer.seq_layers." + std::to_string(i) + ".", h, mask, o);
  }
  if (o.pre && o.post) h = ref_norm(p, "transformer.final_layernorm", h, o.eps);
  const at::Tensor logits = at::matmul(h, word.t());
  return at::cross_entropy_loss(logits.reshape({b * s, -1}), labels.reshape(-1));
}

}  // namespace smp::testing
