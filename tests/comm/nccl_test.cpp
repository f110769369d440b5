// The NCCL device path on one rank (NCCL refuses two ranks on one GPU, so multi-rank device
// runs need a multi-GPU machine). Skipped where there is no GPU or no NCCL in the build.
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include "smp/smp.h"
#include "testing/multi_rank.h"

namespace smp::comm {
namespace {

bool have_gpu() { return at::hasCUDA(); }

using smp::testing::world;  // every rank, without smp::init

TEST(Nccl, CollectivesOnDeviceTensorsMatchClosedForms) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device here";
  const int n = world().size();
  for (auto dtype : {at::kFloat, at::kDouble, at::kBFloat16, at::kHalf, at::kLong}) {
    const auto options = at::TensorOptions().dtype(dtype).device(at::kCUDA);
    const at::Tensor v = at::arange(1001, options.dtype(at::kLong)).remainder(5).add(1).to(dtype);
    at::Tensor sum = v * (world().rank() + 1);
    world().all_reduce(sum).wait();
    EXPECT_TRUE(at::equal(sum.cpu(), (v * (n * (n + 1) / 2)).cpu())) << c10::toString(dtype);
    at::Tensor max = v.clone();
    world().all_reduce(max, ReduceOp::kMax).wait();
    EXPECT_TRUE(at::equal(max.cpu(), v.cpu()));
    at::Tensor gathered = at::empty({n * 1001}, options);
    world().all_gather(gathered, v).wait();
    EXPECT_TRUE(at::equal(gathered.narrow(0, 0, 1001).cpu(), v.cpu()));
    at::Tensor scattered = at::empty({1001}, options);
    world().reduce_scatter(scattered, v.repeat({n})).wait();
    EXPECT_TRUE(at::equal(scattered.cpu(), (v * n).cpu()));
    at::Tensor root = v.clone();
    world().broadcast(root, 0).wait();
    EXPECT_TRUE(at::equal(root.cpu(), v.cpu()));
  }
  at::Tensor strided = at::ones({8, 4}, at::kCUDA).t();
  world().all_reduce(strided, ReduceOp::kAvg).wait();
  EXPECT_TRUE(at::equal(strided.cpu(), at::ones({4, 8})));
}

TEST(Nccl, CountersCountDeviceTraffic) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device here";
  world().reset_counters();
  at::Tensor t = at::ones({256}, at::kCUDA);
  world().all_reduce(t).wait();
  EXPECT_EQ(world().counters().get("all_reduce").bytes, 256 * 4);
}

}  // namespace
}  // namespace smp::comm
