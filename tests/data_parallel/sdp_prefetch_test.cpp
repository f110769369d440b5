// Sharded data parallelism's gathers and reductions (runs on 2 and 4 ranks), on the MLP of the
// data-parallel tests (8 layers, one bucket each), Adam, 2 microbatches, 5 steps:
//   - prefetch: the next layer's all-gather starts while the current one computes; with it
//     (sdp_max_live_parameters at its default) the losses, the last step's gradient slices and
//     the parameters equal those without it (a bound of 1 element) exactly, and the parameters
//     equal the one-process reference within 1e-6;
//   - sdp_max_live_parameters: the live elements (whole buckets, and those being gathered) never
//     pass a bound that leaves room for one prefetched layer, and a bound of 1 prefetches
//     nothing;
//   - under activation checkpointing a recomputed layer keeps what its recompute gathered for
//     its backward and prefetches nothing; no bucket is left whole after backward;
//   - sdp_reduce_bucket_size: packs of consecutive buckets make one reduce-scatter each, so a
//     larger size makes fewer collectives, and the result is the same;
//   - the bucket pool: a freed block is reused by the next request of its size, unmapped when
//     none comes within kReuseWithin allocations, and trim() gives the kept ones back (after
//     each optimizer step: between steps a rank keeps none);
//   - sdp_hierarchical_allgather: on 4 ranks with SMP_RANKS_PER_NODE=2 (two faked nodes) a
//     sharding group of 4 gathers within the node and then across, with a result identical to
//     the flat gather; a sharding group on one node gathers flat.
#include <gtest/gtest.h>
#include <torch/optim/adam.h>

#include <stdlib.h>

#include "harness.h"

