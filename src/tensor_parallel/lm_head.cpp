// DistributedTransformerLMHead: embeddings, transformer, tied vocab-parallel head, its loss
// and its pipeline layers (see lm_head.h).
#include "smp/tensor_parallel/lm_head.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <limits>

#include "smp/core/error.h"
#include "smp/tensor_parallel/primitives.h"

namespace smp::nn {

// ---- LMEmbedding -----------------------------------------------------------------------------

namespace {
tp::EmbeddingOptions word_options(const DistributedTransformerOptions& o, bool sp) {
  tp::EmbeddingOptions out;
  out.init = tp::Init::normal(o.initializer_range());
  out.sequence_parallel = sp;
  return out;
}
}  // namespace

LMEmbedding::LMEmbedding(const DistributedTransformerOptions& options,
                         const tp::TransformerOptions& layer)
    : tp::TpModule(options.group()),
      layer_(layer),
      num_positions_(options.num_positions()),
      rng_(options.group()) {
  const int64_t h = options.hidden_size();
  const double std = options.initializer_range();
  word_embeddings = register_module(
      "word_embeddings",
      std::make_shared<tp::VocabParallelEmbedding>(options.vocab_size(), h, tp_group(),
                                                   word_options(options, layer.sequence_parallel)));
  position_embeddings = register_sharded(
      "position_embeddings", at::empty({num_positions_, h}, at::kFloat).normal_(0.0, std), -1);
  if (options.num_token_types() > 0) {
    token_type_embeddings = register_sharded(
        "token_type_embeddings",
        at::empty({options.num_token_types(), h}, at::kFloat).normal_(0.0, std), -1);
  }
}

Values LMEmbedding::forward(const at::Tensor& ids, const at::Tensor& attention_mask,
                            const at::Tensor& token_type_ids, const at::Tensor& position_ids) {
  const int64_t b = ids.size(0), s = ids.size(1);
  if (s > num_positions_) {
    throw ConfigError("sequence length " + std::to_string(s) + " exceeds num_positions (" +
                      std::to_string(num_positions_) + ")");
  }
  const bool sp = layer_.sequence_parallel;
  at::Tensor h = word_embeddings->forward(ids);  // (B, S, H), or (B, S/tp, H) under SP
  // Replicated tables; under SP each rank uses them on its own tokens only.
  std::vector<at::Tensor> tables = {position_embeddings};
  if (token_type_embeddings.defined()) tables.push_back(token_type_embeddings);
  if (sp) tables = tp::sync_replicated_grads(tables, tp_group());
  const at::Tensor positions =
      position_ids.defined() ? position_ids : at::arange(s, ids.options()).expand({b, s});
  at::Tensor extra = at::embedding(tables[0], positions);
  if (token_type_ids.defined()) extra = extra + at::embedding(tables.at(1), token_type_ids);
  if (sp) extra = tp::own_slice(extra, 1, tp_group());
  h = rng_.dropout(h + extra, layer_.hidden_dropout_prob, /*sharded=*/sp, is_training());
  at::Tensor mask;
  if (attention_mask.defined()) {  // HF's extended mask: 0 keep, -10000 drop
    mask = (1.0 - attention_mask.to(h.scalar_type())).view({b, 1, 1, s}) * -10000.0;
  }
  return {h, mask};
}

// ---- DistributedTransformerLMHead ------------------------------------------------------------

DistributedTransformerLMHead::DistributedTransformerLMHead(
    const DistributedTransformerOptions& options)
    : tp::TpModule(options.group()),
      vocab_size_(options.vocab_size()),
      add_lm_head_(options.add_lm_head()),
      flow_(options.flow()) {
  embedding = register_module("embedding", std::make_shared<LMEmbedding>(options, options.to_tp()));
  transformer = register_module("transformer", std::make_shared<DistributedTransformer>(options));
}

at::Tensor DistributedTransformerLMHead::logits(const at::Tensor& hidden,
                                                const at::Tensor& head_weight) const {
  // Every rank needs every token against its own vocabulary rows.
  const at::Tensor full = transformer->sequence_parallel()
                              ? tp::all_gather_sequence(hidden, tp_group())
                              : tp::copy_to_tp(hidden, tp_group());
  return at::linear(full, head_weight);  // (B, S, V_pad / tp)
}

at::Tensor DistributedTransformerLMHead::loss(const at::Tensor& logits,
                                              const at::Tensor& labels) const {
  // The vocabulary-parallel loss needs the same rows on every rank: the group's batch; then
  // this rank's own tokens. A user's labels on the host are checked here, before any copy.
  if (labels.is_cpu()) tp::check_labels(labels, vocab_size_);
  const at::Tensor per_token = flow_.exit(tp::vocab_parallel_cross_entropy(
      logits, flow_.enter(labels), vocab_size_, tp_group()));
  return per_token.sum() / (labels >= 0).sum().clamp_min(1).to(per_token.scalar_type());
}

Values DistributedTransformerLMHead::forward(const Values& in) {
  SMP_CHECK(!in.empty());
  const Values group_batch = flow_.enter(Values{in.begin(), in.begin() + std::min<size_t>(in.size(), 4)});
  auto arg = [&](size_t i) { return i < group_batch.size() ? group_batch[i] : at::Tensor(); };
  const Values embedded = embedding->forward(arg(0), arg(1), arg(2), arg(3));
  const at::Tensor hidden = transformer->forward(embedded[0], embedded[1]);
  if (!add_lm_head_) {
    return {flow_.exit(transformer->sequence_parallel()
                           ? tp::gather_from_sequence(hidden, tp_group())
                           : hidden)};
  }
  const at::Tensor out = logits(hidden, embedding->word_embeddings->weight);
  if (in.size() < 5 || !in[4].defined()) {
    if (flow_.gathers()) {
      // This rank's samples need every vocabulary slice: gathered, then its own rows.
      return {flow_.exit(tp::gather_from_tp(out, tp_group()).narrow(-1, 0, vocab_size_))};
    }
    if (tp_group().size() == 1) return {out.narrow(-1, 0, vocab_size_)};  // the whole vocabulary
    // This rank's slice, its padding columns -inf: no argmax or sample over it picks one.
    const int64_t n = out.size(-1), real = std::clamp<int64_t>(vocab_size_ - tp_group().rank() * n, 0, n);
    if (real == n) return {out};
    const at::Tensor column = at::arange(n, at::TensorOptions().dtype(at::kLong).device(out.device()));
    return {out.masked_fill(column >= real, -std::numeric_limits<double>::infinity())};
  }
  return {loss(out, in[4])};  // this rank's labels
}

}  // namespace smp::nn
