// Sharded data parallelism ("sharded_data_parallel_degree", runs on 2 and 4 ranks) against one
// process: the MLP of the data-parallel tests (8 layers), every sharding degree the world
// allows (on 4 ranks, degree 2 makes two replica groups), 1 and 2 microbatches, every layer
// sharded or the small ones persistent, SGD/Adam/AdamW: parameters after 5 steps equal the
// one-process run on the whole batch within 1e-6 relative (the tolerance of the data-parallel
// test: only the order of sums differs). Between steps a rank holds only its slices; a step
// gathers each sharded layer exactly twice per microbatch (forward, backward) and
// reduce-scatters each layer once per microbatch, holding no whole gradient; the clipping norm
// equals one process's, and the optimizer clips at sdp_gradient_clipping by itself (SMP); bf16
// equals unsharded bf16; checkpoints reshard to and from other layouts.
#include <gtest/gtest.h>
#include <torch/optim/adam.h>
#include <torch/optim/adamw.h>
#include <torch/optim/sgd.h>

#include <stdlib.h>

#include <tuple>

#include "harness.h"
#include "smp/checkpoint/checkpoint.h"
#include "testing/temp_dir.h"

namespace smp {
namespace {

using namespace smp::testing;

constexpr double kTol = 1e-6;

OptimizerFactory sgd() {
  return [](std::vector<at::Tensor> p) {
    return std::make_unique<torch::optim::SGD>(
        p, torch::optim::SGDOptions(0.1).momentum(0.9).weight_decay(1e-2));
  };
}
OptimizerFactory adam() {
  return [](std::vector<at::Tensor> p) {
    return std::make_unique<torch::optim::Adam>(p, torch::optim::AdamOptions(1e-3).weight_decay(1e-2));
  };
}
OptimizerFactory adamw() {
  return [](std::vector<at::Tensor> p) {
    return std::make_unique<torch::optim::AdamW>(p, torch::optim::AdamWOptions(1e-3).weight_decay(0.1));
  };
}

// `clip`: SMP's sdp_gradient_clipping, which DistributedOptimizer::step applies; the default
// here is out of reach, so runs compare with an unclipped reference.
std::string sdp_json(int degree, int m, int64_t persistence, double clip = 1e9) {
  return "\"ddp\": true, \"sharded_data_parallel_degree\": " + std::to_string(degree) +
         ", \"microbatches\": " + std::to_string(m) +
         ", \"sdp_param_persistence_threshold\": " + std::to_string(persistence) +
         ", \"sdp_gradient_clipping\": " + std::to_string(clip);
}

std::vector<int> degrees() {
  std::vector<int> out;
  for (int s = 2; s <= comm::world_size(); s *= 2) out.push_back(s);
  return out;
}

// fc0 (544 elements) and fc7 (264) stay whole under this threshold; fc1..fc6 (1056) shard.
constexpr int64_t kSmallLayers = 600;

TEST(ShardedDataParallel, MatchesOneProcessWithTheWholeBatch) {
  for (const auto& [name, make] : {std::pair{"sgd", sgd()}, {"adam", adam()}, {"adamw", adamw()}}) {
    const auto ref = reference_run(make, 5);
    for (int s : degrees()) {
      for (auto [m, persistence] : {std::tuple{1, int64_t{0}}, {2, int64_t{0}}, {2, kSmallLayers}}) {
        reinit(sdp_json(s, m, persistence));
        const std::string what = std::string(name) + " dp=" + std::to_string(comm::world_size()) +
                                 " sdp=" + std::to_string(s) + " m=" + std::to_string(m) +
                                 " persistence=" + std::to_string(persistence);
        SmpRun run = smp_run(make, 5);
        run.model->gather_parameters();
        expect_params_close(*run.model, ref, kTol, what);
        run.model->release_parameters(false);
      }
    }
  }
}

TEST(ShardedDataParallel, HoldsSlicesBetweenStepsAndGathersEachLayerJustInTime) {
  for (int s : degrees()) {
    for (int64_t persistence : {int64_t{0}, kSmallLayers}) {
      const int m = 2;
      reinit(sdp_json(s, m, persistence) + ", \"sdp_reduce_bucket_size\": 1");
      SmpRun run = smp_run(adam(), 1);  // partitions
      dp::GradientReducer& reducer = run.model->gradient_reducer();
      dp::ParameterShards* shards = reducer.parameter_shards();
      ASSERT_NE(shards, nullptr);
      const dp::FlatLayout& layout = reducer.layout();
      ASSERT_EQ(layout.buckets().size(), 8u);  // one per layer
      int sharded = 0;
      int64_t persistent_bytes = 0;
      for (size_t b = 0; b < layout.buckets().size(); ++b) {
        const bool small = layout.buckets()[b].numel < persistence;
        EXPECT_EQ(shards->persistent(static_cast<int>(b)), small) << "bucket " << b;
        EXPECT_EQ(shards->whole(static_cast<int>(b)), small) << "bucket " << b;
        sharded += small ? 0 : 1;
        persistent_bytes += small ? layout.buckets()[b].padded_numel * 4 : 0;
      }
      EXPECT_EQ(sharded, persistence == 0 ? 8 : 6);
      // At rest: this rank's slices (1/s of the padded model) and the persistent layers.
      EXPECT_EQ(shards->resident_bytes(), layout.local_numel() * 4 + persistent_bytes);
      EXPECT_EQ(layout.local_numel() * s, layout.flat_numel());

      comm::Communicator& group = shards->group();
      group.reset_counters();
      run.opt->zero_grad();
      const Batch b = my_slice(whole_batch(1));
      step(*run.model, {b.x}, {b.y}, mse_loss);
      run.opt->step();
      const comm::Counters& c = group.counters();
      const int buckets = 8;
      // Forward and backward of each microbatch gather each sharded layer once; after the
      // optimizer step the persistent layers are gathered again.
      EXPECT_EQ(c.get("all_gather").calls, 2 * m * sharded + (buckets - sharded));
      EXPECT_EQ(c.get("reduce_scatter").calls, m * buckets);
      EXPECT_EQ(shards->resident_bytes(), layout.local_numel() * 4 + persistent_bytes);
      // Gradients: this rank's slices only, and none once zeroed (set to none, as FSDP).
      EXPECT_EQ(shards->grad_bytes(), layout.local_numel() * 4);
      for (auto& [name, p] : run.model->local_named_parameters()) EXPECT_FALSE(p.grad().defined()) << name;
      run.opt->zero_grad();
      EXPECT_EQ(shards->grad_bytes(), 0);
    }
  }
}

TEST(ShardedDataParallel, ClipNormEqualsOneProcess) {
  RefRecord record;
  const auto ref = reference_run(sgd(), 3, 0.2, &record);
  for (int s : degrees()) {
    reinit(sdp_json(s, 2, 0));
    SmpRun run = smp_run(sgd(), 3, {}, 0.2);
    ASSERT_EQ(run.norms.size(), record.norms.size());
    for (size_t i = 0; i < run.norms.size(); ++i) {
      EXPECT_NEAR(run.norms[i], record.norms[i], 1e-6 * record.norms[i]) << "sdp=" << s << " step " << i;
    }
    run.model->gather_parameters();
    expect_params_close(*run.model, ref, kTol, "clipped, sdp=" + std::to_string(s));
    run.model->release_parameters(false);
  }
}

TEST(ShardedDataParallel, OptimizerClipsAtSdpGradientClipping) {
  // SMP: with sdp the optimizer step clips at sdp_gradient_clipping by itself; a threshold the
  // gradients exceed gives the reference clipped at it.
  const auto ref = reference_run(sgd(), 3, 0.2);
  for (int s : degrees()) {
    reinit(sdp_json(s, 2, 0, 0.2));
    SmpRun run = smp_run(sgd(), 3);
    run.model->gather_parameters();
    expect_params_close(*run.model, ref, kTol, "sdp_gradient_clipping 0.2, sdp=" + std::to_string(s));
    run.model->release_parameters(false);
  }
  // ... and without it the result differs (the clipping acted).
  const auto unclipped = reference_run(sgd(), 3);
  double diff = 0;
  for (const auto& [name, t] : ref) diff = std::max(diff, (t - unclipped.at(name)).abs().max().item<double>());
  EXPECT_GT(diff, 1e-3);
}

TEST(ShardedDataParallel, Bf16EqualsUnshardedBf16) {
  // bf16 parameters and gradient traffic, fp32 masters: sharding changes only who updates which
  // slice, and the gradient sums are the same per element (m = 1).
  const LossFn loss = [](const Values& out, const Values& y) -> Values {
    return {torch::mse_loss(out[0].to(at::kFloat), y[0])};
  };
  std::map<std::string, at::Tensor> plain;
  {
    reinit("\"ddp\": true, \"bf16\": true");
    SmpRun run = smp_run(adamw(), 5, {}, 0, {}, loss);
    for (auto& [name, p] : run.model->local_named_parameters()) plain[name] = p.detach().clone();
  }
  reinit(sdp_json(2, 1, 0) + ", \"bf16\": true");
  SmpRun run = smp_run(adamw(), 5, {}, 0, {}, loss);
  run.model->gather_parameters();
  for (auto& [name, p] : run.model->local_named_parameters()) {
    EXPECT_EQ(p.scalar_type(), at::kBFloat16) << name;
    EXPECT_TRUE(close(p, plain.at(name), kTol)) << "bf16 sdp vs bf16 ddp: " << name;
  }
  run.model->release_parameters(false);
}

TEST(ShardedDataParallel, WrittenParametersBecomeTheShards) {
  reinit(sdp_json(2, 1, 0));
  SmpRun run = smp_run(sgd(), 1);
  // Write every parameter (what a checkpoint load does), release, and read them back whole.
  run.model->gather_parameters();
  for (auto& [name, p] : run.model->local_named_parameters()) {
    at::NoGradGuard no_grad;
    p.fill_(0.25);
  }
  run.model->release_parameters(true);
  run.model->gather_parameters();
  for (auto& [name, p] : run.model->local_named_parameters()) {
    EXPECT_TRUE(at::all(p == 0.25).item<bool>()) << name;
  }
  run.model->release_parameters(false);
}

// Steps [from, to) of the reference's batches.
void train(SmpRun& run, int from, int to) {
  for (int it = from; it < to; ++it) {
    run.opt->zero_grad();
    const Batch b = my_slice(whole_batch(it));
    step(*run.model, {b.x}, {b.y}, mse_loss);
    run.opt->step();
  }
}

TEST(ShardedDataParallel, CheckpointsReshardToAndFromOtherLayouts) {
  const auto ref = reference_run(adam(), 5);
  const std::string plain = "\"ddp\": true, \"microbatches\": 2";
  const std::string zero1 = plain + ", \"shard_optimizer_state\": true";
  std::vector<std::pair<std::string, std::string>> cases = {
      {sdp_json(2, 2, 0), plain}, {zero1, sdp_json(2, 2, 0)}, {sdp_json(2, 1, kSmallLayers), sdp_json(2, 2, 0)}};
  if (comm::world_size() == 4) cases.push_back({sdp_json(2, 2, 0), sdp_json(4, 1, 0)});
  for (const auto& [saved, loaded] : cases) {
    const std::string what = "saved {" + saved + "} loaded {" + loaded + "}";
    reinit(saved);
    const TempDir tmp("smp_sdp", world());  // world(): it outlives the reinit below
    const std::string& dir = tmp.path();
    {
      SmpRun run = smp_run(adam(), 3);
      save_checkpoint(dir, "step_3", /*partial=*/true, *run.model, run.opt.get());
    }
    reinit(loaded);
    SmpRun run = smp_run(adam(), 0);
    resume_from_checkpoint(dir, *run.model, run.opt.get());
    train(run, 3, 5);
    run.model->gather_parameters();
    expect_params_close(*run.model, ref, kTol, what);
    run.model->release_parameters(false);
  }
}

TEST(ShardedDataParallel, BadConfigsAreRefused) {
  // Without ddp: refused with the config, before any model is built.
  try {
    Config::from_json_string("{\"sharded_data_parallel_degree\": 2}");
    FAIL() << "no error without ddp";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("\"ddp\": true"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace smp
