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
#include "smp/tensor_parallel/transformer.h"

namespace smp::models {
namespace {

using tp::ColumnParallelLinear;
using tp::Init;
using tp::LinearOptions;

struct Embed : torch::nn::Module {
  Embed(const ModelConfig& c, const tp::TpGroup& group, std::shared_ptr<bool> training,
        std::shared_ptr<bool> gathers_batch)
      : dropout_p(c.dropout),
        training(std::move(training)),
        gathers_batch(std::move(gathers_batch)),
        group(group),
        rng_(group) {
    tp::EmbeddingOptions options;
    options.init = Init::normal(c.init_std);
    wte = register_module("wte", std::make_shared<tp::VocabParallelEmbedding>(
                                     c.vocab_size, c.hidden, group, options));
    if (c.family == Family::kGpt2) {
      wpe = register_parameter("wpe", tp::init_weight({c.max_seq_len, c.hidden}, c.hidden,
                                                      Init::normal(c.init_std)));
    }
  }
  tp::DropoutRng& rng() { return rng_; }
  Values forward(const Values& in) {
    // (B, S), or the TP group's (tp B, S) in the non-prescaled flow
    const at::Tensor tokens = *gathers_batch ? tp::gather_batch(in.at(0), group) : in.at(0);
    at::Tensor h = wte->forward(tokens);  // (B, S, H)
    if (wpe.defined()) h = h + wpe.narrow(0, 0, tokens.size(1));
    return {rng_.dropout(h, dropout_p, /*sharded=*/false, *training)};
  }
  std::shared_ptr<tp::VocabParallelEmbedding> wte;
  at::Tensor wpe;
  double dropout_p;
  std::shared_ptr<bool> training;
  std::shared_ptr<bool> gathers_batch;  // the batch flow (Model::set_prescaled_batch)
  tp::TpGroup group;
  tp::DropoutRng rng_;
};

// A block's layer: pre-norm, causal, hidden dropout only (no attention dropout). GPT-2:
// LayerNorm, GELU (tanh), biases (positions are added by Embed); LLaMA: RMSNorm, RoPE, SwiGLU,
// no biases. Weights N(0, init_std), the output projections N(0, init_std / sqrt(2 L)) as GPT-2
// does, zero biases.
tp::TransformerOptions layer_options(const ModelConfig& c) {
  const bool gpt2 = c.family == Family::kGpt2;
  tp::TransformerOptions o;
  o.hidden_size = c.hidden;
  o.num_attention_heads = c.num_heads;
  o.attention_head_size = c.head_dim();
  o.intermediate_size = c.ffn_hidden;
  o.attention_dropout_prob = 0.0;
  o.hidden_dropout_prob = c.dropout;
  o.activation = gpt2 ? "gelu_tanh" : "swiglu";
  o.layernorm_epsilon = c.norm_eps;
  o.rms_norm = !gpt2;
  o.bias = gpt2;
  o.rope = !gpt2;
  o.rope_theta = c.rope_theta;
  o.init = Init::normal(c.init_std);
  o.output_init = Init::normal(c.init_std / std::sqrt(2.0 * c.num_layers));
  o.causal = true;
  o.pre_layernorm = true;
  o.post_layernorm = false;
  return o;
}

// One transformer block: tp's ParallelTransformerLayer, its parameters registered under the
// block's own names (ln_1, qkv, proj, ln_2, up, down, in this order), which checkpoints and
// the Hugging Face mapping (hf.cpp) use. The layer itself is not a child, so its names
// ("attention.qkv", ...) never appear; dropout follows the model's training flag.
struct Block : torch::nn::Module {
  Block(const ModelConfig& c, const tp::TpGroup& group, std::shared_ptr<bool> training)
      : training(std::move(training)) {
    tp::check_divisible("num_heads", c.num_heads, group.size());
    layer = std::make_shared<tp::ParallelTransformerLayer>(layer_options(c), group);
    register_module("ln_1", layer->attention_layernorm);
    register_module("qkv", layer->attention->qkv);
    register_module("proj", layer->attention->dense);
    register_module("ln_2", layer->output_layernorm);
    register_module("up", layer->mlp->dense_h_to_4h);
    register_module("down", layer->mlp->dense_4h_to_h);
  }
  Values forward(const Values& in) {
    if (layer->is_training() != *training) layer->train(*training);
    return {layer->forward(in.at(0), /*mask=*/{})};
  }
  tp::DropoutRng& rng() { return layer->rng(); }

  std::shared_ptr<bool> training;
  std::shared_ptr<tp::ParallelTransformerLayer> layer;
};

// Final norm and the output projection: the tied embedding (GPT-2) or its own column-parallel
// linear (LLaMA). A tied weight registered here is a vocabulary shard too.
struct Head : torch::nn::Module, ShardedModule {
  Head(const ModelConfig& c, const tp::TpGroup& group, const at::Tensor& tied_weight)
      : group(group), vocab_size(c.vocab_size), norm_eps(c.norm_eps) {
    ln_f = register_module("ln_f", std::make_shared<tp::NormParams>(
                                       c.hidden, /*rms=*/c.family == Family::kLlama));
    if (tied_weight.defined()) {
      weight = register_parameter("weight", tied_weight);
    } else {
      LinearOptions options{false, Init::normal(c.init_std)};
      options.pad_vocab = true;  // (V_pad, H): drawn for the V real rows, zero padding rows
      lm_head = register_module("lm_head", std::make_shared<ColumnParallelLinear>(
                                               c.hidden, c.vocab_size, group, options));
    }
  }
  ShardSpec tp_shard(const std::string& name) const override {
    return name == "weight" ? ShardSpec{0, vocab_size} : ShardSpec{};
  }
  Values forward(const Values& in) {
    const at::Tensor h = tp::apply_norm(in.at(0), ln_f->weight, ln_f->bias, norm_eps);
    if (lm_head) return {lm_head->forward(h)};
    return {at::matmul(tp::copy_to_tp(h, group), weight.t())};  // (B, S, V_pad / tp)
  }
  tp::TpGroup group;
  int64_t vocab_size;
  double norm_eps;
  std::shared_ptr<tp::NormParams> ln_f;
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
  layer.get_state = [module] { return module->rng().state(); };
  layer.set_state = [module](const std::map<std::string, at::Tensor>& s) {
    module->rng().load_state(s);
  };
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
  auto embed = std::make_shared<Embed>(config, group, model.training_, model.gathers_batch_);
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

Values Model::loss(const Values& outputs, const Values& targets, bool logits_consumed) const {
  if (!*gathers_batch_) {
    return {tp::vocab_parallel_cross_entropy(outputs.at(0), targets.at(0), config.vocab_size, tp,
                                             0, logits_consumed)
                .mean()};
  }
  // The logits are the group's batch: the labels too, then this rank's own tokens.
  const at::Tensor group_labels = tp::gather_batch(targets.at(0), tp);
  return {tp::split_batch(tp::vocab_parallel_cross_entropy(outputs.at(0), group_labels,
                                                           config.vocab_size, tp, 0, logits_consumed),
                          tp)
              .mean()};
}

at::Tensor Model::full_logits(const at::Tensor& local_logits) const {
  return tp::all_gather_along(local_logits, -1, tp).narrow(-1, 0, config.vocab_size);
}

}  // namespace smp::models
