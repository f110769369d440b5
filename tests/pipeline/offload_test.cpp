// Activation offloading (offload_activations, activation_loading_horizon): a tiny GPT with
// dropout and its blocks checkpointed gives the same loss and gradients, bit for bit, with the
// recomputed blocks' inputs offloaded as without, on 1 rank (GPipe, 1F1B) and 2 ranks (pp=2
// with GPipe, 1F1B and interleaved virtual stages), at horizons 1, 2 and 4. The step's
// offload log, read against the rank's action list, proves the horizon: every (stage,
// microbatch) whose backward comes more than `horizon` actions after its forward is put away
// at its forward, its load starts exactly `horizon` actions before its backward and it is
// taken at its backward; at most horizon + 1 loaded microbatches are held at once.
#include <gtest/gtest.h>
#include <mpi.h>

#include <map>
#include <set>
#include <string>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include "smp/models/gpt.h"
#include "smp/smp.h"

namespace smp {
namespace {

using pipeline::ActionKind;
using pipeline::OffloadEvent;
using Key = std::pair<int, int>;  // (stage, microbatch)

struct StepResult {
  double loss = 0;
  std::map<std::string, at::Tensor> grads;
  std::vector<pipeline::Action> actions;  // this rank's list
  std::vector<OffloadEvent> offload;
};

models::ModelConfig tiny_gpt() {
  models::ModelConfig c = models::named_model("tiny");
  c.num_layers = 4;
  c.num_heads = 4;
  c.dropout = 0.1;
  return c;
}

// One traced training step of the tiny GPT, every block checkpointed on its own, the layers
// split evenly over the stages.
StepResult one_step(int chunks, int microbatches) {
  at::manual_seed(21);
  models::Model model = models::build_model(
      tiny_gpt(), tp::TpGroup(process_group(CommGroup::TP_GROUP)), pp_size() > 1);
  DistributedModelOptions model_options;
  model_options.tied_copies = model.tied_copies;
  model_options.chunks_per_rank = chunks;
  const int layers = static_cast<int>(model.layers.size());
  DistributedModel dmodel(std::move(model.layers), model_options);
  dmodel.set_activation_checkpointing("block", {"each", true});
  const int stages = pp_size() * chunks;
  std::vector<int> stage_of(layers);
  for (int i = 0; i < layers; ++i) stage_of[i] = i * stages / layers;
  dmodel.set_partition_assignment(stage_of);

  at::manual_seed(4);
  const int64_t vocab = tiny_gpt().vocab_size;
  const at::Tensor x = at::randint(0, vocab, {16, 16}, at::kLong);
  const at::Tensor y = at::randint(0, vocab, {16, 16}, at::kLong);
  StepOptions step_options;
  step_options.microbatches = microbatches;
  step_options.trace = true;
  const LossFn loss_fn = [&model](const Values& out, const Values& t) { return model.loss(out, t); };
  StepResult run;
  run.loss = step(dmodel, {x}, {y}, loss_fn, step_options)[0].reduce_mean().item<double>();
  for (const auto& [name, p] : dmodel.local_named_parameters()) {
    if (p.grad().defined()) run.grads[name] = p.grad().clone();
  }
  run.actions = dmodel.schedule_for(microbatches, true).per_rank[pp_rank()];
  run.offload = dmodel.last_offload();
  return run;
}

std::string differences(const StepResult& got, const StepResult& want) {
  std::string out;
  if (got.loss != want.loss) out += " loss";
  if (got.grads.size() != want.grads.size()) out += " different gradient sets";
  for (const auto& [name, g] : want.grads) {
    auto it = got.grads.find(name);
    if (it == got.grads.end() || !at::equal(it->second, g)) out += " " + name;
  }
  return out;
}

// Where the offload log breaks the horizon's rules against the action list; "" when it keeps them.
std::string horizon_violations(const StepResult& run, size_t horizon, size_t* most_loaded) {
  std::map<Key, size_t> forward_at;
  std::map<Key, size_t> backward_at;
  for (size_t i = 0; i < run.actions.size(); ++i) {
    const pipeline::Action& a = run.actions[i];
    const Key key{a.stage, a.microbatch};
    if (a.kind == ActionKind::kForward) forward_at[key] = i;
    if (a.kind == ActionKind::kBackward || a.kind == ActionKind::kBackwardInput) backward_at[key] = i;
  }
  std::map<Key, std::vector<std::pair<OffloadEvent::Kind, size_t>>> by_key;
  std::set<int> offloading_stages;
  for (const OffloadEvent& e : run.offload) {
    by_key[{e.stage, e.microbatch}].push_back({e.kind, e.action});
    offloading_stages.insert(e.stage);
  }
  std::string out;
  for (const auto& [key, f] : forward_at) {
    const size_t b = backward_at.at(key);
    const bool expected = offloading_stages.count(key.first) && b - f > horizon;
    const std::vector<std::pair<OffloadEvent::Kind, size_t>> want = {
        {OffloadEvent::kPut, f}, {OffloadEvent::kPrefetch, b - horizon}, {OffloadEvent::kTake, b}};
    const auto it = by_key.find(key);
    if (expected && (it == by_key.end() || it->second != want)) {
      out += " (" + std::to_string(key.first) + "," + std::to_string(key.second) + ") wrong events";
    }
    if (!expected && it != by_key.end()) {
      out += " (" + std::to_string(key.first) + "," + std::to_string(key.second) + ") offloaded";
    }
  }
  std::set<Key> loaded;
  *most_loaded = 0;
  for (const OffloadEvent& e : run.offload) {
    if (e.kind == OffloadEvent::kPrefetch) loaded.insert({e.stage, e.microbatch});
    if (e.kind == OffloadEvent::kTake) loaded.erase({e.stage, e.microbatch});
    *most_loaded = std::max(*most_loaded, loaded.size());
  }
  if (*most_loaded > horizon + 1) out += " " + std::to_string(*most_loaded) + " loaded at once";
  return out;
}

// The layouts of this world, as (config json, chunks per rank).
std::vector<std::pair<std::string, int>> layouts() {
  if (comm::world_size() == 1) return {{R"({"pipeline": "simple"})", 1}};  // 1F1B: F, B, F, B
  return {{R"({"pipeline_parallel_degree": 2, "pipeline": "simple"})", 1},
          {R"({"pipeline_parallel_degree": 2})", 1},
          {R"({"pipeline_parallel_degree": 2})", 2}};
}

TEST(ActivationOffloading, SameGradientsAndTheHorizonHolds) {
  const int m = 8;
  for (const auto& [text, chunks] : layouts()) {
    nlohmann::json config = nlohmann::json::parse(text);
    init(Config::from_json(config));
    const StepResult kept = one_step(chunks, m);
    ASSERT_FALSE(kept.grads.empty());
    EXPECT_TRUE(kept.offload.empty());
    shutdown();
    for (const int horizon : {1, 2, 4}) {
      config["offload_activations"] = true;
      config["activation_loading_horizon"] = horizon;
      init(Config::from_json(config));
      const StepResult offloaded = one_step(chunks, m);
      const std::string where = text + " v=" + std::to_string(chunks) + " horizon " +
                                std::to_string(horizon) + " rank " + std::to_string(pp_rank());
      EXPECT_EQ(differences(offloaded, kept), "") << where << ": these differ";
      size_t most_loaded = 0;
      EXPECT_EQ(horizon_violations(offloaded, horizon, &most_loaded), "") << where;
      int puts = 0;
      for (const OffloadEvent& e : offloaded.offload) puts += e.kind == OffloadEvent::kPut;
      MPI_Allreduce(MPI_IN_PLACE, &puts, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
      EXPECT_GT(puts, 0) << where << ": nothing was offloaded";
      shutdown();
    }
  }
}

}  // namespace
}  // namespace smp
