// Composition with the pipeline: the two-layer LM (DistributedTransformerLMHead), each TP layer
// a pipeline Layer, trained through smp::DistributedModel / smp::step against one process.
// Layouts: tp = world (pp = 1); on 4 ranks also tp = 2 with two replicas, and pp = 2 x tp = 2
// split by hand and automatically (the tied head in the last stage keeps its own copy, kept
// equal by smp::step, through DistributedModelOptions::tied_copies).
// Under optimize "speed" and "memory": loss every step, every local gradient on the first, the
// parameters after 3 SGD steps; gradients of replicated parameters identical across the group.
#include <gtest/gtest.h>

#include <set>

#include "smp/tensor_parallel/nn.h"
#include "tp_testing.h"

namespace smp::testing {
namespace {

constexpr int64_t kB = 4, kS = 8, kVocab = 49;
constexpr double kTol = 2e-5;  // fp32; microbatching and the TP sums reorder additions
constexpr double kLr = 0.5;

nn::DistributedTransformerOptions lm_options() {
  return nn::DistributedTransformerOptions()
      .num_layers(2)
      .num_attention_heads(4)
      .attention_head_size(4)
      .hidden_size(16)
      .intermediate_size(32)
      .attention_dropout_prob(0)
      .hidden_dropout_prob(0)
      .pre_layernorm(true)
      .post_layernorm(true)
      .causal_mask_size(kS)
      .vocab_size(kVocab)
      .num_positions(kS);
}

RefLayer ref_of_lm() { return {4, 4, 16, "gelu", true, true, true, 1e-5}; }

// "<pipeline layer>.<param>" -> the name inside DistributedTransformerLMHead.
std::string module_name(const std::string& name) {
  const size_t dot = name.find('.');
  const std::string layer = name.substr(0, dot), rest = name.substr(dot + 1);
  if (layer == "embedding") return name;
  if (layer.rfind("layer_", 0) == 0)
    return "transformer.seq_layers." + layer.substr(6) + "." + rest;
  if (rest == "weight" || rest == "word_embeddings.weight")
    return "embedding.word_embeddings.weight";
  return "transformer." + rest;  // lm_head.final_layernorm.*
}

void sgd(const std::vector<at::Tensor>& params) {
  at::NoGradGuard no_grad;
  for (at::Tensor p : params) {
    p.sub_(p.grad() * kLr);
    p.mutable_grad() = at::Tensor();
  }
}

// `automatic`: the pipeline profiles (every rank, TP layers communicating) and splits.
void check_layout(int pp, int tp, const std::string& optimize, bool automatic = false) {
  const std::string what = "pp=" + std::to_string(pp) + " tp=" + std::to_string(tp) + " " +
                           optimize + (automatic ? " auto_partition" : "");
  SCOPED_TRACE(what);
  reinit("\"tensor_parallel_degree\": " + std::to_string(tp) +
         ", \"pipeline_parallel_degree\": " + std::to_string(pp) +
         ", \"microbatches\": 2, \"auto_partition\": " + (automatic ? "true" : "false") +
         ", \"optimize\": \"" + optimize + "\"");
  const TpGroup g = tp_group();
  at::manual_seed(21);
  const at::Tensor ids = at::randint(0, kVocab, {kB, kS}, at::kLong);
  const at::Tensor labels = at::randint(0, kVocab, {kB, kS}, at::kLong);
  at::Tensor keep = at::ones({kB, kS});
  keep[3][kS - 1] = 0;

  at::manual_seed(8);
  auto lm = std::make_shared<nn::DistributedTransformerLMHead>(lm_options());
  at::manual_seed(8);
  auto full = std::make_shared<nn::DistributedTransformerLMHead>(lm_options().tp_group(TpGroup()));
  Params ref = leaves_of(*full);
  std::vector<at::Tensor> ref_list;
  for (auto& [name, p] : ref) ref_list.push_back(p);
  auto dims = tp::tp_shard_dims(*lm);

  std::vector<smp::Layer> layers = lm->pipeline_layers(/*separate_head_weight=*/pp > 1);
  DistributedModelOptions options;
  options.tied_copies = lm->tied_copies();
  DistributedModel model(std::move(layers), options);
  for (auto [layer, stage] :
       {std::pair{"embedding", 0}, {"layer_0", 0}, {"layer_1", pp - 1}, {"lm_head", pp - 1}}) {
    if (!automatic) model.set_partition(layer, stage);
  }
  const LossFn loss_fn = [lm](const Values& out, const Values& targets) -> Values {
    return {lm->loss(out[0], targets[0])};
  };
  for (int it = 0; it < 3; ++it) {
    const at::Tensor ref_loss = ref_lm_loss(ref, ids, keep, labels, kVocab, 2, ref_of_lm());
    ref_loss.backward();
    const std::vector<StepOutput> out = step(model, {ids, keep}, {labels}, loss_fn);
    EXPECT_TRUE(close(out.at(0).reduce_mean(), ref_loss.detach(), kTol)) << "loss, step " << it;
    std::vector<at::Tensor> local;
    std::set<const void*> seen;  // the tied weight is listed by two layers when pp = 1
    for (const auto& p : model.local_parameter_info()) {
      const std::string name = module_name(p.name);
      const int64_t dim = dims.count(name) ? dims.at(name) : 0;
      if (it == 0) {
        EXPECT_EQ(p.tp_sharded, dim >= 0) << p.name;
        const at::Tensor want = expected_shard(ref.at(name).grad(), dim, p.tensor, g);
        EXPECT_TRUE(close(p.tensor.grad(), want, kTol)) << "grad of " << p.name;
        if (dim < 0) {  // replicated: the same gradient on every rank of the group
          const at::Tensor all = tp::all_gather_along(p.tensor.grad().unsqueeze(0), 0, g);
          for (int r = 0; r < g.size(); ++r) {
            EXPECT_TRUE(at::equal(all[r], p.tensor.grad()))
                << p.name << " differs on tp rank " << r;
          }
        }
      }
      if (seen.insert(p.tensor.unsafeGetTensorImpl()).second) local.push_back(p.tensor);
    }
    sgd(local);
    sgd(ref_list);
  }
  for (const auto& p : model.local_parameter_info()) {
    const std::string name = module_name(p.name);
    const int64_t dim = dims.count(name) ? dims.at(name) : 0;
    EXPECT_TRUE(close(p.tensor, expected_shard(ref.at(name), dim, p.tensor, g), kTol))
        << p.name << " after 3 steps";
  }
}

TEST(TpPipeline, TwoLayerLmMatchesOneProcess) {
  const int world = comm::world_size();
  for (const std::string optimize : {"speed", "memory"}) {
    check_layout(1, world, optimize);
    if (world == 4) {
      check_layout(1, 2, optimize);
      check_layout(2, 2, optimize);
    }
  }
  if (world == 4) check_layout(2, 2, "memory", /*automatic=*/true);
}

}  // namespace
}  // namespace smp::testing
