// Data parallelism against one process (runs on 2 and 4 ranks): every layout dp x pp the world
// allows (virtual stages too), unsharded and ZeRO-1, SGD/Adam/AdamW, 1 and 2 microbatches:
// parameters after 5 steps equal the single-process run on the whole batch within 1e-6
// relative (fp32: only the order of sums differs; Adam divides each gradient by its own
// magnitude, so where a gradient nearly cancels that order noise becomes up to lr-sized: Adam
// runs at its default lr 1e-3), and ZeRO-1 equals unsharded. Communication bytes per step
// equal the formula; buckets start during backward; the clipping norm equals one process's.
#include <gtest/gtest.h>
#include <torch/optim/adam.h>
#include <torch/optim/adamw.h>
#include <torch/optim/sgd.h>

#include <tuple>

#include "harness.h"

namespace smp {
namespace {

using namespace smp::testing;

constexpr double kTol = 1e-6;

struct Named {
  std::string name;
  OptimizerFactory make;
};
std::vector<Named> optimizers() {
  return {
      {"sgd",
       [](std::vector<at::Tensor> p) {
         return std::make_unique<torch::optim::SGD>(
             p, torch::optim::SGDOptions(0.1).momentum(0.9).weight_decay(1e-2));
       }},
      {"adam",
       [](std::vector<at::Tensor> p) {
         return std::make_unique<torch::optim::Adam>(
             p, torch::optim::AdamOptions(1e-3).weight_decay(1e-2));
       }},
      {"adamw",
       [](std::vector<at::Tensor> p) {
         return std::make_unique<torch::optim::AdamW>(
             p, torch::optim::AdamWOptions(1e-3).weight_decay(0.1));
       }},
  };
}

// Partitioned by memory alone (memory_weight 1): a partition by measured time may differ
// between the unsharded and the ZeRO-1 run of a layout on a busy machine, and those two are
// compared parameter by parameter.
std::string layout_json(int pp, int m, bool shard) {
  return "\"ddp\": true, \"memory_weight\": 1.0, \"pipeline_parallel_degree\": " +
         std::to_string(pp) +
         ", \"microbatches\": " + std::to_string(m) +
         ", \"shard_optimizer_state\": " + (shard ? "true" : "false");
}

TEST(DataParallel, EveryLayoutMatchesOneProcessWithTheWholeBatch) {
  const int world = comm::world_size();
  for (const Named& opt : optimizers()) {
    const auto ref = reference_run(opt.make, 5);
    // (pp, m, v): v = 2 puts two virtual stages on each rank (gradients armed per stage).
    for (auto [pp, m, v] : {std::tuple{1, 1, 1}, {1, 2, 1}, {2, 1, 1}, {2, 2, 1}, {2, 2, 2}}) {
      std::map<std::string, at::Tensor> unsharded;
      for (bool shard : {false, true}) {
        reinit(layout_json(pp, m, shard));
        const std::string what = opt.name + " dp=" + std::to_string(world / pp) +
                                 " pp=" + std::to_string(pp) + " m=" + std::to_string(m) +
                                 " v=" + std::to_string(v) + (shard ? " zero1" : "");
        DistributedModelOptions mo;
        mo.bucket_cap_mb = 2e-3;  // ~2 KiB: several buckets
        mo.chunks_per_rank = v;
        SmpRun run = smp_run(opt.make, 5, mo);
        expect_params_close(*run.model, ref, kTol, what);
        // ZeRO-1 against the unsharded run of the same layout, directly.
        if (!shard) {
          for (auto& [name, p] : run.model->local_named_parameters())
            unsharded[name] = p.detach().clone();
        } else {
          expect_params_close(*run.model, unsharded, kTol, what + " vs unsharded");
        }
      }
    }
  }
}

TEST(DataParallel, CommunicationPerStepEqualsTheFormula) {
  const int n = comm::world_size();
  for (bool shard : {false, true}) {
    reinit(layout_json(1, 2, shard));
    DistributedModelOptions mo;
    mo.bucket_cap_mb = 4e-3;  // 4 KiB: the 32x32 weights (4 KiB) each close a bucket
    SmpRun run = smp_run(optimizers()[1].make, 1, mo);  // partitions and broadcasts
    comm::Communicator& dp = process_group(CommGroup::DP_GROUP);
    dp.reset_counters();
    const Batch b = my_slice(whole_batch(7));
    run.opt->zero_grad();
    step(*run.model, {b.x}, {b.y}, mse_loss);
    run.opt->step();

    const dp::FlatLayout& layout = run.model->gradient_reducer().layout();
    int64_t psi = 0;  // bytes of all parameters (fp32)
    for (auto& [name, p] : run.model->local_named_parameters()) psi += p.numel() * 4;
    int64_t padded = 0;
    for (const dp::Bucket& bucket : layout.buckets()) padded += bucket.padded_numel * 4;
    const int64_t buckets = static_cast<int64_t>(layout.buckets().size());
    EXPECT_GE(buckets, 7);  // 8 weight matrices over a 4 KiB cap
    const comm::Counters& c = dp.counters();
    if (!shard) {
      EXPECT_EQ(c.get("all_reduce").calls, buckets);
      EXPECT_EQ(c.get("all_reduce").bytes, psi);  // exactly the gradients, once
      EXPECT_EQ(c.total().bytes, psi);
    } else {
      EXPECT_EQ(c.get("reduce_scatter").calls, buckets);
      EXPECT_EQ(c.get("reduce_scatter").bytes, padded);
      EXPECT_EQ(c.get("all_gather").calls, buckets);
      EXPECT_EQ(c.get("all_gather").bytes, padded / n);
      EXPECT_EQ(c.total().bytes, padded + padded / n);
      EXPECT_LT(padded - psi, 4 * n * buckets);  // padding: under one element per rank per bucket
    }
    // Every bucket started while backward was still running.
    EXPECT_EQ(run.model->gradient_reducer().stats().launched_during_backward, buckets);
  }
  // Without overlap, everything starts after backward.
  reinit(layout_json(1, 1, false));
  DistributedModelOptions mo;
  mo.overlapping_allreduce = false;
  SmpRun run = smp_run(optimizers()[0].make, 2, mo);
  EXPECT_EQ(run.model->gradient_reducer().stats().launched_during_backward, 0);
  expect_params_close(*run.model, reference_run(optimizers()[0].make, 2), kTol, "no overlap");
}

TEST(DataParallel, ClipNormEqualsOneProcess) {
  const int world = comm::world_size();
  RefRecord record;
  const auto ref = reference_run(optimizers()[0].make, 3, 0.2, &record);
  const std::vector<double>& ref_norms = record.norms;
  for (int pp : {1, 2}) {
    for (bool shard : {false, true}) {
      reinit(layout_json(pp, 2, shard));
      SmpRun run = smp_run(optimizers()[0].make, 3, {}, 0.2);
      const std::string what = "dp=" + std::to_string(world / pp) + " pp=" + std::to_string(pp) +
                               (shard ? " zero1" : "");
      ASSERT_EQ(run.norms.size(), ref_norms.size());
      for (size_t i = 0; i < ref_norms.size(); ++i) {
        EXPECT_NEAR(run.norms[i], ref_norms[i], 1e-6 * ref_norms[i]) << what << " step " << i;
      }
      EXPECT_GT(ref_norms[0], 0.2);  // the clip did act
      expect_params_close(*run.model, ref, kTol, what);
    }
  }
}

}  // namespace
}  // namespace smp
