// FlatLayout without processes: bucket assignment against the cap, reverse placement, one
// bucket sequence per reduce group, padding to the group size, owned slices that tile every
// bucket exactly once across ranks, and sizes 0, 1 and not divisible by the group.
#include "smp/data_parallel/flat_layout.h"

#include <gtest/gtest.h>

#include <numeric>

#include "smp/core/error.h"

namespace smp::dp {
namespace {

LayoutOptions cap_elems(int64_t elems, bool shard = false, int dp = 1, int rdp = 1) {
  LayoutOptions o;
  o.bucket_cap_bytes = elems * 4;
  o.element_size = 4;
  o.shard = shard;
  o.dp_size = dp;
  o.rdp_size = rdp;
  return o;
}

TEST(FlatLayout, BucketsCloseAtTheCapInReverseOrder) {
  // Sizes 3, 5, 2, 7, 1; cap 6 elements. Reverse: 1, 7 | 2, 5 | 3.
  FlatLayout layout({{3}, {5}, {2}, {7}, {1}}, cap_elems(6));
  ASSERT_EQ(layout.buckets().size(), 3u);
  EXPECT_EQ(layout.buckets()[0].params, (std::vector<int>{4, 3}));
  EXPECT_EQ(layout.buckets()[1].params, (std::vector<int>{2, 1}));
  EXPECT_EQ(layout.buckets()[2].params, (std::vector<int>{0}));
  EXPECT_EQ(layout.buckets()[0].numel, 8);
  EXPECT_EQ(layout.buckets()[1].offset, 8);
  EXPECT_EQ(layout.slot(4).offset, 0);
  EXPECT_EQ(layout.slot(3).offset, 1);
  EXPECT_EQ(layout.slot(1).offset, 10);
  EXPECT_EQ(layout.slot(0).offset, 15);
  EXPECT_EQ(layout.flat_numel(), 18);
  EXPECT_EQ(layout.local_numel(), 18);  // unsharded: local == flat
}

TEST(FlatLayout, EachGroupsFirstBucketClosesAtOneMiB) {
  // 1 MiB = 262144 fp32 elements. Reverse: 200000 + 100000 >= 1 MiB closes the first bucket;
  // then the 25 MiB cap holds the rest.
  LayoutOptions o = cap_elems(25 << 18);
  FlatLayout layout({{50000}, {300000}, {100000}, {200000}}, o);
  ASSERT_EQ(layout.buckets().size(), 2u);
  EXPECT_EQ(layout.buckets()[0].params, (std::vector<int>{3, 2}));
  EXPECT_EQ(layout.buckets()[1].params, (std::vector<int>{1, 0}));
  o.first_bucket_cap_bytes = o.bucket_cap_bytes;
  EXPECT_EQ(FlatLayout({{50000}, {300000}, {100000}, {200000}}, o).buckets().size(), 1u);
}

TEST(FlatLayout, ReduceGroupsFillSeparateBuckets) {
  FlatLayout layout({{4, ReduceGroup::kDp},
                     {4, ReduceGroup::kRdp},
                     {4, ReduceGroup::kDp},
                     {4, ReduceGroup::kRdp}},
                    cap_elems(8));
  ASSERT_EQ(layout.buckets().size(), 2u);
  EXPECT_EQ(layout.buckets()[0].group, ReduceGroup::kRdp);
  EXPECT_EQ(layout.buckets()[0].params, (std::vector<int>{3, 1}));
  EXPECT_EQ(layout.buckets()[1].group, ReduceGroup::kDp);
  EXPECT_EQ(layout.buckets()[1].params, (std::vector<int>{2, 0}));
}

TEST(FlatLayout, ShardsTileEveryBucketOnce) {
  for (int n : {1, 2, 3, 4}) {
    for (int64_t cap : {1, 5, 1000}) {
      const std::vector<LayoutParam> params = {{0}, {1}, {7}, {13}, {2}, {1001}};
      FlatLayout layout(params, cap_elems(cap, true, n, n));
      int64_t real = 0;
      for (const Bucket& b : layout.buckets()) {
        EXPECT_EQ(b.padded_numel % n, 0);
        EXPECT_LT(b.padded_numel - b.numel, n);
        real += b.numel;
      }
      EXPECT_EQ(real, 1024);
      // Every element of every parameter is owned by exactly one rank.
      std::vector<std::vector<int>> owners(params.size());
      for (size_t i = 0; i < params.size(); ++i) owners[i].assign(params[i].numel, 0);
      for (int r = 0; r < n; ++r) {
        int64_t local_end = 0;
        for (const Segment& s : layout.owned_segments(r, r)) {
          const Slot& slot = layout.slot(s.param);
          EXPECT_EQ(s.flat_offset, slot.offset + s.param_offset);
          EXPECT_LE(s.local_offset + s.numel, layout.local_numel());
          EXPECT_GE(s.local_offset, local_end);  // local space in flat order
          local_end = s.local_offset + s.numel;
          for (int64_t k = 0; k < s.numel; ++k) owners[s.param][s.param_offset + k]++;
        }
      }
      for (const auto& o : owners) {
        for (int c : o) ASSERT_EQ(c, 1) << "n=" << n << " cap=" << cap;
      }
      EXPECT_EQ(layout.local_numel() * n, layout.flat_numel());
    }
  }
}

TEST(FlatLayout, EmptyAndBadInput) {
  FlatLayout empty({}, cap_elems(4));
  EXPECT_TRUE(empty.buckets().empty());
  EXPECT_EQ(empty.flat_numel(), 0);
  EXPECT_TRUE(empty.owned_segments(0, 0).empty());
  LayoutOptions bad = cap_elems(4);
  bad.bucket_cap_bytes = 0;
  EXPECT_THROW(FlatLayout({{1}}, bad), ConfigError);
  EXPECT_THROW(FlatLayout({{1}}, cap_elems(4, true, 0, 1)), ConfigError);
}

}  // namespace
}  // namespace smp::dp
