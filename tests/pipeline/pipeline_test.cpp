// The pipeline against one process: for every layout, schedule and microbatch count, the loss
// and every parameter gradient after one step equal the single-process reference within 1e-5
// relative, and the parameters still match after 5 SGD steps. Runs on 1, 2 and 4 ranks; with
// 4 ranks and pp = 2 there are two pipeline replicas, each checked. Partition files
// (partition_file, load_partition) and skip_tracing decide the split as SMP's keys say.
#include <gtest/gtest.h>

#include <cstdio>
#include <unistd.h>
#include <fstream>
#include <map>

#include <nlohmann/json.hpp>

#include "models.h"
#include "smp/core/files.h"
#include "smp/pipeline/profile.h"
#include "smp/smp.h"
#include "testing/temp_dir.h"

namespace smp {
namespace {

using testing::Layer;
using testing::Values;

constexpr double kRelTol = 1e-5;  // fp32; microbatching only reorders sums

void reinit(int pp, int microbatches, const std::string& pipeline) {
  if (is_initialized()) shutdown();
  init(Config::from_json_string("{\"pipeline_parallel_degree\": " + std::to_string(pp) +
                                ", \"microbatches\": " + std::to_string(microbatches) +
                                ", \"pipeline\": \"" + pipeline + "\", \"ddp\": true, \"comm_timeout_s\": 60}"));
}

// max |a - b| <= tol * max |b| (+ a hair for all-zero tensors); reports the error otherwise.
::testing::AssertionResult close(const at::Tensor& got, const at::Tensor& want, double tol) {
  const double err = (got - want).abs().max().item<double>();
  const double scale = want.abs().max().item<double>();
  if (err <= tol * scale + 1e-12) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "max abs error " << err << " > " << tol << " * " << scale;
}

std::map<std::string, at::Tensor> named(const std::vector<Layer>& layers) {
  std::map<std::string, at::Tensor> out;
  for (const Layer& layer : layers) {
    for (size_t j = 0; j < layer.parameters.size(); ++j) {
      out[layer.name + "." + layer.parameter_names[j]] = layer.parameters[j];
    }
  }
  return out;
}

struct Problem {
  std::vector<Layer> (*make)(uint64_t);
  Values inputs;
  Values targets;
  LossFn loss;
};

Problem mlp_problem() {
  torch::manual_seed(7);
  return {[](uint64_t seed) { return testing::make_mlp(seed); },
          {torch::randn({16, 16})}, {torch::randn({16, 8})}, testing::mse_loss};
}

Problem transformer_problem() {
  torch::manual_seed(7);
  at::Tensor tokens = torch::randint(0, 32, {8, 8}, torch::kLong);
  at::Tensor keep = (torch::rand({8, 8}) > 0.2).to(torch::kFloat);
  at::Tensor targets = torch::randint(0, 32, {8, 8}, torch::kLong);
  return {[](uint64_t seed) { return testing::make_transformer(seed); }, {tokens, keep},
          {targets}, testing::lm_loss};
}

void check_against_reference(const Problem& problem, int v, const std::string& what) {
  SCOPED_TRACE(what);
  std::vector<Layer> reference = problem.make(1);
  DistributedModelOptions options;
  options.chunks_per_rank = v;
  DistributedModel model(problem.make(1), options);
  auto ref_params = named(reference);

  std::vector<at::Tensor> ref_list;
  for (auto& [name, p] : ref_params) ref_list.push_back(p);
  torch::optim::SGD ref_opt(ref_list, torch::optim::SGDOptions(0.1));

  for (int it = 0; it < 5; ++it) {
    ref_opt.zero_grad();
    Values ref_out = testing::run_all(reference, problem.inputs);
    at::Tensor ref_loss = problem.loss(ref_out, problem.targets)[0];
    ref_loss.backward();

    std::vector<StepOutput> out = step(model, problem.inputs, problem.targets, problem.loss);
    ASSERT_EQ(out.size(), 1u);
    EXPECT_TRUE(close(out[0].reduce_mean(), ref_loss.detach(), kRelTol)) << "loss, step " << it;

    if (it == 0) {
      // Every gradient of this rank's stages, against the reference's.
      for (auto& [name, p] : model.local_named_parameters()) {
        ASSERT_TRUE(p.grad().defined()) << name;
        EXPECT_TRUE(close(p.grad(), ref_params.at(name).grad(), kRelTol)) << "grad of " << name;
      }
    }
    // One SGD step on both.
    torch::NoGradGuard no_grad;
    for (auto& [name, p] : model.local_named_parameters()) {
      p.sub_(p.grad() * 0.1);
      p.mutable_grad() = at::Tensor();
    }
    ref_opt.step();
  }
  for (auto& [name, p] : model.local_named_parameters()) {
    EXPECT_TRUE(close(p, ref_params.at(name), kRelTol)) << "parameter " << name << " after 5 steps";
  }
}

TEST(Pipeline, EveryLayoutScheduleAndMicrobatchCountMatchesOneProcess) {
  const int world = comm::world_size();
  for (int pp : {1, 2, 4}) {
    if (world % pp) continue;
    for (int m : {1, 2, 4, 8}) {
      struct Variant {
        std::string pipeline;
        int v;
      };
      for (const Variant& variant : {Variant{"simple", 1}, Variant{"interleaved", 1},
                                     Variant{"interleaved", 2}, Variant{"zero_bubble", 1}}) {
        if (variant.v > 1 && m % pp != 0) continue;  // Megatron's interleaving needs m % pp == 0
        if (variant.pipeline == "zero_bubble" && m < pp) continue;  // it needs m >= pp
        reinit(pp, m, variant.pipeline);
        const std::string what = "pp=" + std::to_string(pp) + " m=" + std::to_string(m) + " " +
                                 variant.pipeline + " v=" + std::to_string(variant.v);
        check_against_reference(mlp_problem(), variant.v, "mlp " + what);
        check_against_reference(transformer_problem(), variant.v, "transformer " + what);
      }
    }
  }
}

TEST(Pipeline, TimelineAndMeasuredBubble) {
  const int world = comm::world_size();
  reinit(world % 2 == 0 ? 2 : 1, 4, "interleaved");
  const std::string dir = "pipeline_test_timeline";
  DistributedModelOptions options;
  options.timeline_dir = dir;
  Problem problem = mlp_problem();
  DistributedModel model(problem.make(1), options);
  step(model, problem.inputs, problem.targets, problem.loss);
  const StepStats& stats = model.step_stats();
  EXPECT_GT(stats.wall_s, 0);
  EXPECT_GE(stats.measured_bubble, 0);
  EXPECT_LE(stats.measured_bubble, 1);
  const int p = pp_size();
  EXPECT_DOUBLE_EQ(stats.theoretical_bubble, (p - 1.0) / (4 + p - 1.0));
  std::ifstream in(dir + "/timeline_rank" + std::to_string(rank()) + ".json");
  ASSERT_TRUE(in.good());
  const auto trace = nlohmann::json::parse(in);
  int forwards = 0;
  for (const auto& event : trace["traceEvents"]) forwards += event.value("cat", "") == "forward";
  EXPECT_EQ(forwards, 4);  // one forward per microbatch on each rank's single stage
  barrier();
  std::remove((dir + "/timeline_rank" + std::to_string(rank()) + ".json").c_str());
  barrier();
  if (rank() == 0) ::rmdir(dir.c_str());
}

// SMP's partition_file / load_partition and skip_tracing (pp = 2 wherever the world allows).
void reinit_partition(const std::string& extra) {
  if (is_initialized()) shutdown();
  const int pp = comm::world_size() % 2 == 0 ? 2 : 1;
  init(Config::from_json_string("{\"pipeline_parallel_degree\": " + std::to_string(pp) +
                                ", \"microbatches\": 2, \"ddp\": true, \"comm_timeout_s\": 60" + extra + "}"));
}

TEST(Pipeline, PartitionFileIsWrittenAndLoaded) {
  if (comm::world_size() % 2 != 0) GTEST_SKIP() << "needs pp = 2";
  reinit_partition("");
  const smp::testing::TempDir dir("smp_partition", smp::testing::world());  // outlives reinits
  const std::string file = dir.file("partition.json");
  Problem problem = transformer_problem();
  // A run with auto partitioning writes its decision ...
  std::vector<int> decided;
  {
    reinit_partition(", \"partition_file\": \"" + file + "\"");
    DistributedModel model(problem.make(1));
    step(model, problem.inputs, problem.targets, problem.loss);
    decided = model.partition_assignment().stage_of_layer;
  }
  // ... which a later run loads instead of profiling, and trains the same.
  reinit_partition(", \"partition_file\": \"" + file + "\", \"load_partition\": true");
  {
    DistributedModel model(problem.make(1));
    step(model, problem.inputs, problem.targets, problem.loss);
    EXPECT_EQ(model.partition_assignment().stage_of_layer, decided);
  }
  check_against_reference(problem, 1, "loaded partition");
  // A file for another model, another stage count, or not JSON: a clear error on every rank.
  auto expect_error = [&](const std::string& contents, const std::string& want, int v) {
    if (rank() == 0) std::ofstream(file) << contents;
    barrier();
    DistributedModelOptions options;
    options.chunks_per_rank = v;
    DistributedModel model(problem.make(1), options);
    try {
      step(model, problem.inputs, problem.targets, problem.loss);
      ADD_FAILURE() << "expected ConfigError containing " << want;
    } catch (const ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find(want), std::string::npos) << e.what();
    }
  };
  nlohmann::json good = nlohmann::json::parse(files::read_file(file));
  barrier();  // every rank has read it before rank 0 rewrites it below
  nlohmann::json renamed = good;
  renamed["layers"][1] = "other";
  expect_error(renamed.dump(), "is for another model: layer 1 is \"other\" there", 1);
  expect_error(good.dump(), "splits the model into 2 stages; this run has 4", 2);
  expect_error("{not json", "is not JSON", 1);
}

// Layer 0 holds many parameters and does little; layers 1..5 hold few and compute a lot: a
// split by measured time and one by parameter bytes disagree.
std::vector<Layer> lopsided_model() {
  torch::manual_seed(3);
  std::vector<Layer> layers;
  auto add = [&](const std::string& name, at::Tensor w, int repeats) {
    w.set_requires_grad(true);
    Layer layer;
    layer.name = name;
    layer.parameters = {w};
    layer.parameter_names = {"weight"};
    layer.forward = [w, repeats](const Values& x) -> Values {
      at::Tensor y = x[0];
      if (repeats == 0) return {y + w.sum() * 1e-3};
      for (int i = 0; i < repeats; ++i) y = torch::tanh(y.matmul(w));
      return {y};
    };
    layers.push_back(layer);
  };
  add("big", torch::randn({300, 300}) * 0.01, 0);
  for (int i = 0; i < 5; ++i) add("heavy" + std::to_string(i), torch::randn({64, 64}) * 0.1, 40);
  return layers;
}

TEST(Pipeline, SkipTracingBalancesParameterBytesWithoutProfiling) {
  if (comm::world_size() % 2 != 0) GTEST_SKIP() << "needs pp = 2";
  const Values x = {torch::randn({32, 64})};
  const Values y = {torch::randn({32, 64})};
  auto split = [&](const std::string& extra) {
    reinit_partition(", \"memory_weight\": 0.0" + extra);  // time alone, when traced
    DistributedModel model(lopsided_model());
    step(model, x, y, testing::mse_loss);
    return model.partition_assignment().stage_of_layer;
  };
  const std::vector<int> untraced = split(", \"skip_tracing\": true");
  const std::vector<int> traced = split("");
  EXPECT_EQ(untraced, (std::vector<int>{0, 1, 1, 1, 1, 1}));  // the bytes: "big" alone
  EXPECT_NE(traced, untraced);                                // the measured times differ
}

TEST(Pipeline, BadInputIsAClearErrorOnEveryRank) {
  const int world = comm::world_size();
  reinit(world >= 2 ? 2 : 1, 4, "interleaved");
  Problem problem = mlp_problem();
  {
    DistributedModel model(problem.make(1));
    const Values odd = {torch::randn({6, 16})};  // 6 rows, 4 microbatches
    try {
      step(model, odd, {torch::randn({6, 8})}, problem.loss);
      ADD_FAILURE() << "expected ConfigError";
    } catch (const ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find("size 6"), std::string::npos) << e.what();
    }
  }
  {
    DistributedModelOptions options;
    options.chunks_per_rank = 9;  // 8 layers cannot fill pp * 9 stages
    DistributedModel model(problem.make(1), options);
    try {
      step(model, problem.inputs, problem.targets, problem.loss);
      ADD_FAILURE() << "expected ConfigError";
    } catch (const ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find("only 8 layers"), std::string::npos) << e.what();
    }
  }
  if (world == 4) {
    shutdown();
    EXPECT_THROW(init(Config::from_json_string("{\"pipeline_parallel_degree\": 3}")), ConfigError);
  }
}

}  // namespace
}  // namespace smp
