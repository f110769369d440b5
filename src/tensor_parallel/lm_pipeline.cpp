// DistributedTransformerLMHead as pipeline layers, and the gradient sum that keeps a head
// weight in another stage equal to the word embedding it is tied to (see lm_head.h).
#include <ATen/ATen.h>

#include "smp/tensor_parallel/lm_head.h"
#include "smp/tensor_parallel/primitives.h"

namespace smp::nn {
namespace {

// The "lm_head" layer's module: the final norm (shared with the transformer) and, when the
// head has its own copy of the word embedding, that copy (split by vocabulary like it).
class HeadModule : public tp::TpModule {
 public:
  HeadModule(tp::TpGroup group, const std::shared_ptr<tp::NormParams>& norm,
             const at::Tensor& separate_weight, int64_t vocab_size)
      : tp::TpModule(group) {
    if (norm) register_module("final_layernorm", norm);
    if (separate_weight.defined()) {
      register_shard("weight", separate_weight, 0, vocab_size);
    }
  }
};

}  // namespace

std::vector<Layer> DistributedTransformerLMHead::pipeline_layers(
    bool separate_head_weight) {
  std::vector<Layer> out;
  auto self = std::static_pointer_cast<DistributedTransformerLMHead>(shared_from_this());
  auto emb = embedding;
  out.push_back(module_layer("embedding", emb, [emb, self](const Values& in) {
    const Values group_batch = self->flow().enter(in);
    return emb->forward(group_batch[0], group_batch.size() > 1 ? group_batch[1] : at::Tensor(),
                        {}, {});
  }));
  for (size_t i = 0; i < transformer->layers.size(); ++i) {
    auto layer = transformer->layers[i];
    out.push_back(module_layer("layer_" + std::to_string(i), layer,
                                         [layer](const Values& in) -> Values {
                                           return {layer->forward(in[0], in[1]), in[1]};
                                         }));
  }
  const at::Tensor word = embedding->word_embeddings->weight;
  const bool copy = separate_head_weight && add_lm_head_;
  if (copy) head_weight = word.detach().clone().requires_grad_(true);
  auto head = std::make_shared<HeadModule>(tp_group(), transformer->final_layernorm,
                                           copy ? head_weight : at::Tensor(),
                                           embedding->word_embeddings->vocab_size());
  Layer last =
      module_layer("lm_head", head, [self](const Values& in) -> Values {
        const at::Tensor h = self->transformer->final_norm(in[0]);
        if (self->add_lm_head_) {
          const at::Tensor& w = self->head_weight.defined()
                                    ? self->head_weight
                                    : self->embedding->word_embeddings->weight;
          return {self->logits(h, w)};
        }
        // Without a head: the hidden states, whole (SMP's output).
        return {self->flow().exit(self->transformer->sequence_parallel()
                                      ? tp::gather_from_sequence(h, self->tp_group())
                                      : h)};
      });
  if (!copy && add_lm_head_) {  // listing the tied tensor keeps both layers in one stage
    last.parameters.push_back(word);
    last.parameter_names.push_back("word_embeddings.weight");
    last.tp_shards.push_back({0, embedding->word_embeddings->vocab_size()});
  }
  out.push_back(std::move(last));
  return out;
}

std::map<std::string, std::string> DistributedTransformerLMHead::tied_copies() const {
  if (!head_weight.defined()) return {};
  return {{"lm_head.weight", "embedding.word_embeddings.weight"}};
}

}  // namespace smp::nn
