// SMP's distributed modules: linear, embedding, transformer layer and stack (see nn.h).
#include "smp/tensor_parallel/nn.h"

#include <ATen/ATen.h>

#include "smp/core/error.h"
#include "smp/runtime.h"  // the default groups (SMP's facade)
#include "smp/tensor_parallel/primitives.h"

namespace smp::nn {

tp::TpGroup default_tp_group() {
  return smp::is_initialized() ? tp::TpGroup(smp::process_group(CommGroup::TP_GROUP))
                               : tp::TpGroup();
}

bool default_sequence_parallel() {
  return smp::is_initialized() && smp::config().optimize == OptimizeFor::kMemory &&
         smp::tp_size() > 1;
}

bool default_prescaled_batch() {
  return !smp::is_initialized() || smp::config().prescaled_batch;
}

// ---- BatchFlow -------------------------------------------------------------------------------

BatchFlow::BatchFlow(std::optional<bool> prescaled_batch, bool skip_scatter_and_merge,
                     tp::TpGroup group)
    : gathers_(group.size() > 1 && !prescaled_batch.value_or(default_prescaled_batch()) &&
               !skip_scatter_and_merge),
      group_(group) {}

at::Tensor BatchFlow::enter(const at::Tensor& x) const {
  return gathers_ && x.defined() ? tp::gather_batch(x, group_) : x;
}

Values BatchFlow::enter(const Values& in) const {
  if (!gathers_ || in.empty() || !in[0].defined()) return in;
  const int64_t batch = in[0].size(0);
  Values out;
  for (const at::Tensor& t : in) {
    out.push_back(t.defined() && t.dim() > 0 && t.size(0) == batch ? enter(t) : t);
  }
  return out;
}

at::Tensor BatchFlow::exit(const at::Tensor& y) const {
  return gathers_ && y.defined() ? tp::split_batch(y, group_) : y;
}

Values BatchFlow::exit(const Values& out) const {
  if (!gathers_ || out.empty() || !out[0].defined()) return out;
  const int64_t batch = out[0].size(0);
  Values mine;
  for (const at::Tensor& t : out) {
    mine.push_back(t.defined() && t.dim() > 0 && t.size(0) == batch ? exit(t) : t);
  }
  return mine;
}

namespace {
void not_implemented(bool given, const std::string& key, const std::string& allowed) {
  if (given) {
    throw ConfigError(key + ": smp does not implement it; allowed: " + allowed);
  }
}
}  // namespace

// ---- DistributedLinear -----------------------------------------------------------------------

namespace {
tp::LinearOptions gathered(bool bias) {
  tp::LinearOptions out;
  out.bias = bias;
  out.gather_output = true;
  return out;
}
}  // namespace

DistributedLinear::DistributedLinear(int64_t in_features, int64_t out_features,
                                     const DistributedLinearOptions& options)
    : tp::ColumnParallelLinear(in_features, out_features,
                               options.tp_group().value_or(default_tp_group()),
                               gathered(options.bias())),
      flow_(options.prescaled_batch(), options.skip_scatter_and_merge(), tp_group()) {}

at::Tensor DistributedLinear::forward(const at::Tensor& x) {
  return flow_.exit(tp::ColumnParallelLinear::forward(flow_.enter(x)));
}

// ---- DistributedEmbedding --------------------------------------------------------------------

DistributedEmbedding::DistributedEmbedding(int64_t num_embeddings, int64_t embedding_dim,
                                           const DistributedEmbeddingOptions& options)
    : tp::TpModule(options.tp_group().value_or(default_tp_group())),
      options_(options),
      flow_(options.prescaled_batch(), options.skip_scatter_and_merge(), tp_group()) {
  not_implemented(options.max_norm().has_value(), "max_norm", "unset");
  not_implemented(options.sparse(), "sparse", "false");
  tp::check_divisible("embedding_dim", embedding_dim, tp_group().size());
  at::Tensor full = options.weight().defined()
                        ? options.weight().detach().to(at::kFloat)
                        : at::empty({num_embeddings, embedding_dim}, at::kFloat)
                              .normal_(0.0, options.initializer_range());
  if (full.size(0) != num_embeddings || full.size(1) != embedding_dim) {
    throw ConfigError("_weight: got shape " + c10::str(full.sizes()) + "; allowed: [" +
                      std::to_string(num_embeddings) + ", " + std::to_string(embedding_dim) + "]");
  }
  if (options.padding_idx() && !options.weight().defined()) full[*options.padding_idx()].zero_();
  if (flow_.gathers() && options.skip_allgather()) {
    throw ConfigError("skip_allgather: got true in the non-prescaled batch flow, where this rank's "
                      "own samples would keep only its own columns; allowed with "
                      "prescaled_batch true, or with skip_scatter_and_merge true");
  }
  weight = register_sharded("weight", full, 1);
}

at::Tensor DistributedEmbedding::forward(const at::Tensor& ids) {
  const at::Tensor rows = at::embedding(weight, flow_.enter(ids),
                                        options_.padding_idx().value_or(-1),
                                        options_.scale_grad_by_freq(), false);
  return flow_.exit(options_.skip_allgather() ? rows : tp::gather_from_tp(rows, tp_group()));
}

// ---- options ---------------------------------------------------------------------------------

tp::TpGroup DistributedTransformerOptions::group() const {
  return tp_group().value_or(default_tp_group());
}

BatchFlow DistributedTransformerOptions::flow() const {
  return BatchFlow(prescaled_batch(), skip_scatter_and_merge(), group());
}

tp::TransformerOptions DistributedTransformerOptions::to_tp() const {
  not_implemented(add_cross_attention(), "add_cross_attention", "false");
  not_implemented(use_alibi(), "use_alibi", "false");
  tp::TransformerOptions o;
  o.hidden_size = hidden_size();
  o.num_attention_heads = num_attention_heads();
  o.attention_head_size = attention_head_size();
  o.intermediate_size = intermediate_size();
  o.attention_dropout_prob = attention_dropout_prob();
  o.hidden_dropout_prob = hidden_dropout_prob();
  o.activation = activation();
  o.layernorm_epsilon = layernorm_epsilon();
  o.init = use_normal_initialization() ? tp::Init::normal(initializer_range()) : tp::Init{};
  o.causal_mask_size = causal_mask_size().value_or(0);
  o.causal = causal_mask_size().has_value();
  o.pre_layernorm = pre_layernorm();
  o.post_layernorm = post_layernorm();
  o.sequence_parallel = sequence_parallel().value_or(default_sequence_parallel());
  o.validate(group().size());
  return o;
}

// ---- DistributedTransformerLayer and DistributedTransformer ----------------------------------

DistributedTransformerLayer::DistributedTransformerLayer(
    const DistributedTransformerOptions& options)
    : tp::ParallelTransformerLayer(options.to_tp(), options.group()), flow_(options.flow()) {}

namespace {
// SMP's forward around a native one: the batch flow's boundary, and whole sequences in and out
// of a native forward that may be sequence-parallel. The mask comes back as it came in.
Values smp_forward(const Values& in, const BatchFlow& flow, bool sp, const tp::TpGroup& g,
                   const std::function<at::Tensor(const at::Tensor&, const at::Tensor&)>& f) {
  SMP_CHECK(!in.empty());
  const at::Tensor mask = in.size() > 1 ? in[1] : at::Tensor();
  const Values group_batch = flow.enter({in[0], mask});
  at::Tensor x = sp ? tp::scatter_to_sequence(group_batch[0], g) : group_batch[0];
  x = f(x, group_batch[1]);
  return {flow.exit(sp ? tp::gather_from_sequence(x, g) : x), mask};
}
}  // namespace

Values DistributedTransformerLayer::forward(const Values& in) {
  return smp_forward(in, flow_, options().sequence_parallel, tp_group(),
                     [this](const at::Tensor& x, const at::Tensor& m) { return forward(x, m); });
}

DistributedTransformer::DistributedTransformer(const DistributedTransformerOptions& options)
    : tp::TpModule(options.group()), options_(options.to_tp()), flow_(options.flow()) {
  auto seq = register_module("seq_layers", std::make_shared<torch::nn::Module>());
  for (int64_t i = 0; i < options.num_layers(); ++i) {
    layers.push_back(seq->register_module(std::to_string(i),
                                          std::make_shared<DistributedTransformerLayer>(options)));
  }
  if (options.pre_layernorm() && options.post_layernorm()) {
    final_layernorm = register_module(
        "final_layernorm", std::make_shared<tp::NormParams>(options.hidden_size(), /*rms=*/false));
  }
}

at::Tensor DistributedTransformer::final_norm(const at::Tensor& x) {
  if (!final_layernorm) return x;
  std::vector<at::Tensor> p = {final_layernorm->weight, final_layernorm->bias};
  if (options_.sequence_parallel) p = tp::sync_replicated_grads(p, tp_group());
  return tp::apply_norm(x, p[0], p[1], options_.layernorm_epsilon);
}

at::Tensor DistributedTransformer::forward(const at::Tensor& x, const at::Tensor& mask) {
  at::Tensor h = x;
  for (const auto& layer : layers) h = layer->forward(h, mask);
  return final_norm(h);
}

Values DistributedTransformer::forward(const Values& in) {
  return smp_forward(in, flow_, options_.sequence_parallel, tp_group(),
                     [this](const at::Tensor& x, const at::Tensor& m) { return forward(x, m); });
}

}  // namespace smp::nn
