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
  EXPECT_EQ(c.training.optimizer, "adamw");
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
  expect_config_error(R"({"data": {"text": "t"}, "training": {"optimizer": "adam"}})",
                      {"training.optimizer", "\"adam\"", "\"adamw\", \"sgd\""});
  expect_config_error(R"({"data": {"text": "t"}, "training": {"tf32": "yes"}})",
                      {"training.tf32", "\"yes\"", "true, false"});
  expect_config_error(R"({"data": {"text": "t"}, "training": {"momentum": 1}})",
                      {"training.momentum", "1"});
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

// training.activation_checkpointing: one strategy for every block, or one per block group.
TEST(TrainConfig, CheckpointingTakesAStrategyPerBlockGroup) {
  const auto groups = [](const std::string& value) {
    return TrainConfig::from_json_string(R"({"data": {"text": "t"}, "training": {"activation_checkpointing": )" +
                                         value + "}}")
        .training.activation_checkpointing;
  };
  EXPECT_TRUE(groups(R"("none")").empty());
  const auto every = groups(R"("group_2")");
  ASSERT_EQ(every.size(), 1u);
  EXPECT_EQ(every[0].first, 0);
  EXPECT_EQ(every[0].last, -1);
  EXPECT_EQ(every[0].strategy, "group_2");
  const auto split = groups(R"({"block.0-1": "contiguous", "block.2": "each", "block.3": "none"})");
  ASSERT_EQ(split.size(), 2u);  // "none" names a group left alone
  EXPECT_EQ(split[0].name, "block.0-1");
  EXPECT_EQ(split[0].first, 0);
  EXPECT_EQ(split[0].last, 1);
  EXPECT_EQ(split[0].strategy, "contiguous");
  EXPECT_EQ(split[1].first, 2);
  EXPECT_EQ(split[1].last, 2);
  EXPECT_EQ(split[1].strategy, "each");
}

TEST(TrainConfig, BadCheckpointingGroupsNameTheKeyAndWhatIsAllowed) {
  const auto with = [](const std::string& value) {
    return R"({"data": {"text": "t"}, "training": {"activation_checkpointing": )" + value + "}}";
  };
  expect_config_error(with(R"({"block.3-1": "each"})"),
                      {"training.activation_checkpointing key", "\"block.3-1\"", "\"block.<i>-<j>\" (i <= j)"});
  expect_config_error(with(R"({"head": "each"})"), {"training.activation_checkpointing key", "\"head\""});
  expect_config_error(with(R"({"block.x": "each"})"), {"\"block.x\"", "\"block.<i>\""});
  expect_config_error(with(R"({"block.0": "all"})"),
                      {"training.activation_checkpointing.\"block.0\"", "\"all\"", "\"group_<N>\""});
  expect_config_error(with(R"({"block.0": 2})"), {"training.activation_checkpointing.\"block.0\"", "got 2"});
  expect_config_error(with(R"({"block.0-2": "each", "block.2-3": "contiguous"})"),
                      {"training.activation_checkpointing", "\"block.0-2\" and \"block.2-3\" overlap"});
  expect_config_error(with(R"({"block": "each", "block.1": "contiguous"})"), {"\"block\" and \"block.1\" overlap"});
}

TEST(TrainConfig, ChunksPerRankNeedsAnInterleavedPipeline) {
  const TrainConfig c = TrainConfig::from_json_string(
      R"({"data": {"text": "t"}, "training": {"chunks_per_rank": 2}, "smp": {"pipeline_parallel_degree": 2, "microbatches": 2}})");
  EXPECT_EQ(c.training.chunks_per_rank, 2);
  EXPECT_EQ(TrainConfig::from_json_string(R"({"data": {"text": "t"}})").training.chunks_per_rank, 1);
  expect_config_error(R"({"data": {"text": "t"}, "training": {"chunks_per_rank": 0}})",
                      {"training.chunks_per_rank", "got 0", "an integer >= 1"});
  expect_config_error(R"({"data": {"text": "t"}, "training": {"chunks_per_rank": 2}})",
                      {"training.chunks_per_rank", "got 2", "pipeline_parallel_degree > 1", "pipeline_parallel_degree is 1"});
  expect_config_error(R"({"data": {"text": "t"}, "training": {"chunks_per_rank": 2},
                          "smp": {"pipeline_parallel_degree": 2, "microbatches": 2, "pipeline": "simple"}})",
                      {"training.chunks_per_rank", "got 2", "smp.pipeline \"interleaved\"", "pipeline \"simple\""});
  expect_config_error(R"({"data": {"text": "t"}, "training": {"chunks_per_rank": 2},
                          "smp": {"pipeline_parallel_degree": 2, "microbatches": 3}})",
                      {"training.chunks_per_rank", "got 2", "smp.microbatches (3)", "a multiple of"});
}

