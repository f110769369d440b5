// The library below SMP's facades runs on a ParallelContext handed to it, with no smp::init:
// a DistributedModel, smp::step and a DistributedOptimizer over a context built by the test
// train like one process, and two contexts of different layouts live side by side (nothing
// reads a process-wide state). Runs on 1, 2 and 4 ranks.
#include <gtest/gtest.h>

#include <map>
#include <memory>
#include <string>

#include <torch/optim/sgd.h>

#include "../pipeline/models.h"
#include "smp/comm/parallel_context.h"
#include "smp/distributed_model.h"
#include "smp/distributed_optimizer.h"
#include "smp/runtime.h"
#include "smp/step.h"

namespace smp {
namespace {

using testing::Layer;
using testing::Values;

Config layout(int pp, bool ddp) {
  return Config::from_json_string("{\"pipeline_parallel_degree\": " + std::to_string(pp) +
                                  ", \"microbatches\": 2, \"ddp\": " + (ddp ? "true" : "false") +
                                  ", \"comm_timeout_s\": 60}");
}

::testing::AssertionResult close(const at::Tensor& got, const at::Tensor& want) {
  const double err = (got - want).abs().max().item<double>();
  const double scale = want.abs().max().item<double>();
  if (err <= 1e-5 * scale + 1e-12) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "max abs error " << err << " vs scale " << scale;
}

// Three SGD steps of `model` (every rank the same batch) against one process.
void train_like_one_process(DistributedModel& model) {
  std::vector<Layer> reference = testing::make_mlp(1);
  std::map<std::string, at::Tensor> ref_params;
  std::vector<at::Tensor> ref_list;
  for (const Layer& layer : reference) {
    for (size_t j = 0; j < layer.parameters.size(); ++j) {
      ref_params[layer.name + "." + layer.parameter_names[j]] = layer.parameters[j];
      ref_list.push_back(layer.parameters[j]);
    }
  }
  torch::optim::SGD ref_opt(ref_list, torch::optim::SGDOptions(0.1));
  torch::manual_seed(3);
  const at::Tensor x = torch::randn({16, 16});
  const at::Tensor y = torch::randn({16, 8});

  std::unique_ptr<DistributedOptimizer> optimizer;
  for (int it = 0; it < 3; ++it) {
    ref_opt.zero_grad();
    at::Tensor ref_loss = testing::mse_loss(testing::run_all(reference, {x}), {y})[0];
    ref_loss.backward();
    ref_opt.step();

    std::vector<StepOutput> out = step(model, {x}, {y}, testing::mse_loss);
    EXPECT_TRUE(close(out.at(0).reduce_mean(), ref_loss.detach())) << "loss, step " << it;
    if (!optimizer) {
      optimizer = std::make_unique<DistributedOptimizer>(
          model, std::make_unique<torch::optim::SGD>(model.local_parameters(),
                                                     torch::optim::SGDOptions(0.1)));
    }
    optimizer->step();
    optimizer->zero_grad();
  }
  for (auto& [name, p] : model.local_named_parameters()) {
    EXPECT_TRUE(close(p.detach(), ref_params.at(name).detach())) << name << " after 3 steps";
  }
}

TEST(ParallelContext, TrainsWithoutSmpInit) {
  ASSERT_FALSE(is_initialized());
  const int world = comm::world_size();
  ParallelContext context(layout(world % 2 == 0 ? 2 : 1, /*ddp=*/true));
  EXPECT_EQ(context.pp_size() * context.tp_size() * context.rdp_size(), world);
  DistributedModel model(context, testing::make_mlp(1));
  train_like_one_process(model);
  EXPECT_FALSE(is_initialized());
}

TEST(ParallelContext, TwoLayoutsSideBySide) {
  const int world = comm::world_size();
  ParallelContext pipelined(layout(world % 2 == 0 ? 2 : 1, /*ddp=*/true));
  ParallelContext replicated(layout(1, /*ddp=*/true));
  DistributedModel a(pipelined, testing::make_mlp(1));
  DistributedModel b(replicated, testing::make_mlp(1));
  EXPECT_EQ(a.num_stages(), pipelined.pp_size());
  EXPECT_EQ(b.num_stages(), 1);
  train_like_one_process(a);
  train_like_one_process(b);
}

TEST(ParallelContext, RefusesALayoutThatDoesNotFitTheWorld) {
  const int world = comm::world_size();
  try {
    ParallelContext context(layout(world + 1, /*ddp=*/true));
    FAIL() << "no error for pipeline_parallel_degree " << world + 1 << " on " << world << " ranks";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("pipeline_parallel_degree (" + std::to_string(world + 1)),
              std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace smp
