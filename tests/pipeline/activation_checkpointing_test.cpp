// Activation checkpointing (DistributedModel::set_activation_checkpointing): a tiny GPT with
// dropout gives the same loss and the same gradients, bit for bit, with its blocks recomputed
// in backward as without, under every strategy and on 1, 2 and 4 ranks (pp with GPipe, 1F1B,
// zero bubble and virtual stages, tp, dp, pp x tp, tp x dp with ZeRO-1, pp x dp zero bubble). With data parallelism the tied
// embedding's two parts land in separate backward walks, and its reduction must wait for both. Without preserve_rng_state the recompute draws other
// dropout masks and the gradients differ: the restored generators are what makes it exact.
// (Split input/weight backwards with recomputed runs: executor_test.)
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <optional>
#include <string>

#include <ATen/ATen.h>

#include "smp/models/gpt.h"
#include "smp/smp.h"

namespace smp {
namespace {

struct StepResult {
  double loss = 0;
  std::map<std::string, at::Tensor> grads;  // this rank's parameters
};

models::ModelConfig tiny_gpt() {
  models::ModelConfig c = models::named_model("tiny");
  c.num_layers = 4;
  c.num_heads = 4;
  c.dropout = 0.1;  // recomputing must draw the same masks
  return c;
}

// One training step of the tiny GPT under the current layout: embed, 4 blocks and the head
// split evenly over the stages, checkpointing "block" with `options` when given.
StepResult one_step(int chunks, int microbatches, std::optional<ActivationCheckpointing> options) {
  at::manual_seed(21);
  models::Model model = models::build_model(
      tiny_gpt(), tp::TpGroup(process_group(CommGroup::TP_GROUP)), pp_size() > 1);
  DistributedModelOptions model_options;
  model_options.tied_copies = model.tied_copies;
  model_options.chunks_per_rank = chunks;
  const int layers = static_cast<int>(model.layers.size());
  DistributedModel dmodel(std::move(model.layers), model_options);
  if (options) dmodel.set_activation_checkpointing("block", *options);
  const int stages = pp_size() * chunks;
  std::vector<int> stage_of(layers);
  for (int i = 0; i < layers; ++i) stage_of[i] = i * stages / layers;
  dmodel.set_partition_assignment(stage_of);

  at::manual_seed(4);
  const int64_t vocab = tiny_gpt().vocab_size;
  const at::Tensor x = at::randint(0, vocab, {8, 16}, at::kLong);
  const at::Tensor y = at::randint(0, vocab, {8, 16}, at::kLong);
  StepOptions step_options;
  step_options.microbatches = microbatches;
  const LossFn loss_fn = [&model](const Values& out, const Values& t) { return model.loss(out, t); };
  StepResult run;
  run.loss = step(dmodel, {x}, {y}, loss_fn, step_options)[0].reduce_mean().item<double>();
  for (const auto& [name, p] : dmodel.local_named_parameters()) {
    if (p.grad().defined()) run.grads[name] = p.grad().clone();
  }
  return run;
}

// The smp layouts of this world, as (config json, chunks per rank).
std::vector<std::pair<std::string, int>> layouts() {
  switch (comm::world_size()) {
    case 1: return {{R"({})", 1}};
    case 2:
      return {{R"({"pipeline_parallel_degree": 2, "pipeline": "simple"})", 1},
              {R"({"pipeline_parallel_degree": 2})", 1},
              {R"({"pipeline_parallel_degree": 2})", 2},
              {R"({"tensor_parallel_degree": 2, "ddp": true})", 1},
              {R"({"ddp": true})", 1},
              {R"({"pipeline_parallel_degree": 2, "pipeline": "zero_bubble"})", 1}};
    case 4:
      return {{R"({"pipeline_parallel_degree": 2, "tensor_parallel_degree": 2, "ddp": true})", 1},
              {R"({"pipeline_parallel_degree": 4})", 1},
              {R"({"tensor_parallel_degree": 2, "ddp": true, "shard_optimizer_state": true})", 1},
              {R"({"pipeline_parallel_degree": 2, "ddp": true, "pipeline": "zero_bubble"})", 1}};
  }
  return {};
}

// What differs between two steps: the loss and every gradient bit for bit, except the tied
// embedding when one stage holds both its uses: recomputed, the head's part of its gradient
// lands before the embedding's instead of both summed first ((g + h) + e against g + (h + e)),
// so it gets fp32's reassociation tolerance.
std::string differences(const StepResult& got, const StepResult& want) {
  std::string out;
  if (got.loss != want.loss) out += " loss " + std::to_string(got.loss) + " vs " + std::to_string(want.loss);
  if (got.grads.size() != want.grads.size()) out += " different gradient sets";
  for (const auto& [name, g] : want.grads) {
    auto it = got.grads.find(name);
    if (it == got.grads.end()) {
      out += " " + name + " (missing)";
    } else if (name == "embed.wte.weight" && got.grads.count("head.weight") == 0) {
      const double err = (it->second - g).abs().max().item<double>();
      if (err > 1e-6 * g.abs().max().item<double>()) out += " " + name + " " + std::to_string(err);
    } else if (!at::equal(it->second, g)) {
      out += " " + name;
    }
  }
  return out;
}

TEST(ActivationCheckpointing, RecomputedBlocksGiveTheSameGradients) {
  for (const auto& [json, chunks] : layouts()) {
    init(Config::from_json_string(json));
    const int m = 4;
    const StepResult plain = one_step(chunks, m, std::nullopt);
    ASSERT_FALSE(plain.grads.empty());
    for (const std::string strategy : {"each", "contiguous", "group_2"}) {
      const StepResult recomputed = one_step(chunks, m, ActivationCheckpointing{strategy, true});
      EXPECT_EQ(differences(recomputed, plain), "")
          << json << " v=" << chunks << " strategy " << strategy << ": these differ";
    }
    // Without the generators put back, dropout draws new masks in the recompute (and the
    // forwards after it draw from streams the recompute moved on).
    const StepResult unrestored = one_step(chunks, m, ActivationCheckpointing{"each", false});
    bool any_differs = false;
    for (const auto& [name, g] : plain.grads) {
      if (name.rfind("block.", 0) == 0 && !at::equal(unrestored.grads.at(name), g)) any_differs = true;
    }
    const bool holds_blocks = std::any_of(plain.grads.begin(), plain.grads.end(),
                                          [](const auto& kv) { return kv.first.rfind("block.", 0) == 0; });
    EXPECT_EQ(any_differs, holds_blocks) << json << ": preserve_rng_state=false changed nothing";
    shutdown();
  }
}

TEST(ActivationCheckpointing, BadInputIsRefused) {
  init(Config::from_json_string(R"({"ddp": true})"));
  at::manual_seed(1);
  models::Model model = models::build_model(tiny_gpt(), tp::TpGroup{}, false);
  DistributedModel dmodel(std::move(model.layers));
  auto message = [&](const std::string& name, const std::string& strategy) -> std::string {
    try {
      dmodel.set_activation_checkpointing(name, {strategy, true});
    } catch (const ConfigError& e) {
      return e.what();
    }
    return "";
  };
  EXPECT_NE(message("blocks", "each").find("no layer is named \"blocks\""), std::string::npos);
  EXPECT_NE(message("blocks", "each").find("layers: embed, block.0"), std::string::npos);
  EXPECT_NE(message("block", "sometimes").find("strategy \"sometimes\" is not one of"), std::string::npos);
  EXPECT_NE(message("block", "group_0").find("\"group_<N>\" (N >= 1)"), std::string::npos);
  EXPECT_NE(message("block", "group_x").find("is not one of"), std::string::npos);
  EXPECT_EQ(message("block.1", "group_3"), "");

  const at::Tensor x = at::randint(0, 50, {2, 8}, at::kLong);
  const LossFn loss_fn = [&model](const Values& out, const Values& t) { return model.loss(out, t); };
  step(dmodel, {x}, {x}, loss_fn);
  EXPECT_NE(message("block", "each").find("before the first step"), std::string::npos);
  shutdown();
}

}  // namespace
}  // namespace smp
