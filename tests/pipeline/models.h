// Small models for pipeline tests: an MLP and a transformer stack, as ordered layers. The same
// seed gives the same weights on every rank and in the single-process reference.
#pragma once

#include <torch/torch.h>

#include "smp/layer/layer.h"

namespace smp::testing {

using smp::Layer;
using smp::Values;

// 8 layers: 16 -> 32, six 32 -> 32 (tanh), 32 -> 8. Input x: (B, 16); target: (B, 8).
inline std::vector<Layer> make_mlp(uint64_t seed) {
  torch::manual_seed(seed);
  std::vector<Layer> layers;
  const std::vector<std::pair<int, int>> dims = {{16, 32}, {32, 32}, {32, 32}, {32, 32},
                                                 {32, 32}, {32, 32}, {32, 32}, {32, 8}};
  for (size_t i = 0; i < dims.size(); ++i) {
    auto linear = std::make_shared<torch::nn::LinearImpl>(dims[i].first, dims[i].second);
    const bool last = i + 1 == dims.size();
    layers.push_back(smp::module_layer(
        "fc" + std::to_string(i), linear, [linear, last](const Values& in) -> Values {
          at::Tensor y = linear->forward(in[0]);
          return {last ? y : torch::tanh(y)};
        }));
  }
  return layers;
}

inline Values mse_loss(const Values& out, const Values& targets) {
  return {torch::mse_loss(out[0], targets[0])};
}

// A pre-LayerNorm causal transformer block; carries a (B, S) float keep-mask that needs no grad.
struct BlockImpl : torch::nn::Module {
  BlockImpl(int hidden, int heads) : heads(heads) {
    ln1 = register_module("ln1", torch::nn::LayerNorm(torch::nn::LayerNormOptions({hidden})));
    qkv = register_module("qkv", torch::nn::Linear(hidden, 3 * hidden));
    proj = register_module("proj", torch::nn::Linear(hidden, hidden));
    ln2 = register_module("ln2", torch::nn::LayerNorm(torch::nn::LayerNormOptions({hidden})));
    up = register_module("up", torch::nn::Linear(hidden, 4 * hidden));
    down = register_module("down", torch::nn::Linear(4 * hidden, hidden));
  }
  Values forward(const Values& in) {
    const at::Tensor& x = in[0];     // (B, S, H)
    const at::Tensor& keep = in[1];  // (B, S)
    const int64_t b = x.size(0), s = x.size(1), h = x.size(2);
    auto qkv_out = qkv->forward(ln1->forward(x)).view({b, s, 3, heads, h / heads});
    auto q = qkv_out.select(2, 0).transpose(1, 2);  // (B, heads, S, d)
    auto k = qkv_out.select(2, 1).transpose(1, 2);
    auto v = qkv_out.select(2, 2).transpose(1, 2);
    auto att = at::scaled_dot_product_attention(q, k, v, {}, 0.0, /*is_causal=*/true);
    at::Tensor y = x + proj->forward(att.transpose(1, 2).reshape({b, s, h}));
    y = y + down->forward(torch::gelu(up->forward(ln2->forward(y))));
    return {y * keep.unsqueeze(-1), keep};
  }
  int heads;
  torch::nn::LayerNorm ln1{nullptr}, ln2{nullptr};
  torch::nn::Linear qkv{nullptr}, proj{nullptr}, up{nullptr}, down{nullptr};
};

// 8 layers: embedding (+ learned positions), six blocks, final norm + head.
// Inputs: tokens (B, S) int64 and keep (B, S) float; target: tokens (B, S).
inline std::vector<Layer> make_transformer(uint64_t seed, int vocab = 32, int hidden = 16,
                                           int seq = 8) {
  torch::manual_seed(seed);
  std::vector<Layer> layers;
  auto embed = std::make_shared<torch::nn::Module>();
  auto tok = embed->register_module("tok", torch::nn::Embedding(vocab, hidden));
  auto pos = embed->register_module("pos", torch::nn::Embedding(seq, hidden));
  layers.push_back(smp::module_layer("embed", embed, [tok, pos](const Values& in) -> Values {
    at::Tensor positions = torch::arange(in[0].size(1), torch::kLong);
    return {tok->forward(in[0]) + pos->forward(positions), in[1]};
  }));
  for (int i = 0; i < 6; ++i) {
    auto block = std::make_shared<BlockImpl>(hidden, 2);
    layers.push_back(smp::module_layer("block" + std::to_string(i), block,
                                            [block](const Values& in) { return block->forward(in); }));
  }
  auto head = std::make_shared<torch::nn::Module>();
  auto ln = head->register_module("ln", torch::nn::LayerNorm(torch::nn::LayerNormOptions({hidden})));
  auto out = head->register_module("out", torch::nn::Linear(hidden, vocab));
  layers.push_back(smp::module_layer("head", head, [ln, out](const Values& in) -> Values {
    return {out->forward(ln->forward(in[0]))};
  }));
  return layers;
}

inline Values lm_loss(const Values& out, const Values& targets) {
  const at::Tensor& logits = out[0];  // (B, S, V)
  return {torch::cross_entropy_loss(logits.reshape({-1, logits.size(-1)}), targets[0].reshape(-1))};
}

// The single-process reference: every layer in order on the whole batch.
inline Values run_all(const std::vector<Layer>& layers, Values x) {
  for (const Layer& layer : layers) x = layer.forward(x);
  return x;
}

}  // namespace smp::testing
