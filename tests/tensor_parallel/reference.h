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
};

inline at::Tensor ref_linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) {
  at::Tensor y = at::matmul(x, w.t());
  return b.defined() ? y + b : y;
}

// Q, K, V from a (3, inner, H) weight; softmax(q k^T / sqrt(d) + causal + mask) v; dense.
inline at::Tensor ref_attention(const Params& p, const std::string& at_, const at::Tensor& x,
                                const at::Tensor& mask, const RefLayer& o) {
  const int64_t b = x.size(0), s = x.size(1);
  auto head = [&](int i) {
    at::Tensor t = ref_linear(x, p.at(at_ + "qkv.weight")[i], p.at(at_ + "qkv.bias")[i]);
    return t.view({b, s, o.heads, o.head_size}).transpose(1, 2);  // (B, a, S, d)
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
  return ref_linear(ctx, p.at(at_ + "dense.weight"), p.at(at_ + "dense.bias"));
}

inline at::Tensor ref_mlp(const Params& p, const std::string& at_, const at::Tensor& x,
                          const std::string& activation) {
  const at::Tensor& w1 = p.at(at_ + "dense_h_to_4h.weight");
  const at::Tensor& b1 = p.at(at_ + "dense_h_to_4h.bias");
  at::Tensor a;
  if (activation == "swiglu") {
    a = at::silu(ref_linear(x, w1[0], b1[0])) * ref_linear(x, w1[1], b1[1]);
  } else {
    const at::Tensor h = ref_linear(x, w1, b1);
    a = activation == "relu" ? at::relu(h) : at::gelu(h);
  }
  return ref_linear(a, p.at(at_ + "dense_4h_to_h.weight"), p.at(at_ + "dense_4h_to_h.bias"));
}

inline at::Tensor ref_norm(const Params& p, const std::string& name, const at::Tensor& x,
                           double eps) {
  return at::layer_norm(x, {x.size(-1)}, p.at(name + ".weight"), p.at(name + ".bias"), eps);
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
                              const at::Tensor& labels, int num_layers, const RefLayer& o) {
  const int64_t b = ids.size(0), s = ids.size(1);
  const at::Tensor& word = p.at("embedding.word_embeddings.weight");
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