namespace smp {
namespace {

using namespace smp::testing;

constexpr double kTol = 1e-6;
constexpr int kSteps = 5;
constexpr int64_t kLayer = 1056;  // fc1..fc6's elements (fc0: 544, fc7: 264)

OptimizerFactory adam() {
  return [](std::vector<at::Tensor> p) {
    return std::make_unique<torch::optim::Adam>(p, torch::optim::AdamOptions(1e-3).weight_decay(1e-2));
  };
}

std::string sdp_json(int degree, const std::string& more) {
  return "\"ddp\": true, \"sharded_data_parallel_degree\": " + std::to_string(degree) +
         ", \"microbatches\": 2, \"sdp_param_persistence_threshold\": 0, "
         "\"sdp_gradient_clipping\": 1e9" +
         (more.empty() ? "" : ", " + more);
}

std::vector<int> degrees() {
  std::vector<int> out;
  for (int s = 2; s <= comm::world_size(); s *= 2) out.push_back(s);
  return out;
}

// What a run gives: losses, the last step's gradient slices, the parameters, and its counts.
struct Outcome {
  std::vector<double> losses;
  at::Tensor grads;
  std::map<std::string, at::Tensor> params;
  int64_t peak_live = 0;
  int64_t prefetches = 0;
  int64_t reduce_scatters = 0;  // in the last step
  int64_t gathers_within_node = 0;
  int64_t pool_bytes_between_steps = -1;
};

Outcome run(int degree, const std::string& more) {
  reinit(sdp_json(degree, more));
  SmpRun r = smp_run(adam(), kSteps - 1);
  dp::ParameterShards& shards = *r.model->gradient_reducer().parameter_shards();
  shards.group().reset_counters();
  r.opt->zero_grad();
  const Batch b = my_slice(whole_batch(kSteps - 1));
  r.losses.push_back(replica_mean(step(*r.model, {b.x}, {b.y}, mse_loss)));
  Outcome out{r.losses, shards.grads().clone()};
  out.reduce_scatters = shards.group().counters().get("reduce_scatter").calls;
  r.opt->step();
  out.pool_bytes_between_steps = shards.pool().mapped_bytes();
  out.peak_live = shards.peak_live_elements();  // (before gather_parameters makes all whole)
  out.prefetches = shards.prefetches();
  r.model->gather_parameters();
  for (auto& [name, p] : r.model->local_named_parameters()) out.params[name] = p.detach().clone();
  r.model->release_parameters(false);
  if (comm::Communicator* node = context().groups().sdp_node()) {
    out.gathers_within_node = node->counters().get("all_gather").calls;
  }
  return out;
}

void expect_identical(const Outcome& got, const Outcome& want, const std::string& what) {
  EXPECT_EQ(got.losses, want.losses) << what;
  EXPECT_TRUE(at::equal(got.grads, want.grads)) << what << ": gradient slices";
  for (const auto& [name, t] : want.params) {
    EXPECT_TRUE(at::equal(got.params.at(name), t)) << what << ": parameter " << name;
  }
}

void expect_reference(const Outcome& got, const std::map<std::string, at::Tensor>& ref,
                      const std::string& what) {
  for (const auto& [name, t] : ref) EXPECT_TRUE(close(got.params.at(name), t, kTol)) << what << ": " << name;
}

TEST(SdpPrefetch, EqualsNoPrefetchAndHonoursSdpMaxLiveParameters) {
  const auto ref = reference_run(adam(), kSteps);
  for (int s : degrees()) {
    const std::string at = "sdp=" + std::to_string(s);
    const Outcome off = run(s, "\"sdp_max_live_parameters\": 1");
    EXPECT_EQ(off.prefetches, 0) << at;
    expect_reference(off, ref, at + " without prefetch");
    const Outcome on = run(s, "");
    EXPECT_GT(on.prefetches, 0) << at;
    EXPECT_GT(on.peak_live, off.peak_live) << at;
    expect_identical(on, off, at + " prefetch vs none");
    expect_reference(on, ref, at + " with prefetch");
    EXPECT_EQ(on.pool_bytes_between_steps, 0) << at;  // every layer sharded: nothing kept
    // Room for one prefetched layer over what computing needs: prefetches happen, and the
    // live elements never pass the bound.
    const int64_t bound = off.peak_live + kLayer;
    const Outcome bounded = run(s, "\"sdp_max_live_parameters\": " + std::to_string(bound));
    EXPECT_GT(bounded.prefetches, 0) << at;
    EXPECT_LE(bounded.peak_live, bound) << at;
    expect_identical(bounded, off, at + " bounded prefetch vs none");
  }
}

// Activation checkpointing on every layer: a recomputed forward keeps its buckets for the
// backward that follows at once and prefetches nothing (the next layer's backward is done), so
// a layer is gathered twice a microbatch (its forward, its recompute; the backward hooks'
// prefetch brings it for the recompute) and no bucket is left whole once backward is over.
// Losses, gradient slices and parameters equal those without checkpointing exactly.
TEST(SdpPrefetch, RecomputedLayersKeepTheirGatherForBackwardAndLeaveNothingWhole) {
  for (int s : degrees()) {
    const std::string at = "sdp=" + std::to_string(s);
    const Outcome plain = run(s, "");
    reinit(sdp_json(s, ""));
    std::vector<Layer> layers = make_mlp(1);
    std::vector<std::string> names;
    for (const Layer& layer : layers) names.push_back(layer.name);
    const auto params = values_of(named(layers));
    DistributedModel model(std::move(layers));
    model.set_activation_checkpointing(names);  // "each"
    DistributedOptimizer opt(model, adam()(params));
    Outcome got;
    for (int it = 0; it < kSteps; ++it) {
      opt.zero_grad();
      dp::ParameterShards* shards = it == 0 ? nullptr : model.gradient_reducer().parameter_shards();
      if (shards) shards->group().reset_counters();
      const Batch b = my_slice(whole_batch(it));
      got.losses.push_back(replica_mean(step(model, {b.x}, {b.y}, mse_loss)));
      if (it + 1 == kSteps) {
        EXPECT_EQ(shards->group().counters().get("all_gather").calls, 2 * 2 * 8) << at;
        for (size_t k = 0; k < model.gradient_reducer().layout().buckets().size(); ++k) {
          EXPECT_FALSE(shards->whole(static_cast<int>(k))) << at << ": bucket " << k << " left whole";
        }
        got.grads = shards->grads().clone();
      }
      opt.step();
    }
    model.gather_parameters();
    for (auto& [name, p] : model.local_named_parameters()) got.params[name] = p.detach().clone();
    model.release_parameters(false);
    expect_identical(got, plain, at + " checkpointed vs not");
  }
}

TEST(SdpPrefetch, ReduceBucketSizePacksBucketsIntoFewerCollectives) {
  const auto ref = reference_run(adam(), kSteps);
  for (int s : degrees()) {
    const std::string at = "sdp=" + std::to_string(s);
    const Outcome each = run(s, "\"sdp_reduce_bucket_size\": 1");
    EXPECT_EQ(each.reduce_scatters, 2 * 8) << at;  // 2 microbatches, one per layer
    expect_reference(each, ref, at + " one bucket per reduce-scatter");
    // fc0..fc1 | fc2..fc3 | fc4..fc5 | fc6..fc7 (padding keeps each under 2 * kLayer + s).
    const Outcome pairs = run(s, "\"sdp_reduce_bucket_size\": " + std::to_string(2 * kLayer + s));
    EXPECT_EQ(pairs.reduce_scatters, 2 * 4) << at;
    const Outcome all = run(s, "");  // the default, 5e8: the whole model in one
    EXPECT_EQ(all.reduce_scatters, 2 * 1) << at;
    for (const Outcome* o : {&pairs, &all}) {
      EXPECT_EQ(o->losses.size(), each.losses.size());
      for (size_t i = 0; i < o->losses.size(); ++i) EXPECT_NEAR(o->losses[i], each.losses[i], 1e-6) << at;
      EXPECT_TRUE(close(o->grads, each.grads, kTol)) << at << ": gradient slices";
      expect_reference(*o, ref, at + " packed reduce-scatter");
    }
  }
}

TEST(BucketPool, ReusesFreedBlocksOfTheSameSizeUntilTrimmed) {
  dp::BucketPool pool;
  void* first = nullptr;
  {
    at::Tensor a = pool.empty(1000, at::kFloat);
    first = a.data_ptr();
    a.fill_(1);
    EXPECT_EQ(pool.mapped_bytes(), 4000);
  }
  EXPECT_EQ(pool.kept_bytes(), 4000);
  at::Tensor b = pool.empty(1000, at::kFloat);
  EXPECT_EQ(b.data_ptr(), first);  // the same block again
  at::Tensor c = pool.empty(10, at::kDouble);  // another size: a new block
  EXPECT_EQ(pool.mapped_bytes(), 4080);
  EXPECT_EQ(pool.kept_bytes(), 0);
  c = at::Tensor();
  pool.trim();
  EXPECT_EQ(pool.mapped_bytes(), 4000);
  EXPECT_EQ(pool.kept_bytes(), 0);
}

TEST(BucketPool, UnmapsAKeptBlockNoRequestReusesSoon) {
  dp::BucketPool pool;
  pool.empty(1000, at::kFloat);  // freed at once: kept
  EXPECT_EQ(pool.kept_bytes(), 4000);
  for (uint64_t i = 0; i < dp::BucketPool::kReuseWithin; ++i) pool.empty(10, at::kFloat);
  EXPECT_EQ(pool.mapped_bytes(), 4040) << "kept through kReuseWithin allocations";
  pool.empty(10, at::kFloat);
  EXPECT_EQ(pool.mapped_bytes(), 40) << "then unmapped";
  EXPECT_EQ(pool.kept_bytes(), 40);
}

// SMP_RANKS_PER_NODE for the inits made while it lives.
struct FakedNodes {
  explicit FakedNodes(int ranks_per_node) {
    setenv("SMP_RANKS_PER_NODE", std::to_string(ranks_per_node).c_str(), 1);
  }
  ~FakedNodes() { unsetenv("SMP_RANKS_PER_NODE"); }
};

TEST(SdpHierarchicalAllgather, TwoLevelsEqualTheFlatGather) {
  if (comm::world_size() != 4) GTEST_SKIP() << "needs 4 ranks (two faked nodes of 2)";
  const auto ref = reference_run(adam(), kSteps);
  const Outcome flat = run(4, "\"sdp_hierarchical_allgather\": false");
  EXPECT_EQ(flat.gathers_within_node, 0);
  FakedNodes nodes(2);
  const Outcome two = run(4, "");
  ASSERT_NE(context().groups().sdp_node(), nullptr);
  EXPECT_EQ(context().groups().sdp_node()->size(), 2);
  EXPECT_EQ(context().groups().sdp_across()->size(), 2);
  EXPECT_EQ(context().groups().sdp_across()->rank(), context().groups().sdp_node()->world_ranks()[0] / 2);
  EXPECT_GT(two.gathers_within_node, 0);
  EXPECT_EQ(context().groups().sdp_across()->counters().get("all_gather").calls, two.gathers_within_node);
  expect_identical(two, flat, "hierarchical vs flat");
  expect_reference(two, ref, "hierarchical");
  // Without the key: flat again, on the same faked nodes.
  const Outcome off = run(4, "\"sdp_hierarchical_allgather\": false");
  EXPECT_EQ(off.gathers_within_node, 0);
  expect_identical(off, flat, "faked nodes, the key off");
}

TEST(SdpHierarchicalAllgather, OneNodeOrOneRankPerNodeGathersFlat) {
  reinit(sdp_json(2, ""));
  EXPECT_EQ(context().groups().sdp_node(), nullptr) << "one node";
  FakedNodes nodes(1);  // every rank its own node: nothing to gather within a node
  reinit(sdp_json(2, ""));
  EXPECT_EQ(context().groups().sdp_node(), nullptr) << "one rank per node";
  if (comm::world_size() == 4) {
    FakedNodes pairs(2);  // sdp=2 within one faked node
    reinit(sdp_json(2, ""));
    EXPECT_EQ(context().groups().sdp_node(), nullptr) << "a sharding group inside one node";
  }
}

TEST(SdpHierarchicalAllgather, BadRanksPerNodeIsRefused) {
  FakedNodes nodes(0);
  try {
    reinit(sdp_json(2, ""));
    FAIL() << "SMP_RANKS_PER_NODE=0 accepted";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("SMP_RANKS_PER_NODE"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace smp
