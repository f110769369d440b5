// Profiling layers for the partitioner: what it measures, and that gradients come back as they
// were. (Moving a host-built layer to a GPU for its runs is checked where there is a GPU: no
// other device here takes a CPU tensor's data in place.)
#include "smp/pipeline/profile.h"

#include <gtest/gtest.h>

#include <ATen/ATen.h>

namespace smp::pipeline {
namespace {

// A layer x -> x @ w that records the device its weight was on when it ran.
Layer matmul_layer(const std::string& name, const at::Tensor& w, std::vector<at::Device>* seen) {
  Layer layer;
  layer.name = name;
  layer.parameters = {w};
  layer.parameter_names = {"weight"};
  layer.forward = [w, seen](const Values& in) -> Values {
    seen->push_back(w.device());
    return {at::matmul(in.at(0), w)};
  };
  return layer;
}

TEST(Profile, MeasuresEachLayerAndLeavesGradientsAsTheyWere) {
  std::vector<at::Device> seen;
  const at::Tensor w1 = at::randn({8, 16}).requires_grad_(true);
  const at::Tensor w2 = at::randn({16, 4}).requires_grad_(true);
  w1.mutable_grad() = at::ones_like(w1);  // a gradient from before: must survive profiling
  const auto costs = profile_layers({matmul_layer("a", w1, &seen), matmul_layer("b", w2, &seen)},
                                    {at::randn({32, 8})}, 2);
  ASSERT_EQ(costs.size(), 2u);
  EXPECT_GT(costs[0].time_s, 0);
  EXPECT_EQ(costs[0].param_bytes, 8 * 16 * 4);
  EXPECT_EQ(costs[0].activation_bytes, 32 * 16 * 4);  // a's output
  EXPECT_EQ(costs[1].activation_bytes, 32 * 4 * 4);
  EXPECT_EQ(seen.size(), 4u);  // two runs each
  EXPECT_TRUE(at::equal(w1.grad(), at::ones_like(w1)));
  EXPECT_FALSE(w2.grad().defined());
}

}  // namespace
}  // namespace smp::pipeline
