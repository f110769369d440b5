// ParallelTransformerLayer: norms, residuals and dropout around parallel attention and MLP
// (see transformer.h).
#include <ATen/ATen.h>

#include "smp/tensor_parallel/primitives.h"
#include "smp/tensor_parallel/transformer.h"

namespace smp::tp {

NormParams::NormParams(int64_t hidden, bool rms) {
  weight = register_parameter("weight", at::ones({hidden}, at::kFloat));
  if (!rms) bias = register_parameter("bias", at::zeros({hidden}, at::kFloat));
}

at::Tensor apply_norm(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                      double eps) {
  if (bias.defined()) return at::layer_norm(x, {x.size(-1)}, weight, bias, eps);
  // RMSNorm as Hugging Face's LlamaRMSNorm: the statistics in fp32 whatever the activations'
  // dtype (bf16's 8 mantissa bits would round the mean of squares), the result in theirs.
  const at::Tensor h = x.to(at::kFloat);
  return weight * (h * at::rsqrt(h.pow(2).mean(-1, /*keepdim=*/true) + eps)).to(x.scalar_type());
}

ParallelTransformerLayer::ParallelTransformerLayer(const TransformerOptions& options, TpGroup group)
    : TpModule(group), options_(options), rng_(group) {
  options.validate(group.size());
  attention = register_module("attention", std::make_shared<ParallelAttention>(options, group));
  mlp = register_module("mlp", std::make_shared<ParallelMLP>(options, group));
  if (options.pre_layernorm || options.post_layernorm) {
    attention_layernorm = register_module(
        "attention_layernorm", std::make_shared<NormParams>(options.hidden_size, options.rms_norm));
    output_layernorm = register_module(
        "output_layernorm", std::make_shared<NormParams>(options.hidden_size, options.rms_norm));
  }
}

namespace {
// `params` with the gradients of the defined ones summed over the group in backward (one
// all-reduce); undefined ones (absent biases, norms) stay in place, undefined.
std::vector<at::Tensor> sync_defined(std::vector<at::Tensor> params, const TpGroup& group) {
  std::vector<at::Tensor> defined;
  for (const auto& p : params) {
    if (p.defined()) defined.push_back(p);
  }
  if (defined.empty()) return params;
  defined = sync_replicated_grads(defined, group);
  auto it = defined.begin();
  for (auto& p : params) {
    if (p.defined()) p = *it++;
  }
  return params;
}

at::Tensor plus(const at::Tensor& x, const at::Tensor& bias) {
  return bias.defined() ? x + bias : x;
}
}  // namespace

at::Tensor ParallelTransformerLayer::forward(const at::Tensor& x, const at::Tensor& mask_in) {
  const bool sp = options_.sequence_parallel;
  const at::Tensor mask = mask_in.defined() ? mask_in.detach() : mask_in;  // never trained
  // Replicated parameters: the row-parallel biases, then each norm's weight and bias (undefined
  // where there are none). Under sequence parallelism each rank's gradient covers only its own
  // tokens, so their gradients are summed over the group (one all-reduce, in backward).
  std::vector<at::Tensor> shared = {attention->dense->bias, mlp->dense_4h_to_h->bias};
  for (const auto& norm : {attention_layernorm, output_layernorm}) {
    shared.push_back(norm ? norm->weight : at::Tensor());
    shared.push_back(norm ? norm->bias : at::Tensor());
  }
  if (sp) shared = sync_defined(shared, tp_group());
  const double eps = options_.layernorm_epsilon;
  auto ln1 = [&](const at::Tensor& t) { return apply_norm(t, shared[2], shared[3], eps); };
  auto ln2 = [&](const at::Tensor& t) { return apply_norm(t, shared[4], shared[5], eps); };
  // Hidden dropout: replicated activations share a mask; sequence shards draw their own.
  auto drop = [&](const at::Tensor& t) {
    return rng_.dropout(t, options_.hidden_dropout_prob, /*sharded=*/sp, is_training());
  };
  auto attend = [&](const at::Tensor& t) {
    return drop(plus(attention->forward(t, mask, rng_), shared[0]));
  };
  auto feed = [&](const at::Tensor& t) { return drop(plus(mlp->forward(t), shared[1])); };

  if (options_.pre_layernorm) {
    const at::Tensor y = x + attend(ln1(x));
    return y + feed(ln2(y));
  }
  if (options_.post_layernorm) {
    const at::Tensor y = ln1(x + attend(x));
    return ln2(y + feed(y));
  }
  const at::Tensor y = x + attend(x);
  return y + feed(y);
}

}  // namespace smp::tp
