// The run configuration and the learning-rate schedule; named model sizes.
#include <gtest/gtest.h>

#include <cmath>

#include "smp/core/error.h"
#include "smp/models/model_config.h"
#include "smp/train/train_config.h"

namespace smp::train {
namespace {

void expect_config_error(const std::string& json, const std::vector<std::string>& needles) {
  try {
    TrainConfig::from_json_string(json);
    ADD_FAILURE() << "expected ConfigError for " << json;
  } catch (const ConfigError& e) {
    for (const auto& needle : needles) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos)
          << "\"" << needle << "\" not in: " << e.what();
    }
  }
}

TEST(TrainConfig, ReadsEverySectionWithDefaults) {
  const TrainConfig c = TrainConfig::from_json_string(R"({
    "model": {"name": "tiny", "num_layers": 4},
    "data": {"text": "bible.txt"},
    "training": {"steps": 300, "global_batch": 16, "seq_len": 64, "precision": "bf16"},
    "smp": {"pipeline_parallel_degree": 2, "microbatches": 4},
    "run_dir": "runs/x"})");
  EXPECT_EQ(c.model.num_layers, 4);
  EXPECT_EQ(c.model.hidden, 32);
  EXPECT_EQ(c.data.text, "bible.txt");
  EXPECT_DOUBLE_EQ(c.data.val_fraction, 0.05);
  EXPECT_EQ(c.training.steps, 300);
  EXPECT_EQ(c.smp.pipeline_parallel_degree, 2);
  EXPECT_TRUE(c.smp.bf16) << "precision bf16 sets SMP's bf16";
  EXPECT_EQ(c.run_dir, "runs/x");
}

TEST(TrainConfig, BadInputNamesTheKeyAndWhatIsAllowed) {
  expect_config_error(R"({"data": {"text": "t"}, "training": {"stpes": 3}})",
                      {"training.stpes", "did you mean \"steps\""});
  expect_config_error(R"({"data": {"text": "t"}, "trainig": {}})", {"trainig", "\"training\""});
  expect_config_error(R"({"data": {"text": "t"}, "training": {"lr": "fast"}})",
                      {"training.lr", "\"fast\""});
  expect_config_error(R"({"data": {"text": "t"}, "training": {"precision": "fp8"}})",
                      {"training.precision", "\"fp8\"", "\"bf16\""});
  expect_config_error(R"({"data": {"text": "t"}, "training": {"activation_checkpointing": "all"}})",
                      {"training.activation_checkpointing", "\"all\"", "\"group_<N>\""});
  expect_config_error(R"({"data": {"text": "t"}, "training": {"activation_checkpointing": true}})",
                      {"training.activation_checkpointing", "\"contiguous\""});
  expect_config_error(R"({"data": {}})", {"exactly one of \"text\""});
  expect_config_error(R"({"model": {"name": "tiny"}, "data": {"text": "t"},
                          "training": {"seq_len": 65}})",
                      {"seq_len (65)", "max_seq_len (64)"});
  expect_config_error(R"({"model": {"name": "gpt5"}, "data": {"text": "t"}})",
                      {"gpt5", "gpt2-124m"});
  expect_config_error(R"({"model": {"name": "tiny", "num_heads": 3}, "data": {"text": "t"}})",
                      {"hidden (32)", "num_heads (3)"});
  expect_config_error(R"({"data": {"text": "t"}, "smp": {"microbatch": 2}})",
                      {"microbatch", "microbatches"});
  expect_config_error(R"({"data": {"text": "t"}, "training": {"precision": "bf16"},
                          "smp": {"bf16": false}})",
                      {"smp.bf16", "training.precision"});
  expect_config_error("{not json", {"invalid JSON"});
}

TEST(LearningRate, WarmsUpLinearlyThenDecaysByCosineToMinLr) {
  TrainingConfig t;
  t.steps = 110, t.warmup_steps = 10, t.lr = 1.0, t.min_lr = 0.1;
  EXPECT_DOUBLE_EQ(learning_rate(t, 0), 0.1);
  EXPECT_DOUBLE_EQ(learning_rate(t, 9), 1.0);
  EXPECT_DOUBLE_EQ(learning_rate(t, 10), 1.0);
  EXPECT_NEAR(learning_rate(t, 10 + 99 / 2.0), 0.55, 0.01);
  EXPECT_DOUBLE_EQ(learning_rate(t, 109), 0.1);
}

TEST(ModelConfig, NamedSizesHaveTheirKnownParameterCounts) {
  EXPECT_EQ(models::named_model("gpt2-124m").num_parameters(), 124439808);  // GPT-2 small
  EXPECT_EQ(models::named_model("gpt2-350m").num_parameters(), 354823168);  // GPT-2 medium
  const auto llama = models::named_model("llama-1b");
  EXPECT_FALSE(llama.tie_embeddings);
  EXPECT_GT(llama.num_parameters(), 900'000'000);
  EXPECT_LT(llama.num_parameters(), 1'400'000'000);
}

}  // namespace
}  // namespace smp::train
