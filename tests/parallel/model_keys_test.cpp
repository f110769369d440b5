// DistributedModel's keys, each against the path it must match: fp16_params builds the
// parameters in fp16 and then trains exactly as "fp16" does (fp32 master weights);
// ddp_dist_backend "nccl" needs a GPU; k steps with backward_passes_per_step = k reduce once,
// to the gradients of one step over the k batches together, and the k - 1 steps before
// communicate nothing. Runs on 1, 2 and 4 ranks.
#include <gtest/gtest.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include <torch/optim/adam.h>

#include "../pipeline/models.h"
#include "smp/comm/parallel_context.h"
#include "smp/core/error.h"
#include "smp/distributed_model.h"
#include "smp/distributed_optimizer.h"
#include "smp/runtime.h"
#include "smp/step.h"

namespace smp {
namespace {

using testing::Layer;
using testing::Values;

Config config_of(const std::string& keys) {
  return Config::from_json_string("{\"microbatches\": 2, \"ddp\": true, \"comm_timeout_s\": 60" +
                                  keys + "}");
}

// Four ranks: two pipeline stages and two replicas; else data parallelism alone.
int pipeline_degree() { return comm::world_size() == 4 ? 2 : 1; }

// This rank's batch of step `it`: every rank a different one.
std::pair<at::Tensor, at::Tensor> batch(int it) {
  torch::manual_seed(100 + 10 * it + comm::world_rank());
  return {torch::randn({8, 16}), torch::randn({8, 8})};
}

Values fp32_mse(const Values& out, const Values& y) {
  return {torch::mse_loss(out[0].to(at::kFloat), y[0])};
}

// Losses of `steps` Adam steps on the test MLP; the model's parameters must be fp16 as built
// when `fp16_at_build`. `delayed`: built as delayed initialisation builds (each layer's slices
// taken for sharded data parallelism over all ranks, its storage freed).
std::vector<double> fp16_losses(const std::string& keys, double loss_scale, bool fp16_at_build,
                                bool delayed = false) {
  ParallelContext context(config_of(keys));
  std::vector<Layer> layers = testing::make_mlp(1);
  std::vector<at::Tensor> params;
  for (const Layer& l : layers) params.insert(params.end(), l.parameters.begin(), l.parameters.end());
  DistributedModelOptions options;
  if (delayed) {
    options.delayed_slices = std::make_shared<dp::DelayedSlices>(comm::world_size(), comm::world_rank());
    for (const Layer& l : layers) options.delayed_slices->take(l);
  }
  DistributedModel model(context, std::move(layers), options);
  for (const at::Tensor& p : params) {
    EXPECT_EQ(p.scalar_type(), fp16_at_build ? at::kHalf : at::kFloat) << keys << ": as built";
  }
  DistributedOptimizerOptions oo;
  oo.static_loss_scale = loss_scale;
  std::unique_ptr<DistributedOptimizer> opt;
  std::vector<double> losses;
  const auto [x, y] = batch(0);  // one batch, learnt over the steps
  for (int it = 0; it < 8; ++it) {
    losses.push_back(step(model, {x}, {y}, fp32_mse).at(0).reduce_mean().item<double>());
    if (!opt) {
      opt = std::make_unique<DistributedOptimizer>(
          model, std::make_unique<torch::optim::Adam>(params, torch::optim::AdamOptions(1e-2)), oo);
    }
    opt->step();
    opt->zero_grad();
  }
  for (const at::Tensor& p : model.local_parameters()) EXPECT_EQ(p.scalar_type(), at::kHalf) << keys;
  EXPECT_EQ(opt->local_state_dict().tensors.at("fp32_master").scalar_type(), at::kFloat) << keys;
  return losses;
}

// fp16_params casts at build what "fp16" casts at partitioning: the same fp16 values, so the
// same losses to the bit, with and without fp16's loss scaling; and it trains.
TEST(Fp16Params, BuildsFp16AndTrainsExactlyAsTheFp16Path) {
  const std::string pp = ", \"pipeline_parallel_degree\": " + std::to_string(pipeline_degree());
  const std::vector<double> fp16 = fp16_losses(pp + ", \"fp16\": true", 128, false);
  const std::vector<double> both = fp16_losses(pp + ", \"fp16\": true, \"fp16_params\": true", 128, true);
  EXPECT_EQ(both, fp16);
  const std::vector<double> unscaled = fp16_losses(pp + ", \"fp16\": true", 1, false);
  const std::vector<double> alone = fp16_losses(pp + ", \"fp16_params\": true", 1, true);
  EXPECT_EQ(alone, unscaled);
  EXPECT_LT(both.back(), 0.8 * both.front());  // it trains
}

// Under delayed initialisation (sharded over every rank) the parameters hold no storage as
// built: fp16_params makes them fp16 all the same, and the shards round the fp32 slices as the
// cast would have: the losses of the eager build, to the bit.
TEST(Fp16Params, WithDelayedInitialisationTrainsAsBuiltEagerly) {
  if (comm::world_size() == 1) GTEST_SKIP() << "sharded data parallelism needs 2 ranks or more";
  const std::string sdp = ", \"sharded_data_parallel_degree\": " + std::to_string(comm::world_size()) +
                          ", \"fp16\": true, \"fp16_params\": true";
  const std::vector<double> eager = fp16_losses(sdp, 128, true);
  const std::vector<double> delayed = fp16_losses(sdp + ", \"delayed_parameter_initialization\": true", 128, true, true);
  EXPECT_EQ(delayed, eager);  // (each rank's own batch's loss: not all fall over 4 replicas)
}

// ddp_dist_backend "nccl" on the CPU, where collectives go over MPI: an error naming the key;
// "auto" (the default) builds the same model.
TEST(DdpDistBackend, NcclOnTheCpuIsAnErrorNamingTheKey) {
  ParallelContext nccl(config_of(", \"ddp_dist_backend\": \"nccl\""));
  try {
    DistributedModel model(nccl, testing::make_mlp(1));
    FAIL() << "no error for ddp_dist_backend nccl on the CPU";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("\"ddp_dist_backend\": got \"nccl\""), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("\"auto\" anywhere"), std::string::npos) << e.what();
  }
  ParallelContext automatic(config_of(", \"ddp_dist_backend\": \"auto\""));
  EXPECT_NO_THROW(DistributedModel(automatic, testing::make_mlp(1)));
}

// Collective calls on the data-parallel groups since the last reset (the pipeline group's
// point-to-point activations are not data parallelism's).
int64_t dp_collectives(ParallelContext& context, bool reset) {
  int64_t calls = 0;
  for (CommGroup g : {CommGroup::DP_GROUP, CommGroup::RDP_GROUP}) {
    calls += context.group(g).counters().total().calls;
    if (reset) context.group(g).reset_counters();
  }
  return calls;
}

// What the optimizer reads: the reduced gradients (this rank's slices under ZeRO-1).
at::Tensor reduced_gradients(DistributedModel& model) {
  const dp::GradientReducer& r = model.gradient_reducer();
  return (r.sharded() ? r.shard_grads() : r.flat_grads()).clone();
}

// k = 3 passes, the loss divided by k (as Hugging Face's Trainer does), against one step over
// the three batches together (3 x the microbatches, so each microbatch is the same).
TEST(BackwardPassesPerStep, ReducesOnceToTheGradientsOfTheWholeBatch) {
  for (const std::string keys : {std::string(), std::string(", \"shard_optimizer_state\": true")}) {
    SCOPED_TRACE(keys);
    const int k = 3;
    const std::string pp = ", \"pipeline_parallel_degree\": " + std::to_string(pipeline_degree());
    ParallelContext context(config_of(pp + keys));
    DistributedModelOptions options;
    options.backward_passes_per_step = k;
    DistributedModel accumulated(context, testing::make_mlp(1), options);
    DistributedModel whole(context, testing::make_mlp(1));
    const LossFn over_k = [k](const Values& out, const Values& y) -> Values {
      return {torch::mse_loss(out[0], y[0]) / k};
    };
    std::vector<at::Tensor> xs, ys;
    for (int pass = 0; pass < k; ++pass) {
      const auto [x, y] = batch(pass);
      xs.push_back(x);
      ys.push_back(y);
    }
    // One split for both (so one flat layout); the initial broadcast is not a pass's.
    std::vector<int> split;
    for (size_t i = 0; i < whole.layer_names().size(); ++i) {
      split.push_back(2 * static_cast<int>(i) / static_cast<int>(whole.layer_names().size()) *
                      (pipeline_degree() - 1));
    }
    accumulated.set_partition_assignment(split);
    whole.set_partition_assignment(split);
    dp_collectives(context, /*reset=*/true);
    for (int pass = 0; pass < k; ++pass) {
      step(accumulated, {xs[pass]}, {ys[pass]}, over_k);
      const int64_t issued = dp_collectives(context, /*reset=*/true);
      if (pass < k - 1) {
        EXPECT_EQ(issued, 0) << "pass " << pass;
      } else if (context.dp_size() > 1) {
        EXPECT_GT(issued, 0) << "the last pass reduces";
      }
    }
    StepOptions three_times;
    three_times.microbatches = 2 * k;
    step(whole, {at::cat(xs)}, {at::cat(ys)}, testing::mse_loss, three_times);
    const at::Tensor want = reduced_gradients(whole);
    const at::Tensor got = reduced_gradients(accumulated);
    ASSERT_EQ(got.sizes(), want.sizes());
    EXPECT_GT(want.abs().max().item<double>(), 0);
    const double err = (got - want).abs().max().item<double>();
    EXPECT_LE(err, 1e-6 * want.abs().max().item<double>());
  }
}

}  // namespace
}  // namespace smp
