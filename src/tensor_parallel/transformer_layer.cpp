// ParallelTransformerLayer: LayerNorms, residuals and dropout around parallel attention and
// MLP (see transformer.h).
#include <ATen/ATen.h>

#include "smp/tensor_parallel/primitives.h"
#include "smp/tensor_parallel/transformer.h"

namespace smp::tp {

LayerNormParams::LayerNormParams(int64_t hidden) {
  weight = register_parameter("weight", at::ones({hidden}, at::kFloat));
  bias = register_parameter("bias", at::zeros({hidden}, at::kFloat));
}

ParallelTransformerLayer::ParallelTransformerLayer(const TransformerOptions& options, TpGroup group)
    : TpModule(group), options_(options), rng_(group) {
  options.validate(group.size());
  attention = register_module("attention", std::make_shared<ParallelAttention>(options, group));
  mlp = register_module("mlp", std::make_shared<ParallelMLP>(options, group));
  if (options.pre_layernorm || options.post_layernorm) {
    attention_layernorm = register_module("attention_layernorm",
                                          std::make_shared<LayerNormParams>(options.hidden_size));
    output_layernorm =
        register_module("output_layernorm", std::make_shared<LayerNormParams>(options.hidden_size));
  }
}

at::Tensor ParallelTransformerLayer::forward(const at::Tensor& x, const at::Tensor& mask_in) {
  const bool sp = options_.sequence_parallel;
  const at::Tensor mask = mask_in.defined() ? mask_in.detach() : mask_in;  // never trained
  // Replicated parameters. Under sequence parallelism each rank's gradient covers only its
  // own tokens, so their gradients are summed over the group (one all-reduce, in backward).
  std::vector<at::Tensor> shared = {attention->dense->bias, mlp->dense_4h_to_h->bias};
  if (attention_layernorm) {
    for (const auto& ln : {attention_layernorm, output_layernorm}) {
      shared.push_back(ln->weight);
      shared.push_back(ln->bias);
    }
  }
  if (sp) shared = sync_replicated_grads(shared, tp_group());
  const int64_t h = options_.hidden_size;
  const double eps = options_.layernorm_epsilon;
  auto ln1 = [&](const at::Tensor& t) { return at::layer_norm(t, {h}, shared[2], shared[3], eps); };
  auto ln2 = [&](const at::Tensor& t) { return at::layer_norm(t, {h}, shared[4], shared[5], eps); };
  // Hidden dropout: replicated activations share a mask; sequence shards draw their own.
  auto drop = [&](const at::Tensor& t) {
    return rng_.dropout(t, options_.hidden_dropout_prob, /*sharded=*/sp, is_training());
  };
  auto attend = [&](const at::Tensor& t) {
    return drop(attention->forward(t, mask, rng_) + shared[0]);
  };
  auto feed = [&](const at::Tensor& t) { return drop(mlp->forward(t) + shared[1]); };

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
