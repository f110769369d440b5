// The executor runs split backwards (input half now, weight half later: what zero-bubble
// schedules need) as correctly as full ones: a 1F1B schedule rewritten so every backward is an
// input half, with all weight halves deferred to the end of each rank's list, gives the
// single-process gradients; also with activation checkpointing (runs of layers recomputed in
// the input half, their graphs kept for the weight half).
#include <gtest/gtest.h>

#include "models.h"
#include "smp/pipeline/partition.h"
#include "smp/smp.h"

namespace smp::pipeline {
namespace {

// Every kBackward becomes kBackwardInput in place; the matching kBackwardWeight goes to the end.
Schedule defer_weight_gradients(Schedule schedule) {
  for (auto& actions : schedule.per_rank) {
    std::vector<Action> rewritten;
    std::vector<Action> weights;
    for (const Action& a : actions) {
      if (a.kind != ActionKind::kBackward) {
        rewritten.push_back(a);
        continue;
      }
      rewritten.push_back({ActionKind::kBackwardInput, a.stage, a.microbatch});
      weights.push_back({ActionKind::kBackwardWeight, a.stage, a.microbatch});
    }
    rewritten.insert(rewritten.end(), weights.begin(), weights.end());
    actions = rewritten;
  }
  return schedule;
}

// Recomputed runs of a stage's layers, as indices into the stage: none, each layer alone, or
// the whole stage but its first layer as one run.
std::vector<std::vector<RecomputedRun>> recompute_plans(size_t num_layers) {
  std::vector<RecomputedRun> each;
  for (size_t i = 0; i < num_layers; ++i) each.push_back({i, i + 1, true});
  std::vector<std::vector<RecomputedRun>> plans = {{}, each};
  if (num_layers > 1) plans.push_back({{1, num_layers, true}});
  return plans;
}

// x and y split into m microbatches, mean squared error scaled per microbatch so that the
// microbatches' gradients add up to the whole batch's.
StepData mse_step(const at::Tensor& x, const at::Tensor& y, int m) {
  StepData data;
  for (int mb = 0; mb < m; ++mb) {
    data.inputs.push_back({x.chunk(m)[mb]});
    data.targets.push_back({y.chunk(m)[mb]});
  }
  data.loss_fn = smp::testing::mse_loss;
  data.loss_scale = 1.0 / m;
  return data;
}

TEST(Executor, DeferredWeightGradientsMatchOneProcess) {
  const int p = comm::world_size();
  const int m = 4;
  init(Config::from_json_string("{\"pipeline_parallel_degree\": " + std::to_string(p) + "}"));
  const Schedule schedule = defer_weight_gradients(
      make_schedule({ScheduleKind::kOneFOneB, p, m, 1, 0}));
  ASSERT_EQ(validate(schedule), "");
  ASSERT_FALSE(simulate(schedule).deadlocked);

  std::vector<Layer> reference = smp::testing::make_mlp(3);
  torch::manual_seed(5);
  const at::Tensor x = torch::randn({8, 16});
  const at::Tensor y = torch::randn({8, 8});
  smp::testing::mse_loss(smp::testing::run_all(reference, {x}), {y})[0].backward();
  // Eight layers, split evenly over the p stages.
  std::vector<int> stage_of(reference.size());
  for (size_t i = 0; i < reference.size(); ++i) stage_of[i] = static_cast<int>(i * p / reference.size());
  const Partition part = manual_partition(stage_of, p, 0);
  const int stage = pp_rank();
  const size_t num_local = static_cast<size_t>(part.end(stage) - part.begin(stage));

  for (const std::vector<RecomputedRun>& plan : recompute_plans(num_local)) {
    std::vector<Layer> layers = smp::testing::make_mlp(3);
    StageModule mine;
    mine.stage = stage;
    for (int i = part.begin(stage); i < part.end(stage); ++i) mine.layers.push_back(&layers[i]);
    mine.recomputed = plan;
    StepData data = mse_step(x, y, m);
    int backwards_seen = 0;
    data.before_backward = [&](const Action&) { ++backwards_seen; };
    std::vector<long> uses;  // references to each parameter: the graphs hold more while alive
    for (const Layer* layer : mine.layers) uses.push_back(layer->parameters[0].use_count());
    Executor(process_group(CommGroup::PP_GROUP), schedule, {mine}).run(data);
    EXPECT_EQ(backwards_seen, 2 * m);  // an input half and a weight half per microbatch
    for (size_t i = 0; i < mine.layers.size(); ++i) {
      EXPECT_EQ(mine.layers[i]->parameters[0].use_count(), uses[i])
          << mine.layers[i]->name << ": a graph outlived its step";
    }

    for (int i = part.begin(stage); i < part.end(stage); ++i) {
      for (size_t j = 0; j < layers[i].parameters.size(); ++j) {
        const at::Tensor& got = layers[i].parameters[j].grad();
        const at::Tensor& want = reference[i].parameters[j].grad();
        ASSERT_TRUE(got.defined()) << layers[i].name << " with " << plan.size() << " recomputed runs";
        const double err = (got - want).abs().max().item<double>();
        EXPECT_LE(err, 1e-5 * want.abs().max().item<double>() + 1e-12)  // fp32, reordered sums
            << layers[i].name << "." << layers[i].parameter_names[j] << " max abs error " << err
            << " with " << plan.size() << " recomputed runs";
      }
    }
  }
}

// Activations of 32 MiB per microbatch, every schedule: the sizes at which device sends wait
// for their receive (NCCL buffers only small messages), so, under SMP_EMULATE_NCCL=1, a
// schedule whose sends and receives are issued in crossed order would hang here. Every layer
// keeps the shape, so with virtual stages an activation and a gradient from the same peer have
// the same shape: were they swapped the gradients would be wrong, not an error.
TEST(Executor, ActivationsOf32MiBEveryScheduleMatchesOneProcess) {
  const int p = comm::world_size();
  if (p == 1) GTEST_SKIP() << "needs a pipeline";
  if (is_initialized()) shutdown();
  init(Config::from_json_string("{\"pipeline_parallel_degree\": " + std::to_string(p) + "}"));
  const int m = 4;
  const int64_t rows = 8, width = 1 << 20;  // 8 x 1 Mi floats: 32 MiB
  // Layer i: x -> tanh(x * w_i + i / 10): same shape in and out.
  auto make_layers = [&](int count) {
    std::vector<Layer> layers;
    torch::manual_seed(11);
    for (int i = 0; i < count; ++i) {
      Layer layer;
      layer.name = "scale" + std::to_string(i);
      layer.parameters = {(torch::rand({width}) + 0.5).requires_grad_(true)};
      layer.parameter_names = {"weight"};
      const at::Tensor w = layer.parameters[0];
      layer.forward = [w, i](const Values& x) { return Values{torch::tanh(x[0] * w + i / 10.0)}; };
      layers.push_back(layer);
    }
    return layers;
  };
  torch::manual_seed(12);
  const at::Tensor x = torch::randn({m * rows, width});
  const at::Tensor y = torch::randn({m * rows, width});
  struct Variant {
    ScheduleKind kind;
    int v;
    const char* name;
  };
  for (const Variant& variant : {Variant{ScheduleKind::kSimple, 1, "simple"},
                                 Variant{ScheduleKind::kOneFOneB, 1, "1f1b"},
                                 Variant{ScheduleKind::kInterleavedVirtual, 2, "interleaved v=2"},
                                 Variant{ScheduleKind::kZeroBubble, 1, "zero_bubble"}}) {
    const Schedule schedule = make_schedule({variant.kind, p, m, variant.v, 0});
    const int stages = schedule.num_stages;
    std::vector<Layer> reference = make_layers(stages);
    smp::testing::mse_loss(smp::testing::run_all(reference, {x}), {y})[0].backward();
    std::vector<Layer> layers = make_layers(stages);
    std::vector<StageModule> mine;
    for (int s = 0; s < stages; ++s) {
      if (schedule.rank_of_stage(s) != pp_rank()) continue;
      StageModule stage;
      stage.stage = s;
      stage.layers = {&layers[s]};
      mine.push_back(stage);
    }
    StepData data = mse_step(x, y, m);
    Executor(process_group(CommGroup::PP_GROUP), schedule, mine).run(data);
    for (const StageModule& stage : mine) {
      const at::Tensor& got = layers[stage.stage].parameters[0].grad();
      const at::Tensor& want = reference[stage.stage].parameters[0].grad();
      ASSERT_TRUE(got.defined()) << variant.name << " stage " << stage.stage;
      const double err = (got - want).abs().max().item<double>();
      EXPECT_LE(err, 1e-5 * want.abs().max().item<double>() + 1e-12)
          << variant.name << " stage " << stage.stage << " max abs error " << err;
    }
  }
}

// A weight transformed once and used twice (tanh(W) in two products): both uses' walks in the
// weight half go through the one TanhBackward node, so the graph must outlive the first.
TEST(Executor, WeightHalfWithATransformedWeightUsedTwice) {
  if (comm::world_size() != 1) GTEST_SKIP() << "one rank";
  if (is_initialized()) shutdown();
  init(Config{});
  auto make = [] {
    std::vector<Layer> layers = smp::testing::make_mlp(1);
    Layer twice;
    twice.name = "twice";
    twice.parameters = {torch::randn({32, 32}).requires_grad_(true)};
    twice.parameter_names = {"weight"};
    const at::Tensor w = twice.parameters[0];
    twice.forward = [w](const Values& x) {
      const at::Tensor t = w.tanh();
      return Values{x[0].mm(t) + x[0].mm(t.t())};
    };
    layers.insert(layers.begin() + 1, twice);
    return layers;
  };
  torch::manual_seed(4);
  std::vector<Layer> reference = make();
  torch::manual_seed(4);
  std::vector<Layer> layers = make();
  torch::manual_seed(5);
  const at::Tensor x = torch::randn({8, 16});
  const at::Tensor y = torch::randn({8, 8});
  smp::testing::mse_loss(smp::testing::run_all(reference, {x}), {y})[0].backward();

  StageModule mine;
  for (const Layer& layer : layers) mine.layers.push_back(&layer);
  mine.recomputed = {{1, 2, true}};  // "twice" on its own segment, whose inputs are leaves
  const Schedule schedule =
      defer_weight_gradients(make_schedule({ScheduleKind::kOneFOneB, 1, 2, 1, 0}));
  StepData data;
  for (int mb = 0; mb < 2; ++mb) {
    data.inputs.push_back({x.chunk(2)[mb]});
    data.targets.push_back({y.chunk(2)[mb]});
  }
  data.loss_fn = smp::testing::mse_loss;
  data.loss_scale = 0.5;
  Executor(process_group(CommGroup::PP_GROUP), schedule, {mine}).run(data);
  for (size_t i = 0; i < layers.size(); ++i) {
    for (size_t j = 0; j < layers[i].parameters.size(); ++j) {
      const at::Tensor& got = layers[i].parameters[j].grad();
      const at::Tensor& want = reference[i].parameters[j].grad();
      ASSERT_TRUE(got.defined()) << layers[i].name;
      EXPECT_LE((got - want).abs().max().item<double>(), 1e-5 * want.abs().max().item<double>())
          << layers[i].name << "." << layers[i].parameter_names[j];
    }
  }
  shutdown();
}

// A forward-only schedule (evaluation) runs every layer without autograd: nothing walks a graph
// afterwards, so none is built (one would hold every layer's activations until the step ends).
TEST(Executor, ForwardOnlyStepsBuildNoGraph) {
  if (is_initialized()) shutdown();
  const int p = comm::world_size();
  init(Config::from_json_string("{\"pipeline_parallel_degree\": " + std::to_string(p) + "}"));
  const int m = 2;
  const Schedule schedule = make_schedule({ScheduleKind::kForwardOnly, p, m, 1, 0});
  std::vector<Layer> layers = smp::testing::make_mlp(3);
  std::vector<int> stage_of(layers.size());
  for (size_t i = 0; i < layers.size(); ++i) stage_of[i] = static_cast<int>(i * p / layers.size());
  const Partition part = manual_partition(stage_of, p, 0);
  StageModule mine;
  mine.stage = pp_rank();
  int with_graph = 0;
  int calls = 0;
  for (int i = part.begin(mine.stage); i < part.end(mine.stage); ++i) {
    layers[i].forward = [inner = layers[i].forward, &with_graph, &calls](const Values& x) {
      ++calls;
      if (at::GradMode::is_enabled()) ++with_graph;
      return inner(x);
    };
    mine.layers.push_back(&layers[i]);
  }
  torch::manual_seed(5);
  StepData data = mse_step(torch::randn({8, 16}), torch::randn({8, 8}), m);
  Executor(process_group(CommGroup::PP_GROUP), schedule, {mine}).run(data);
  EXPECT_EQ(calls, m * static_cast<int>(mine.layers.size()));
  EXPECT_EQ(with_graph, 0);
  EXPECT_TRUE(at::GradMode::is_enabled());  // as it was
  shutdown();
}

}  // namespace
}  // namespace smp::pipeline
