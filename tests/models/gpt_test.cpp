// GPT-2 and LLaMA-style models: tensor-parallel runs equal the single-device model built from
// the same seed (loss, logits, gradients), on 1, 2 and 4 ranks.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include <ATen/ATen.h>
#include <torch/optim/adamw.h>

#include "smp/models/gpt.h"
#include "smp/smp.h"
#include "smp/tensor_parallel/group.h"
#include "smp/tensor_parallel/init.h"

namespace smp::models {
namespace {

constexpr double kRelTol = 1e-5;  // fp32: tensor parallelism only reorders sums

ModelConfig tiny(Family family) {
  ModelConfig c = named_model("tiny");
  c.family = family;
  c.num_heads = 4;
  c.num_layers = 2;
  c.vocab_size = 50;  // padded to 64 tp: ranks past the first hold padding only
  if (family == Family::kLlama) c.tie_embeddings = false, c.ffn_hidden = 48;
  return c;
}

::testing::AssertionResult close(const at::Tensor& got, const at::Tensor& want, double tol) {
  const double err = (got - want).abs().max().item<double>();
  const double scale = want.abs().max().item<double>();
  if (err <= tol * scale + 1e-12) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "max abs error " << err << " > " << tol << " * " << scale;
}

// `t` with zero rows appended along `dim` up to `rows`.
at::Tensor padded_rows(const at::Tensor& t, int64_t dim, int64_t rows) {
  std::vector<int64_t> shape = t.sizes().vec();
  shape[dim] = rows - t.size(dim);
  return at::cat({t, at::zeros(shape, t.options())}, dim);
}

void run(Model& model, const at::Tensor& tokens, const at::Tensor& labels, at::Tensor* logits,
         at::Tensor* loss) {
  Values x = {tokens};
  for (auto& layer : model.layers) x = layer.forward(x);
  *logits = model.full_logits(x[0]);
  *loss = model.loss(x, {labels})[0];
  loss->backward();
}

void check_family(Family family) {
  const int world = comm::world_size();
  init(Config::from_json_string("{\"tensor_parallel_degree\": " + std::to_string(world) +
                                ", \"ddp\": true}"));
  const ModelConfig config = tiny(family);
  at::manual_seed(11);
  Model reference = build_model(config, tp::TpGroup{}, false);
  at::manual_seed(11);
  Model parallel = build_model(config, tp::TpGroup(process_group(CommGroup::TP_GROUP)), false);

  at::manual_seed(3);
  const at::Tensor tokens = at::randint(0, config.vocab_size, {2, 16}, at::kLong);
  const at::Tensor labels = at::randint(0, config.vocab_size, {2, 16}, at::kLong);
  at::Tensor ref_logits, ref_loss, logits, loss;
  run(reference, tokens, labels, &ref_logits, &ref_loss);
  run(parallel, tokens, labels, &logits, &loss);
  EXPECT_NEAR(ref_loss.item<double>(), std::log(config.vocab_size), 0.5) << "loss at init";
  EXPECT_TRUE(close(loss, ref_loss, kRelTol)) << "loss";
  EXPECT_TRUE(close(logits, ref_logits, kRelTol)) << "logits";

  // Every gradient: replicated ones whole, shards against the reference's slice.
  const tp::TpGroup group(process_group(CommGroup::TP_GROUP));
  for (size_t i = 0; i < parallel.layers.size(); ++i) {
    const auto& mine = parallel.layers[i];
    const auto& ref = reference.layers[i];
    ASSERT_EQ(mine.parameters.size(), ref.parameters.size());
    for (size_t j = 0; j < mine.parameters.size(); ++j) {
      const std::string name = mine.name + "." + mine.parameter_names[j];
      at::Tensor want = ref.parameters[j].grad();
      const at::Tensor& got = mine.parameters[j].grad();
      ASSERT_TRUE(got.defined()) << name;
      const ShardSpec spec = mine.tp_shards.at(j);
      if (spec.sharded()) {  // this rank's slice of the whole, padded to tp times this shard
        want = padded_rows(want.narrow(spec.dim, 0, spec.size), spec.dim, got.size(spec.dim) * group.size())
                   .narrow(spec.dim, group.rank() * got.size(spec.dim), got.size(spec.dim));
      }
      EXPECT_TRUE(close(got, want, kRelTol)) << "grad of " << name;
    }
  }
  shutdown();
}

TEST(Gpt, Gpt2TensorParallelEqualsOneDevice) { check_family(Family::kGpt2); }
TEST(Gpt, LlamaTensorParallelEqualsOneDevice) { check_family(Family::kLlama); }

// The vocabulary padded to 64 tp: padding rows start zero, get exactly zero gradients (so AdamW,
// weight decay and all, keeps them zero) and are never predicted: the loss and the whole
// logits are over the vocabulary alone, even with the padding rows made large.
void check_padding(Family family) {
  init(Config::from_json_string("{\"tensor_parallel_degree\": " +
                                std::to_string(comm::world_size()) + ", \"ddp\": true}"));
  const ModelConfig config = tiny(family);
  const tp::TpGroup group(process_group(CommGroup::TP_GROUP));
  at::manual_seed(11);
  Model model = build_model(config, group, false);
  struct Padding {
    std::string name;
    at::Tensor param;
    int64_t dim, real;  // rows [real, end) of dim are padding
    at::Tensor of(const at::Tensor& t) const { return t.narrow(dim, real, t.size(dim) - real); }
  };
  std::vector<Padding> padding;
  std::vector<at::Tensor> params;
  for (const Layer& layer : model.layers) {
    for (size_t j = 0; j < layer.parameters.size(); ++j) {
      const at::Tensor& p = layer.parameters[j];
      params.push_back(p);
      const ShardSpec spec = layer.tp_shards.at(j);
      if (!spec.sharded() || spec.size == p.size(spec.dim) * group.size()) continue;
      const int64_t rows = p.size(spec.dim);
      EXPECT_EQ(rows * group.size(), tp::padded_vocab_size(config.vocab_size, group.size()));
      const int64_t real = std::clamp<int64_t>(config.vocab_size - group.rank() * rows, 0, rows);
      padding.push_back({layer.name + "." + layer.parameter_names[j], p, spec.dim, real});
    }
  }
  ASSERT_EQ(padding.size(), 2u);  // the embedding and the head (GPT-2's: the same tensor)
  const auto all_zero = [](const at::Tensor& t) { return at::equal(t, at::zeros_like(t)); };
  for (const Padding& p : padding) EXPECT_TRUE(all_zero(p.of(p.param))) << p.name << " at init";

  torch::optim::AdamW adamw(params, torch::optim::AdamWOptions(1e-2).weight_decay(0.1));
  at::manual_seed(3);
  const at::Tensor tokens = at::randint(0, config.vocab_size, {2, 16}, at::kLong);
  const at::Tensor labels = at::randint(0, config.vocab_size, {2, 16}, at::kLong);
  at::Tensor logits, loss;
  for (int it = 0; it < 2; ++it) {
    adamw.zero_grad();
    run(model, tokens, labels, &logits, &loss);
    for (const Padding& p : padding) EXPECT_TRUE(all_zero(p.of(p.param.grad()))) << p.name << " grad";
    adamw.step();
  }
  for (const Padding& p : padding) EXPECT_TRUE(all_zero(p.of(p.param))) << p.name << " after AdamW";

  // Padding rows made large: the padded logit columns would win every argmax and dominate the
  // log-sum-exp, were they counted.
  {
    at::NoGradGuard no_grad;
    for (const Padding& p : padding) p.of(p.param).normal_(0, 10);
  }
  Values x = {tokens};
  for (auto& layer : model.layers) x = layer.forward(x);
  const at::Tensor whole = model.full_logits(x[0]);
  ASSERT_EQ(whole.size(-1), config.vocab_size);
  const at::Tensor want =
      at::cross_entropy_loss(whole.reshape({-1, config.vocab_size}), labels.reshape(-1));
  EXPECT_TRUE(close(model.loss(x, {labels})[0], want, kRelTol)) << "the loss counts padding";
  shutdown();
}

TEST(Gpt, Gpt2PaddedVocabularyIsNeverPredicted) { check_padding(Family::kGpt2); }
TEST(Gpt, LlamaPaddedVocabularyIsNeverPredicted) { check_padding(Family::kLlama); }

TEST(Gpt, HeadsNotDividingTpIsAClearError) {
  if (comm::world_size() < 2) GTEST_SKIP() << "needs tp > 1";
  init(Config::from_json_string("{\"tensor_parallel_degree\": " +
                                std::to_string(comm::world_size()) + ", \"ddp\": true}"));
  ModelConfig c = tiny(Family::kGpt2);
  c.num_heads = 2 * comm::world_size() + 1;
  c.hidden = c.num_heads * 4;
  c.ffn_hidden = 4 * c.hidden * comm::world_size();
  c.hidden *= comm::world_size();  // hidden divides, heads do not
  c.num_heads = c.hidden / 4 + 1;
  try {
    build_model(c, tp::TpGroup(process_group(CommGroup::TP_GROUP)), false);
    ADD_FAILURE() << "expected ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find(std::to_string(c.num_heads)), std::string::npos) << e.what();
  }
  shutdown();
}

}  // namespace
}  // namespace smp::models