TEST(TrainConfig, CudaGraphsOnlyOnCudaWithOneStage) {
  const TrainConfig c = TrainConfig::from_json_string(
      R"({"data": {"text": "t"}, "training": {"device": "cuda", "cuda_graphs": true}})");
  EXPECT_TRUE(c.training.cuda_graphs);
  EXPECT_FALSE(TrainConfig::from_json_string(R"({"data": {"text": "t"}})").training.cuda_graphs);
  expect_config_error(R"({"data": {"text": "t"}, "training": {"device": "cuda", "cuda_graphs": 1}})",
                      {"training.cuda_graphs", "got 1", "true, false"});
  expect_config_error(R"({"data": {"text": "t"}, "training": {"cuda_graphs": true}})",
                      {"training.cuda_graphs", "got true", "training.device \"cpu\""});
  expect_config_error(R"({"data": {"text": "t"}, "training": {"device": "cuda", "cuda_graphs": true},
                          "smp": {"pipeline_parallel_degree": 2}})",
                      {"training.cuda_graphs", "got true", "pipeline_parallel_degree 2"});
}

// validate(world_size) on a config read from `json`: "" when it passes, else the message.
std::string validate_error(const std::string& json, int world_size) {
  const TrainConfig c = TrainConfig::from_json_string(json);
  try {
    c.validate(world_size);
    return "";
  } catch (const ConfigError& e) {
    return e.what();
  }
}

void expect_contains(const std::string& message, const std::vector<std::string>& needles) {
  EXPECT_FALSE(message.empty()) << "expected a ConfigError";
  for (const auto& needle : needles) {
    EXPECT_NE(message.find(needle), std::string::npos) << "\"" << needle << "\" not in: " << message;
  }
}

TEST(TrainConfigValidate, TheLayoutMustFitTheWorld) {
  const std::string pp3 = R"({"data": {"text": "t"}, "smp": {"pipeline_parallel_degree": 3}})";
  EXPECT_EQ(validate_error(pp3, 3), "");
  EXPECT_EQ(validate_error(pp3, 6), "");
  expect_contains(validate_error(pp3, 2), {"pipeline_parallel_degree (3)", "world size (2)"});
}

TEST(TrainConfigValidate, CudaGraphsOnOneRankOnly) {
  const std::string graphs = R"({"data": {"text": "t"}, "training": {"device": "cuda", "cuda_graphs": true}})";
  EXPECT_EQ(validate_error(graphs, 1), "");
  expect_contains(validate_error(graphs, 2), {"training.cuda_graphs", "got true", "on 2 ranks", "one rank only"});
}

TEST(TrainConfigValidate, GlobalBatchDividesByTheReplicas) {
  // pp=2 on 8 ranks: 4 data-parallel replicas.
  const auto config = [](int global_batch) {
    return R"({"data": {"text": "t"}, "training": {"global_batch": )" + std::to_string(global_batch) +
           R"(}, "smp": {"pipeline_parallel_degree": 2}})";
  };
  EXPECT_EQ(validate_error(config(12), 8), "");
  EXPECT_EQ(validate_error(config(4), 8), "");
  expect_contains(validate_error(config(6), 8),
                  {"training.global_batch", "got 6", "a multiple of the data-parallel replicas (4 on 8 ranks)"});
  expect_contains(validate_error(config(2), 8), {"training.global_batch", "got 2"});
}

// SMP's non-prescaled flow (prescaled_batch false, its default): every rank of a TP group
// samples its own batch, so the global batch divides by rdp x tp.
TEST(TrainConfigValidate, NonPrescaledBatchDividesByEveryDataParallelRank) {
  const auto config = [](int global_batch, bool prescaled) {
    return R"({"data": {"text": "t"}, "training": {"global_batch": )" + std::to_string(global_batch) +
           R"(}, "smp": {"ddp": true, "tensor_parallel_degree": 2, "prescaled_batch": )" +
           (prescaled ? "true" : "false") + "}}";
  };
  EXPECT_EQ(validate_error(config(8, false), 4), "");
  EXPECT_EQ(validate_error(config(6, true), 4), "");
  expect_contains(validate_error(config(6, false), 4),
                  {"training.global_batch", "got 6",
                   "a multiple of the data-parallel ranks (4 on 4 ranks: rdp 2 x tp 2, "
                   "smp.prescaled_batch false)"});
}

TEST(TrainConfigValidate, EachReplicasBatchDividesByTheMicrobatches) {
  // 2 replicas on 2 ranks, 4 microbatches: the global batch must be a multiple of 8.
  const auto config = [](int global_batch) {
    return R"({"data": {"text": "t"}, "training": {"global_batch": )" + std::to_string(global_batch) +
           R"(}, "smp": {"ddp": true, "microbatches": 4}})";
  };
  EXPECT_EQ(validate_error(config(8), 2), "");
  EXPECT_EQ(validate_error(config(24), 2), "");
  expect_contains(validate_error(config(12), 2),
                  {"training.global_batch", "got 12", "6 per rank of the data-parallel replicas",
                   "smp.microbatches (4)", "a multiple of 8 (replicas x microbatches)"});
  // One replica: the batch itself must divide by the microbatches.
  expect_contains(validate_error(config(6), 1), {"got 6", "smp.microbatches (4)", "a multiple of 4"});
}

TEST(TrainConfigValidate, CheckpointedBlocksLieWithinTheModel) {
  const std::string head = R"({"model": {"name": "tiny", "num_layers": 4}, "data": {"text": "t"},
                              "training": {"global_batch": 8, "activation_checkpointing": )";
  EXPECT_EQ(validate_error(head + R"({"block.0-3": "each"}}})", 1), "");
  expect_contains(validate_error(head + R"({"block.2-4": "each"}}})", 1),
                  {"training.activation_checkpointing key", "\"block.2-4\"", "block.0 to block.3"});
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
