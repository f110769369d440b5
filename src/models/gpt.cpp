// GPT-2 and LLaMA-style models from smp's tensor-parallel layers (see gpt.h).
//
// Shapes: B batch, S sequence, H hidden, N heads (N / tp on this rank), D head dim.
#include "smp/models/gpt.h"

#include <cmath>

#include <ATen/ATen.h>
#include <torch/nn/module.h>

#include "smp/core/error.h"
#include "smp/tensor_parallel/init.h"
#include "smp/tensor_parallel/layers.h"
#include "smp/tensor_parallel/primitives.h"

namespace smp::models {
namespace {

using tp::ColumnParallelLinear;
using tp::Init;
using tp::LinearOptions;
using tp::RowParallelLinear;

// LayerNorm (GPT-2) or RMSNorm (LLaMA), replicated across the TP group.
struct Norm : torch::nn::Module {
  Norm(int64_t hidden, bool rms, double eps) : rms(rms), eps(eps) {
    weight = register_parameter("weight", at::ones({hidden}));
    if (!rms) bias = register_parameter("bias", at::zeros({hidden}));
  }
  at::Tensor forward(const at::Tensor& x) const {
    if (!rms) return at::layer_norm(x, {x.size(-1)}, weight, bias, eps);
    return x * at::rsqrt(x.pow(2).mean(-1, /*keepdim=*/true) + eps) * weight;
  }
  bool rms;
  double eps;
  at::Tensor weight, bias;
};

// Rotary position embedding in Hugging Face's rotate-half layout; x: (B, N, S, D).
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

struct Embed : torch::nn::Module {
  Embed(const ModelConfig& c, const tp::TpGroup& group, std::shared_ptr<bool> training)
      : dropout_p(c.dropout), training(std::move(training)), rng(group) {
    tp::EmbeddingOptions options;
    options.init = Init::normal(c.init_std);
    wte = register_module("wte", std::make_shared<tp::VocabParallelEmbedding>(
                                     c.vocab_size, c.hidden, group, options));
    if (c.family == Family::kGpt2) {
      wpe = register_parameter("wpe", tp::init_weight({c.max_seq_len, c.hidden}, c.hidden,
                                                      Init::normal(c.init_std)));
    }
  }
  Values forward(const Values& in) {
    const at::Tensor& tokens = in.at(0);  // (B, S)
    at::Tensor h = wte->forward(tokens);  // (B, S, H)
    if (wpe.defined()) h = h + wpe.narrow(0, 0, tokens.size(1));
    return {rng.dropout(h, dropout_p, /*sharded=*/false, *training)};
  }
  std::shared_ptr<tp::VocabParallelEmbedding> wte;
  at::Tensor wpe;
  double dropout_p;
  std::shared_ptr<bool> training;
  tp::DropoutRng rng;
};

struct Block : torch::nn::Module {
  Block(const ModelConfig& c, const tp::TpGroup& group, std::shared_ptr<bool> training)
      : c(c), group(group), training(std::move(training)), rng(group) {
    tp::check_divisible("num_heads", c.num_heads, group.size());
    const bool gpt2 = c.family == Family::kGpt2;
    const Init init = Init::normal(c.init_std);
    // Output projections scaled by 1/sqrt(2 L), as GPT-2 does.
    const Init out_init = Init::normal(c.init_std / std::sqrt(2.0 * c.num_layers));
    ln_1 = register_module("ln_1", std::make_shared<Norm>(c.hidden, !gpt2, c.norm_eps));
    qkv = register_module("qkv", std::make_shared<ColumnParallelLinear>(
                                     c.hidden, c.hidden, group,
                                     LinearOptions{gpt2, init, false, 1, /*stack=*/3}));
    proj = register_module("proj", std::make_shared<RowParallelLinear>(
                                       c.hidden, c.hidden, group, LinearOptions{gpt2, out_init}));
    ln_2 = register_module("ln_2", std::make_shared<Norm>(c.hidden, !gpt2, c.norm_eps));
    up = register_module("up", std::make_shared<ColumnParallelLinear>(
                                   c.hidden, c.ffn_hidden, group,
                                   LinearOptions{gpt2, init, false, 1, /*stack=*/gpt2 ? 1 : 2}));
    down = register_module("down", std::make_shared<RowParallelLinear>(
                                       c.ffn_hidden, c.hidden, group, LinearOptions{gpt2, out_init}));
  }

  at::Tensor attention(const at::Tensor& x) {
    const int64_t b = x.size(0), s = x.size(1), n = c.num_heads / group.size(), d = c.head_dim();
    const at::Tensor qkv_out = qkv->forward(x).view({b, s, 3, n, d});
    at::Tensor q = qkv_out.select(2, 0).transpose(1, 2);  // (B, N, S, D)
    at::Tensor k = qkv_out.select(2, 1).transpose(1, 2);
    const at::Tensor v = qkv_out.select(2, 2).transpose(1, 2);
    if (c.family == Family::kLlama) {
      q = apply_rope(q, c.rope_theta);
      k = apply_rope(k, c.rope_theta);
    }
    const at::Tensor y = at::scaled_dot_product_attention(q, k, v, {}, 0.0, /*is_causal=*/true);
    return proj->forward(y.transpose(1, 2).reshape({b, s, n * d}));
  }

