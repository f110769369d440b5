// FlatLayout: bucket assignment, offsets and owned slices (see flat_layout.h).
#include "smp/data_parallel/flat_layout.h"

#include <algorithm>
#include <string>

#include "smp/core/error.h"

namespace smp::dp {

const char* to_string(ReduceGroup group) {
  return group == ReduceGroup::kDp ? "DP_GROUP" : "RDP_GROUP";
}

FlatLayout::FlatLayout(std::vector<LayoutParam> params, const LayoutOptions& options)
    : params_(std::move(params)) {
  if (options.bucket_cap_bytes < 1) {
    throw ConfigError("bucket_cap_mb: got a cap of " + std::to_string(options.bucket_cap_bytes) +
                      " bytes; allowed: > 0");
  }
  if (options.dp_size < 1 || options.rdp_size < 1 || options.element_size < 1) {
    throw ConfigError("FlatLayout: group sizes and element size must be >= 1");
  }
  // Assign parameters to buckets in reverse model order, one open bucket per group.
  slots_.resize(params_.size());
  int open[2] = {-1, -1};
  int made[2] = {0, 0};  // buckets made per group so far
  std::vector<int64_t> bytes;
  std::vector<int64_t> caps;
  for (int i = static_cast<int>(params_.size()) - 1; i >= 0; --i) {
    const LayoutParam& p = params_[i];
    if (p.numel < 0)
      throw ConfigError("FlatLayout: parameter " + std::to_string(i) + " has a negative size");
    const int g = static_cast<int>(p.group);
    if (open[g] >= 0 && options.bucket_per_unit && buckets_[open[g]].unit != p.unit) open[g] = -1;
    if (open[g] < 0) {
      Bucket b;
      b.group = p.group;
      b.unit = p.unit;
      b.num_shards = !options.shard                ? 1
                     : p.group == ReduceGroup::kDp ? options.dp_size
                                                   : options.rdp_size;
      buckets_.push_back(b);
      bytes.push_back(0);
      caps.push_back(made[g]++ == 0
                         ? std::min(options.first_bucket_cap_bytes, options.bucket_cap_bytes)
                         : options.bucket_cap_bytes);
      open[g] = static_cast<int>(buckets_.size()) - 1;
    }
    buckets_[open[g]].params.push_back(i);
    bytes[open[g]] += p.numel * options.element_size;
    if (!options.bucket_per_unit && bytes[open[g]] >= caps[open[g]]) open[g] = -1;
  }
  // Offsets: buckets one after the other, each bucket's parameters in placement order.
  int64_t offset = 0;
  int64_t local = 0;
  for (size_t b = 0; b < buckets_.size(); ++b) {
    Bucket& bucket = buckets_[b];
    bucket.offset = offset;
    for (int i : bucket.params) {
      slots_[i] = {static_cast<int>(b), offset + bucket.numel, params_[i].numel};
      bucket.numel += params_[i].numel;
    }
    const int64_t n = bucket.num_shards;
    bucket.padded_numel = (bucket.numel + n - 1) / n * n;
    offset += bucket.padded_numel;
    local_base_.push_back(local);
    local += bucket.shard_numel();
  }
  flat_numel_ = offset;
  local_numel_ = local;
}

int64_t FlatLayout::owned_begin(int bucket, int rank_in_group) const {
  const Bucket& b = buckets_.at(bucket);
  SMP_CHECK(rank_in_group >= 0 && rank_in_group < b.num_shards);
  return b.offset + rank_in_group * b.shard_numel();
}

std::vector<Segment> FlatLayout::owned_segments(int dp_rank, int rdp_rank) const {
  std::vector<Segment> out;
  for (size_t b = 0; b < buckets_.size(); ++b) {
    const Bucket& bucket = buckets_[b];
    const int r = bucket.num_shards == 1             ? 0
                  : bucket.group == ReduceGroup::kDp ? dp_rank
                                                     : rdp_rank;
    const int64_t lo = owned_begin(static_cast<int>(b), r);
    const int64_t hi = lo + bucket.shard_numel();
    for (int i : bucket.params) {
      const Slot& s = slots_[i];
      const int64_t begin = std::max(lo, s.offset);
      const int64_t end = std::min(hi, s.offset + s.numel);
      if (begin >= end) continue;
      out.push_back({i, static_cast<int>(b), begin - s.offset, begin, local_base_[b] + (begin - lo),
                     end - begin});
    }
  }
  return out;
}

}  // namespace smp::dp
