// GPT-2 and LLaMA-style models: tensor-parallel runs equal the single-device model built from
// the same seed (loss, logits, gradients), on 1, 2 and 4 ranks.
#include <gtest/gtest.h>

#include <cmath>

#include <ATen/ATen.h>

#include "smp/models/gpt.h"
#include "smp/smp.h"
#include "smp/tensor_parallel/init.h"

namespace smp::models {
namespace {

constexpr double kRelTol = 1e-5;  // fp32: tensor parallelism only reorders sums

ModelConfig tiny(Family family) {
  ModelConfig c = named_model("tiny");
  c.family = family;
  c.num_heads = 4;
  c.num_layers = 2;
  c.vocab_size = 50;  // not a multiple of 4: the embedding pads
  if (family == Family::kLlama) c.tie_embeddings = false, c.ffn_hidden = 48;
  return c;
}

::testing::AssertionResult close(const at::Tensor& got, const at::Tensor& want, double tol) {
  const double err = (got - want).abs().max().item<double>();
  const double scale = want.abs().max().item<double>();
  if (err <= tol * scale + 1e-12) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "max abs error " << err << " > " << tol << " * " << scale;
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
      if (got.sizes() != want.sizes()) {
        // A shard: find the split dim and take this rank's slice (padded rows come last).
        int64_t dim = 0;
        while (got.size(dim) == want.size(dim)) ++dim;
        const int64_t padded = got.size(dim) * group.size();
        if (padded != want.size(dim)) {
          want = at::cat({want, at::zeros_like(want.narrow(dim, 0, padded - want.size(dim)))}, dim);
        }
        want = want.narrow(dim, group.rank() * got.size(dim), got.size(dim));
      }
      EXPECT_TRUE(close(got, want, kRelTol)) << "grad of " << name;
    }
  }
  shutdown();
}

TEST(Gpt, Gpt2TensorParallelEqualsOneDevice) { check_family(Family::kGpt2); }
TEST(Gpt, LlamaTensorParallelEqualsOneDevice) { check_family(Family::kLlama); }

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
