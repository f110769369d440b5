// Every collective against its closed form, on 2, 3 and 4 ranks, for every float dtype and
// int64, at sizes 0, 1 and sizes the world does not divide. Values are small integers, so
// every result is exact even in bf16 and fp16: the comparisons use torch::equal.
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include "smp/smp.h"
#include "testing/multi_rank.h"

namespace smp::comm {
namespace {

using smp::testing::world;  // every rank, without smp::init

const std::vector<at::ScalarType> kDtypes = {at::kFloat, at::kDouble, at::kBFloat16, at::kHalf,
                                             at::kLong};
const std::vector<int64_t> kSizes = {0, 1, 7, 1001};

// v_i = i % 5 + 1: values 1..5.
at::Tensor pattern(int64_t n, at::ScalarType dtype) {
  return (at::arange(n, at::kLong).remainder(5) + 1).to(dtype);
}

std::string where(at::ScalarType dtype, int64_t n) {
  return std::string(c10::toString(dtype)) + " n=" + std::to_string(n) + " on rank " +
         std::to_string(world().rank()) + " of " + std::to_string(world().size());
}

TEST(Collectives, AllReduceEveryOpMatchesClosedForm) {
  const int n = world().size();
  const int r = world().rank();
  for (auto dtype : kDtypes) {
    for (int64_t size : kSizes) {
      const at::Tensor v = pattern(size, dtype);
      // rank r contributes (r + 1) * v
      at::Tensor sum = v * (r + 1);
      world().all_reduce(sum, ReduceOp::kSum).wait();
      EXPECT_TRUE(at::equal(sum, v * (n * (n + 1) / 2))) << where(dtype, size);

      at::Tensor max = v * (r + 1);
      world().all_reduce(max, ReduceOp::kMax).wait();
      EXPECT_TRUE(at::equal(max, v * n)) << where(dtype, size);

      at::Tensor min = v * (r + 1);
      world().all_reduce(min, ReduceOp::kMin).wait();
      EXPECT_TRUE(at::equal(min, v)) << where(dtype, size);

      if (dtype == at::kLong) continue;
      at::Tensor avg = v * (r + 1);
      world().all_reduce(avg, ReduceOp::kAvg).wait();
      EXPECT_TRUE(at::equal(avg, v * ((n + 1) / 2.0))) << where(dtype, size);
    }
  }
}

TEST(Collectives, AllReduceOfNonContiguousTensorWritesBack) {
  at::Tensor base = at::arange(12, at::kFloat).reshape({3, 4});
  at::Tensor t = base.t();  // (4, 3), not contiguous
  ASSERT_FALSE(t.is_contiguous());
  world().all_reduce(t).wait();
  EXPECT_TRUE(at::equal(base, at::arange(12, at::kFloat).reshape({3, 4}) * world().size()));
}

TEST(Collectives, AllGatherPutsRankIAtOffsetI) {
  const int n = world().size();
  const int r = world().rank();
  for (auto dtype : kDtypes) {
    for (int64_t size : kSizes) {
      const at::Tensor v = pattern(size, dtype);
      at::Tensor out = at::full({n * size}, -1, dtype);
      world().all_gather(out, v * (r + 1)).wait();
      for (int i = 0; i < n; ++i) {
        EXPECT_TRUE(at::equal(out.narrow(0, i * size, size), v * (i + 1)))
            << where(dtype, size) << " chunk " << i;
      }
    }
  }
}

TEST(Collectives, ReduceScatterGivesRankJTheSumOfSliceJ) {
  const int n = world().size();
  const int r = world().rank();
  for (auto dtype : kDtypes) {
    for (int64_t size : kSizes) {
      const at::Tensor v = pattern(size, dtype);
      // slice j of rank r's input is (r + 1) * (j + 1) * v
      std::vector<at::Tensor> slices;
      for (int j = 0; j < n; ++j) slices.push_back(v * ((r + 1) * (j + 1)));
      const at::Tensor input = at::cat(slices);
      at::Tensor out = at::full({size}, -1, dtype);
      world().reduce_scatter(out, input, ReduceOp::kSum).wait();
      EXPECT_TRUE(at::equal(out, v * ((r + 1) * n * (n + 1) / 2))) << where(dtype, size);
      if (dtype == at::kLong) continue;
      world().reduce_scatter(out, input, ReduceOp::kAvg).wait();
      EXPECT_TRUE(at::equal(out, v * ((r + 1) * (n + 1) / 2.0))) << where(dtype, size);
    }
  }
}

TEST(Collectives, BroadcastFromEveryRoot) {
  const int n = world().size();
  for (auto dtype : kDtypes) {
    for (int64_t size : kSizes) {
      for (int root = 0; root < n; ++root) {
        const at::Tensor v = pattern(size, dtype);
        at::Tensor t = world().rank() == root ? v * (root + 2) : at::zeros({size}, dtype);
        world().broadcast(t, root).wait();
        EXPECT_TRUE(at::equal(t, v * (root + 2))) << where(dtype, size) << " root " << root;
      }
    }
  }
}

TEST(Collectives, SeveralInFlightCompleteInAnyWaitOrder) {
  at::Tensor a = at::ones({100});
  at::Tensor b = at::full({3}, 2.0);
  Work wa = world().all_reduce(a);
  Work wb = world().all_reduce(b);
  wb.wait();
  wa.wait();
  EXPECT_TRUE(at::equal(a, at::full({100}, world().size(), at::kFloat)));
  EXPECT_TRUE(at::equal(b, at::full({3}, 2.0 * world().size(), at::kFloat)));
}

TEST(Collectives, BarrierCompletes) {
  Work work = world().barrier();
  work.wait();
  EXPECT_TRUE(work.is_completed());
}

TEST(Collectives, CountersCountCallsAndPayloadBytes) {
  world().reset_counters();
  at::Tensor t = at::ones({10}, at::kFloat);
  world().all_reduce(t).wait();
  world().all_reduce(t).wait();
  at::Tensor out = at::empty({10 * world().size()}, at::kDouble);
  world().all_gather(out, at::ones({10}, at::kDouble)).wait();
  world().barrier().wait();
  const Counters& c = world().counters();
  EXPECT_EQ(c.get("all_reduce").calls, 2);
  EXPECT_EQ(c.get("all_reduce").bytes, 2 * 10 * 4);
  EXPECT_EQ(c.get("all_gather").calls, 1);
  EXPECT_EQ(c.get("all_gather").bytes, 10 * 8);
  EXPECT_EQ(c.get("barrier").calls, 1);
  EXPECT_EQ(c.total().calls, 4);
  EXPECT_EQ(c.total().bytes, 2 * 10 * 4 + 10 * 8);
}

TEST(Collectives, BadShapesAndOpsAreClearErrors) {
  const int n = world().size();
  at::Tensor out = at::empty({n * 3 + 1});
  try {
    world().all_gather(out, at::ones({3}));
    ADD_FAILURE() << "expected CommError";
  } catch (const CommError& e) {
    EXPECT_NE(std::string(e.what()).find("output has " + std::to_string(n * 3 + 1)),
              std::string::npos)
        << e.what();
  }
  at::Tensor ints = at::ones({2}, at::kLong);
  EXPECT_THROW(world().all_reduce(ints, ReduceOp::kAvg), CommError);
  at::Tensor small = at::empty({2});
  EXPECT_THROW(world().reduce_scatter(small, at::ones({2 * n + 1})), CommError);
  at::Tensor t = at::ones({2});
  EXPECT_THROW(world().broadcast(t, n), CommError);
  at::Tensor f = at::ones({2}, at::kFloat);
  at::Tensor d = at::empty({2 * n}, at::kDouble);
  EXPECT_THROW(world().all_gather(d, f), CommError);
}

}  // namespace
}  // namespace smp::comm