  at::Tensor mlp(const at::Tensor& x) {
    at::Tensor h = up->forward(x);
    if (c.family == Family::kGpt2) {
      h = at::gelu(h, "tanh");  // GPT-2's gelu_new
    } else {
      const auto gate_up = h.chunk(2, -1);  // SwiGLU: silu(gate) * up
      h = at::silu(gate_up[0]) * gate_up[1];
    }
    return down->forward(h);
  }

  Values forward(const Values& in) {
    at::Tensor x = in.at(0);
    x = x + rng.dropout(attention(ln_1->forward(x)), c.dropout, false, *training);
    x = x + rng.dropout(mlp(ln_2->forward(x)), c.dropout, false, *training);
    return {x};
  }

  ModelConfig c;
  tp::TpGroup group;
  std::shared_ptr<bool> training;
  tp::DropoutRng rng;
  std::shared_ptr<Norm> ln_1, ln_2;
  std::shared_ptr<ColumnParallelLinear> qkv, up;
  std::shared_ptr<RowParallelLinear> proj, down;
};

// Final norm and the output projection: the tied embedding (GPT-2) or its own column-parallel
// linear (LLaMA). A tied weight registered here is a vocabulary shard too.
struct Head : torch::nn::Module, ShardedModule {
  Head(const ModelConfig& c, const tp::TpGroup& group, const at::Tensor& tied_weight)
      : group(group), vocab_size(c.vocab_size) {
    ln_f = register_module("ln_f", std::make_shared<Norm>(c.hidden, c.family == Family::kLlama,
                                                           c.norm_eps));
    if (tied_weight.defined()) {
      weight = register_parameter("weight", tied_weight);
    } else {
      const int64_t padded = tp::round_up(c.vocab_size, group.size());
      lm_head = register_module("lm_head", std::make_shared<ColumnParallelLinear>(
                                               c.hidden, padded, group,
                                               LinearOptions{false, Init::normal(c.init_std)}));
      lm_head->set_whole_size("weight", c.vocab_size);  // padding rows are no vocabulary
    }
  }
  ShardSpec tp_shard(const std::string& name) const override {
    return name == "weight" ? ShardSpec{0, vocab_size} : ShardSpec{};
  }
  Values forward(const Values& in) {
    const at::Tensor h = ln_f->forward(in.at(0));
    if (lm_head) return {lm_head->forward(h)};
    return {at::matmul(tp::copy_to_tp(h, group), weight.t())};  // (B, S, V_pad / tp)
  }
  tp::TpGroup group;
  int64_t vocab_size;
  std::shared_ptr<Norm> ln_f;
  std::shared_ptr<ColumnParallelLinear> lm_head;
  at::Tensor weight;
};

template <typename M>
Layer as_layer(const std::string& name, std::shared_ptr<M> module) {
  return module_layer(name, module,
                                [module](const Values& in) { return module->forward(in); });
}

// A layer with dropout also hands its RNG streams to checkpoints (exact resumes).
template <typename M>
Layer as_layer_with_rng(const std::string& name, std::shared_ptr<M> module) {
  Layer layer = as_layer(name, module);
  layer.get_state = [module] { return module->rng.state(); };
  layer.set_state = [module](const std::map<std::string, at::Tensor>& s) { module->rng.load_state(s); };
  return layer;
}

}  // namespace

Model build_model(const ModelConfig& config, const tp::TpGroup& group, bool separate_tied_head,
                  const std::function<void(Layer&)>& on_layer) {
  tp::check_divisible("hidden", config.hidden, group.size());
  tp::check_divisible("ffn_hidden", config.ffn_hidden, group.size());
  Model model;
  model.config = config;
  model.tp = group;
  auto embed = std::make_shared<Embed>(config, group, model.training_);
  auto built = [&](Layer layer) {
    model.layers.push_back(std::move(layer));
    if (on_layer) on_layer(model.layers.back());
  };
  built(as_layer_with_rng("embed", embed));
  for (int64_t i = 0; i < config.num_layers; ++i) {
    built(as_layer_with_rng("block." + std::to_string(i), std::make_shared<Block>(config, group, model.training_)));
  }
  at::Tensor tied;
  if (config.tie_embeddings) {
    tied = embed->wte->weight;
    if (separate_tied_head) {
      tied = tied.detach().clone().requires_grad_(true);
      model.tied_copies["head.weight"] = "embed.wte.weight";
    }
  }
  built(as_layer("head", std::make_shared<Head>(config, group, tied)));
  return model;
}

Values Model::loss(const Values& outputs, const Values& targets) const {
  const at::Tensor per_token =
      tp::vocab_parallel_cross_entropy(outputs.at(0), targets.at(0), config.vocab_size, tp);
  return {per_token.mean()};
}

at::Tensor Model::full_logits(const at::Tensor& local_logits) const {
  return tp::all_gather_along(local_logits, -1, tp).narrow(-1, 0, config.vocab_size);
}

}  // namespace smp::models
