// Partition tests: the automatic split against brute force over every valid cut set of small
// random models, known cases (balance, heavy layers, memory_weight, normalisation, the
// tie-break), share groups, manual partitions, the log, and bad input with the messages a user
// sees. Pure: no processes.
#include "smp/pipeline/partition.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <bitset>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "smp/core/error.h"

namespace smp::pipeline {
namespace {

// ---- helpers ------------------------------------------------------------------------------

// Layers named "l0", "l1", ... with the given times and no bytes.
std::vector<LayerCost> timed_layers(const std::vector<double>& times) {
  std::vector<LayerCost> layers;
  for (size_t i = 0; i < times.size(); ++i) {
    LayerCost layer;
    layer.name = "l" + std::to_string(i);
    layer.time_s = times[i];
    layers.push_back(layer);
  }
  return layers;
}

// Number of layers in each stage.
std::vector<int> stage_sizes(const Partition& p) {
  std::vector<int> sizes;
  for (int s = 0; s < p.num_stages; ++s) sizes.push_back(p.end(s) - p.begin(s));
  return sizes;
}

// Largest stage cost, summing each stage left to right.
double max_stage_cost(const std::vector<int>& stage_of_layer, const std::vector<double>& cost,
                      int num_stages) {
  std::vector<double> sums(num_stages, 0.0);
  for (size_t i = 0; i < cost.size(); ++i) sums[stage_of_layer[i]] += cost[i];
  return *std::max_element(sums.begin(), sums.end());
}

// Contiguous, non-decreasing by steps of one, every stage non-empty, share groups intact.
::testing::AssertionResult is_valid(const Partition& p, const std::vector<LayerCost>& layers,
                                    int num_stages) {
  const auto& s = p.stage_of_layer;
  if (p.num_stages != num_stages) return ::testing::AssertionFailure() << "num_stages";
  if (s.size() != layers.size()) return ::testing::AssertionFailure() << "size";
  if (s.front() != 0 || s.back() != num_stages - 1)
    return ::testing::AssertionFailure() << "first/last stage";
  for (size_t i = 1; i < s.size(); ++i) {
    if (s[i] != s[i - 1] && s[i] != s[i - 1] + 1)
      return ::testing::AssertionFailure() << "not contiguous at " << i;
  }
  for (size_t i = 0; i < s.size(); ++i) {
    for (size_t j = 0; j < s.size(); ++j) {
      if (layers[i].share_group >= 0 && layers[i].share_group == layers[j].share_group &&
          s[i] != s[j])
        return ::testing::AssertionFailure() << "share group split: " << i << ", " << j;
    }
  }
  return ::testing::AssertionSuccess();
}

// The optimum over all cut sets (bit c-1 set: a stage begins at layer c) that keep share
// groups intact; -1 when there is none.
double brute_force_optimum(const std::vector<LayerCost>& layers, const std::vector<double>& cost,
                           int num_stages) {
  const int n = static_cast<int>(layers.size());
  double best = -1;
  for (unsigned mask = 0; mask < (1u << (n - 1)); ++mask) {
    if (static_cast<int>(std::bitset<32>(mask).count()) != num_stages - 1) continue;
    Partition p{std::vector<int>(n, 0), num_stages};
    for (int i = 1; i < n; ++i) {
      p.stage_of_layer[i] = p.stage_of_layer[i - 1] + static_cast<int>((mask >> (i - 1)) & 1);
    }
    if (!is_valid(p, layers, num_stages)) continue;
    const double value = max_stage_cost(p.stage_of_layer, cost, num_stages);
    if (best < 0 || value < best) best = value;
  }
  return best;
}

// A small random model: times and bytes with zeros, adjacent share groups, and now and then a
// pair of non-adjacent sharers.
std::vector<LayerCost> random_layers(std::mt19937& rng, int n) {
  std::uniform_real_distribution<double> time(0.0, 1.0);
  std::uniform_int_distribution<int64_t> bytes(0, 1000000);
  std::uniform_int_distribution<int> percent(0, 99);
  std::vector<LayerCost> layers = timed_layers(std::vector<double>(n, 0.0));
  for (auto& layer : layers) {
    if (percent(rng) >= 20) layer.time_s = time(rng);
    if (percent(rng) >= 20) layer.param_bytes = bytes(rng);
    if (percent(rng) >= 30) layer.activation_bytes = bytes(rng);
  }
  int group = 0;
  for (int i = 0; i + 1 < n; ++i) {
    if (percent(rng) >= 15) continue;
    const int last = std::min(n - 1, i + 1 + percent(rng) % 2);
    for (int j = i; j <= last; ++j) layers[j].share_group = group;
    ++group;
  }
  if (n >= 3 && percent(rng) < 15) {
    std::uniform_int_distribution<int> pick(0, n - 1);
    const int a = pick(rng);
    const int b = pick(rng);
    if (std::abs(a - b) >= 2) layers[a].share_group = layers[b].share_group = group;
  }
  return layers;
}

template <typename F>
std::string config_error_message(F&& f) {
  try {
    f();
  } catch (const ConfigError& e) {
    return e.what();
  }
  ADD_FAILURE() << "no ConfigError thrown";
  return "";
}

// ---- optimality -------------------------------------------------------------------------

TEST(AutoPartition, MatchesBruteForceOnRandomModels) {
  std::mt19937 rng(20240611);
  const double weights[] = {0.0, 0.2, 0.8, 1.0};
  int solved = 0;
  int infeasible = 0;
  for (int trial = 0; trial < 2000; ++trial) {
    const int n = 1 + static_cast<int>(rng() % 9);
    const int k = 1 + static_cast<int>(rng() % n);
    const double weight = weights[rng() % 4];
    const std::vector<LayerCost> layers = random_layers(rng, n);
    const std::vector<double> cost = layer_costs(layers, weight);
    const double optimum = brute_force_optimum(layers, cost, k);
    SCOPED_TRACE("trial " + std::to_string(trial) + ": n=" + std::to_string(n) +
                 " k=" + std::to_string(k) + " memory_weight=" + std::to_string(weight));
    if (optimum < 0) {
      EXPECT_THROW(auto_partition(layers, k, weight), ConfigError);
      ++infeasible;
      continue;
    }
    const Partition p = auto_partition(layers, k, weight);
    ASSERT_TRUE(is_valid(p, layers, k));
    EXPECT_NEAR(max_stage_cost(p.stage_of_layer, cost, k), optimum, 1e-12);
    ++solved;
  }
  EXPECT_GE(solved, 500);
  EXPECT_GE(infeasible, 10);  // the generator does reach the share-group error
}

TEST(AutoPartition, IsDeterministic) {
  std::mt19937 rng(7);
  for (int trial = 0; trial < 50; ++trial) {
    std::vector<LayerCost> layers = random_layers(rng, 9);
    for (auto& layer : layers) layer.share_group = -1;
    EXPECT_EQ(auto_partition(layers, 3, 0.2).stage_of_layer,
              auto_partition(layers, 3, 0.2).stage_of_layer);
  }
}

// Fewest stages with every stage at most `bound` (greedy over the atoms between allowed cuts,
// which is optimal for contiguous splits); a huge number when an atom alone exceeds it.
int fewest_stages(const std::vector<LayerCost>& layers, const std::vector<double>& cost,
                  double bound) {
  std::vector<double> atoms;  // cost of each run of layers no cut may divide
  int open_until = -1;        // last layer of the share-group spans seen so far
  for (size_t i = 0; i < layers.size(); ++i) {
    if (static_cast<int>(i) > open_until || atoms.empty()) atoms.push_back(0.0);
    atoms.back() += cost[i];
    for (size_t j = i + 1; j < layers.size(); ++j) {
      if (layers[i].share_group >= 0 && layers[j].share_group == layers[i].share_group)
        open_until = std::max(open_until, static_cast<int>(j));
    }
  }
  int stages = 1;
  double current = 0;
  for (double atom : atoms) {
    if (atom > bound) return 1 << 30;
    if (current + atom > bound) {
      ++stages;
      current = 0;
    }
    current += atom;
  }
  return stages;
}

TEST(AutoPartition, LargeModelIsOptimalAndFast) {
  std::mt19937 rng(31337);
  std::uniform_real_distribution<double> time(0.5, 1.5);
  auto layers = timed_layers(std::vector<double>(3000, 0.0));
  for (auto& layer : layers) {
    layer.time_s = time(rng);
    layer.param_bytes = static_cast<int64_t>(rng() % 1000000);
  }
  for (int i = 0; i + 2 < 3000; i += 97) layers[i].share_group = layers[i + 2].share_group = i;
  for (int k : {2, 16, 64}) {
    const Partition p = auto_partition(layers, k, 0.2);
    ASSERT_TRUE(is_valid(p, layers, k));
    const auto cost = layer_costs(layers, 0.2);
    const double best = max_stage_cost(p.stage_of_layer, cost, k);
    EXPECT_LE(fewest_stages(layers, cost, best * (1 + 1e-9)), k);
    EXPECT_GT(fewest_stages(layers, cost, best * (1 - 1e-9)), k);
  }
}

// ---- known cases --------------------------------------------------------------------------

TEST(AutoPartition, EqualLayersSplitEvenly) {
  const auto layers = timed_layers(std::vector<double>(12, 1.0));
  EXPECT_EQ(stage_sizes(auto_partition(layers, 4, 0.0)), (std::vector<int>{3, 3, 3, 3}));
  EXPECT_EQ(stage_sizes(auto_partition(layers, 3, 0.0)), (std::vector<int>{4, 4, 4}));
  EXPECT_EQ(stage_sizes(auto_partition(layers, 12, 0.0)), std::vector<int>(12, 1));
  EXPECT_EQ(stage_sizes(auto_partition(layers, 1, 0.0)), std::vector<int>{12});
}

TEST(AutoPartition, TieBreakGivesLaterStagesTheExtraLayers) {
  const auto layers = timed_layers(std::vector<double>(8, 1.0));
  EXPECT_EQ(stage_sizes(auto_partition(layers, 3, 0.0)), (std::vector<int>{2, 3, 3}));
  EXPECT_EQ(stage_sizes(auto_partition(timed_layers(std::vector<double>(7, 1.0)), 2, 0.0)),
            (std::vector<int>{3, 4}));
}

TEST(AutoPartition, BalancesTheStagesTheMaximumDoesNotFix) {
  // The heavy last layer fixes the optimum at 4; of the optimal splits of the four light
  // layers (1+3, 2+2, 3+1) the balanced one wins.
  const auto layers = timed_layers({1, 1, 1, 1, 4});
  EXPECT_EQ(stage_sizes(auto_partition(layers, 3, 0.0)), (std::vector<int>{2, 2, 1}));
}

TEST(AutoPartition, HeavyLayerGetsAStageAlone) {
  const auto layers = timed_layers({1, 1, 10, 1, 1});
  const Partition p = auto_partition(layers, 3, 0.0);
  EXPECT_EQ(p.begin(1), 2);
  EXPECT_EQ(p.end(1), 3);
  EXPECT_EQ(stage_sizes(p), (std::vector<int>{2, 1, 2}));
}

TEST(AutoPartition, MemoryWeightZeroIgnoresBytes) {
  auto layers = timed_layers(std::vector<double>(6, 1.0));
  layers[0].param_bytes = 1000000000;
  layers[5].activation_bytes = 500000000;
  EXPECT_EQ(stage_sizes(auto_partition(layers, 3, 0.0)), (std::vector<int>{2, 2, 2}));
  EXPECT_NE(stage_sizes(auto_partition(layers, 3, 0.8)), (std::vector<int>{2, 2, 2}));
}

TEST(AutoPartition, MemoryWeightOneIgnoresTime) {
  auto layers = timed_layers({100, 1, 1, 1, 1, 100});
  for (auto& layer : layers) layer.param_bytes = 1000;
  EXPECT_EQ(stage_sizes(auto_partition(layers, 3, 1.0)), (std::vector<int>{2, 2, 2}));
  EXPECT_EQ(stage_sizes(auto_partition(layers, 3, 0.0)), (std::vector<int>{1, 4, 1}));
}

TEST(AutoPartition, MemoryCountsParametersAndActivations) {
  auto layers = timed_layers(std::vector<double>(4, 0.0));
  layers[0].param_bytes = 300;
  layers[1].activation_bytes = 300;
  layers[2].param_bytes = 100;
  layers[2].activation_bytes = 200;
  layers[3].param_bytes = 300;
  EXPECT_EQ(stage_sizes(auto_partition(layers, 2, 1.0)), (std::vector<int>{2, 2}));
  EXPECT_EQ(layer_costs(layers, 1.0), (std::vector<double>{0.25, 0.25, 0.25, 0.25}));
}

TEST(AutoPartition, NormalisationMakesUnitsIrrelevant) {
  std::mt19937 rng(99);
  for (int trial = 0; trial < 100; ++trial) {
    auto layers = random_layers(rng, 9);
    for (auto& layer : layers) layer.share_group = -1;
    auto scaled = layers;
    for (auto& layer : scaled) {
      layer.time_s *= 1000;
      layer.param_bytes *= 4;
      layer.activation_bytes *= 4;
    }
    for (double weight : {0.0, 0.2, 0.8, 1.0}) {
      EXPECT_EQ(auto_partition(layers, 4, weight).stage_of_layer,
                auto_partition(scaled, 4, weight).stage_of_layer);
    }
  }
}

TEST(AutoPartition, ZeroCostModelStillSplits) {
  const auto layers = timed_layers(std::vector<double>(5, 0.0));
  const Partition p = auto_partition(layers, 3, 0.8);
  EXPECT_TRUE(is_valid(p, layers, 3));
}

TEST(LayerCosts, MixesNormalisedTimeAndMemory) {
  auto layers = timed_layers({3.0, 1.0});
  layers[0].param_bytes = 100;
  layers[1].param_bytes = 300;
  const auto cost = layer_costs(layers, 0.2);
  EXPECT_DOUBLE_EQ(cost[0], 0.2 * 0.25 + 0.8 * 0.75);
  EXPECT_DOUBLE_EQ(cost[1], 0.2 * 0.75 + 0.8 * 0.25);
  EXPECT_DOUBLE_EQ(cost[0] + cost[1], 1.0);
}

TEST(LayerCosts, ZeroTotalsGiveZeroTerms) {
  const auto layers = timed_layers({2.0, 2.0});  // no bytes at all
  for (double cost : layer_costs(layers, 0.8)) EXPECT_DOUBLE_EQ(cost, 0.2 * 0.5);
  EXPECT_EQ(layer_costs(timed_layers({0.0, 0.0}), 0.5), (std::vector<double>{0.0, 0.0}));
  EXPECT_TRUE(layer_costs({}, 0.5).empty());
}

// ---- share groups -------------------------------------------------------------------------

TEST(AutoPartition, TiedEmbeddingLeavesNoCut) {
  auto layers = timed_layers({1, 1, 1, 1});
  layers[0].name = "embed";
  layers[3].name = "lm_head";
  layers[0].share_group = layers[3].share_group = 0;
  EXPECT_EQ(auto_partition(layers, 1, 0.8).stage_of_layer, (std::vector<int>{0, 0, 0, 0}));
  const std::string message = config_error_message([&] { auto_partition(layers, 2, 0.8); });
  EXPECT_NE(message.find("0 cut points"), std::string::npos) << message;
  EXPECT_NE(message.find("2 pipeline stages need 1"), std::string::npos) << message;
  EXPECT_NE(message.find("'embed' (index 0)"), std::string::npos) << message;
  EXPECT_NE(message.find("'lm_head' (index 3)"), std::string::npos) << message;
  EXPECT_NE(message.find("share group 0"), std::string::npos) << message;
}

TEST(AutoPartition, AdjacentSharersStayTogether) {
  auto layers = timed_layers({1, 1, 1, 1, 1, 1});
  layers[2].share_group = layers[3].share_group = 5;  // an even split would cut between them
  const Partition p = auto_partition(layers, 2, 0.0);
  EXPECT_TRUE(is_valid(p, layers, 2));
  EXPECT_EQ(p.stage_of_layer[2], p.stage_of_layer[3]);
  EXPECT_EQ(stage_sizes(p), (std::vector<int>{2, 4}));
}

TEST(AutoPartition, SharedSpanKeepsTheLayersBetweenTogether) {
  auto layers = timed_layers(std::vector<double>(8, 1.0));
  layers[1].share_group = layers[4].share_group = 0;  // cuts at 2, 3, 4 forbidden
  const Partition p = auto_partition(layers, 3, 0.0);
  EXPECT_TRUE(is_valid(p, layers, 3));
  EXPECT_EQ(p.stage_of_layer[1], p.stage_of_layer[4]);
  EXPECT_EQ(p.stage_of_layer[2], p.stage_of_layer[3]);
}

// ---- bad input ----------------------------------------------------------------------------

TEST(AutoPartition, RejectsTooFewStages) {
  const auto layers = timed_layers({1, 1});
  const std::string message = config_error_message([&] { auto_partition(layers, 0, 0.8); });
  EXPECT_NE(message.find("at least 1, got 0"), std::string::npos) << message;
  EXPECT_THROW(auto_partition(layers, -3, 0.8), ConfigError);
}

TEST(AutoPartition, RejectsMoreStagesThanLayers) {
  const auto layers = timed_layers({1, 1, 1, 1});
  const std::string message = config_error_message([&] { auto_partition(layers, 5, 0.8); });
  EXPECT_NE(message.find("4 layers cannot fill 5 pipeline stages"), std::string::npos)
      << message;
  EXPECT_THROW(auto_partition({}, 1, 0.8), ConfigError);
}

TEST(AutoPartition, RejectsMemoryWeightOutsideUnitInterval) {
  const auto layers = timed_layers({1, 1});
  for (double weight : {-0.1, 1.5}) {
    const std::string message = config_error_message([&] { auto_partition(layers, 1, weight); });
    EXPECT_NE(message.find("memory_weight must be in [0, 1]"), std::string::npos) << message;
    EXPECT_NE(message.find(weight < 0 ? "-0.1" : "1.5"), std::string::npos) << message;
  }
  EXPECT_THROW(layer_costs(layers, std::nan("")), ConfigError);
}

TEST(AutoPartition, RejectsNegativeCosts) {
  auto layers = timed_layers({1, -2});
  std::string message = config_error_message([&] { auto_partition(layers, 1, 0.8); });
  EXPECT_NE(message.find("'l1' (index 1) has time_s -2"), std::string::npos) << message;
  layers[1].time_s = 1;
  layers[0].activation_bytes = -7;
  message = config_error_message([&] { layer_costs(layers, 0.8); });
  EXPECT_NE(message.find("'l0' (index 0)"), std::string::npos) << message;
  EXPECT_NE(message.find("activation_bytes -7"), std::string::npos) << message;
}

// ---- manual partitions --------------------------------------------------------------------

TEST(ManualPartition, DefaultPartitionFillsIn) {
  Partition p = manual_partition({0, -1, -1, 1, 2}, 3, 0);
  EXPECT_EQ(p.stage_of_layer, (std::vector<int>{0, 0, 0, 1, 2}));
  p = manual_partition({0, -1, -1, 2}, 3, 1);
  EXPECT_EQ(p.stage_of_layer, (std::vector<int>{0, 1, 1, 2}));
  p = manual_partition({-1, -1}, 1, 0);
  EXPECT_EQ(p.stage_of_layer, (std::vector<int>{0, 0}));
  EXPECT_EQ(p.begin(0), 0);
  EXPECT_EQ(p.end(0), 2);
}

TEST(ManualPartition, RejectsNonContiguousStages) {
  const auto layers = timed_layers({1, 1, 1, 1});
  const std::string message =
      config_error_message([&] { manual_partition({0, 1, 0, 1}, 2, 0, layers); });
  EXPECT_NE(message.find("'l2' (index 2) is on stage 0"), std::string::npos) << message;
  EXPECT_NE(message.find("'l1' (index 1) on stage 1"), std::string::npos) << message;
  // Without names the index is named; the default can break contiguity too.
  const std::string unnamed = config_error_message([&] { manual_partition({1, -1}, 2, 0); });
  EXPECT_NE(unnamed.find("layer 1 is on stage 0"), std::string::npos) << unnamed;
}

TEST(ManualPartition, RejectsOutOfRangeStages) {
  const auto layers = timed_layers({1, 1, 1});
  std::string message = config_error_message([&] { manual_partition({0, 1, 4}, 2, 0, layers); });
  EXPECT_NE(message.find("'l2' (index 2) is assigned to stage 4"), std::string::npos) << message;
  EXPECT_NE(message.find("2 pipeline stages (0..1)"), std::string::npos) << message;
  message = config_error_message([&] { manual_partition({0, -2, 1}, 2, 0); });
  EXPECT_NE(message.find("layer 1 is assigned to stage -2"), std::string::npos) << message;
  message = config_error_message([&] { manual_partition({0, -1, 1}, 2, 5, layers); });
  EXPECT_NE(message.find("'l1' (index 1) has no stage and default_partition 5"),
            std::string::npos)
      << message;
  EXPECT_THROW(manual_partition({0}, 0, 0), ConfigError);
}

TEST(ManualPartition, RejectsEmptyStages) {
  std::string message = config_error_message([&] { manual_partition({0, 0, 2, 2}, 3, 0); });
  EXPECT_NE(message.find("pipeline stage 1 of 3 holds no layers"), std::string::npos)
      << message;
  message = config_error_message([&] { manual_partition({0, 0}, 2, 0); });
  EXPECT_NE(message.find("stage 1 of 2 holds no layers"), std::string::npos) << message;
}

TEST(ManualPartition, RejectsSplitShareGroups) {
  auto layers = timed_layers({1, 1, 1, 1});
  layers[0].name = "embed";
  layers[3].name = "lm_head";
  layers[0].share_group = layers[3].share_group = 0;
  const std::string message =
      config_error_message([&] { manual_partition({0, 0, 1, 1}, 2, 0, layers); });
  EXPECT_NE(message.find("'embed' (index 0) and layer 'lm_head' (index 3)"), std::string::npos)
      << message;
  EXPECT_NE(message.find("stages 0 and 1"), std::string::npos) << message;
  EXPECT_NO_THROW(manual_partition({0, 0, 0, 0}, 1, 0, layers));
}

TEST(ManualPartition, RejectsLayerCountMismatch) {
  const std::string message =
      config_error_message([&] { manual_partition({0, 1}, 2, 0, timed_layers({1, 1, 1})); });
  EXPECT_NE(message.find("2 stage assignments for 3 layers"), std::string::npos) << message;
}

// ---- the log ------------------------------------------------------------------------------

TEST(Describe, NamesEveryStageAndLayer) {
  std::vector<LayerCost> layers = timed_layers({0.004, 0.003, 0.003, 0.002});
  layers[0].name = "embed";
  layers[1].name = "block0";
  layers[2].name = "block1";
  layers[3].name = "lm_head";
  for (auto& layer : layers) {
    layer.num_params = 1230000;
    layer.param_bytes = 4920000;
    layer.activation_bytes = 80000;
  }
  const Partition p = manual_partition({0, 0, 1, 1}, 2, 0, layers);
  const std::string log = describe(p, layers);
  EXPECT_EQ(log.rfind("Partition assignments:\n", 0), 0u) << log;
  EXPECT_NE(log.find("  stage 0: layers 0-1 (embed, block0), 2.46M params, time 7.00 ms (58.3%), "
                     "memory 10.0 MB (50.0%)\n"),
            std::string::npos)
      << log;
  EXPECT_NE(log.find("  stage 1: layers 2-3 (block1, lm_head)"), std::string::npos) << log;
}

TEST(Describe, ShortensLongStagesAndWorksWithoutCosts) {
  const auto layers = timed_layers(std::vector<double>(10, 1.0));
  const Partition p = manual_partition({0, 0, 0, 0, 0, 0, 0, 0, 0, 1}, 2, 0, layers);
  const std::string log = describe(p, layers);
  EXPECT_NE(log.find("layers 0-8 (l0, l1, l2, ..., l7, l8 (9 layers))"), std::string::npos) << log;
  EXPECT_NE(log.find("stage 1: layer 9 (l9), 0 params"), std::string::npos) << log;
  EXPECT_EQ(describe(p, {}), "Partition assignments:\n  stage 0: layers 0-8\n  stage 1: layer 9\n");
}

}  // namespace
}  // namespace smp::pipeline
