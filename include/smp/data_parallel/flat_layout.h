// FlatLayout: where each parameter lives in one flat buffer, how that buffer splits into
// gradient buckets, and which slice of each bucket a data-parallel rank owns (ZeRO-1).
//
// Pure: sizes in, offsets out; no tensors, no processes. The same layout addresses the flat
// parameter buffer, the flat gradient buffer and (through each rank's owned slices) the
// optimizer's flat state, so a checkpoint can map any element to its parameter by arithmetic.
//
// Parameters are taken in model order and placed in reverse (backward produces the last
// layers' gradients first), each reduce group (DP_GROUP for replicated parameters, RDP_GROUP
// for tensor-parallel shards) filling its own buckets. A bucket closes once it holds at least
// the cap's bytes (a larger parameter gets a bucket of its own); each group's first bucket
// closes at 1 MiB already, so the last layers' reduction starts early (both as in PyTorch
// DDP). A sharded
// bucket is padded to a multiple of its group's size; rank r owns elements
// [r * shard, (r + 1) * shard) of it (Megatron-Core's per-bucket sharding).
#pragma once

#include <cstdint>
#include <vector>

namespace smp::dp {

// The group a parameter's gradient is averaged over (SMP semantics).
enum class ReduceGroup { kDp = 0, kRdp = 1 };
const char* to_string(ReduceGroup group);

struct LayoutParam {
  int64_t numel = 0;
  ReduceGroup group = ReduceGroup::kDp;
  int unit = 0;  // the layer it belongs to (LayoutOptions::bucket_per_unit)
};

struct Bucket {
  ReduceGroup group = ReduceGroup::kDp;
  int64_t offset = 0;        // first element in the flat buffer
  int64_t numel = 0;         // elements of its parameters
  int64_t padded_numel = 0;  // numel rounded up to a multiple of num_shards
  int num_shards = 1;        // ranks it is sharded over (1: not sharded)
  int unit = 0;              // its parameters' unit, when buckets follow units
  std::vector<int> params;   // indices into the layout's parameters, in placement order
  int64_t shard_numel() const { return padded_numel / num_shards; }
};

// Where parameter i lives.
struct Slot {
  int bucket = -1;
  int64_t offset = 0;  // in the flat buffer
  int64_t numel = 0;
};

// A run of the flat buffer owned by one rank: flat elements [flat_offset, +numel) are this
// rank's local elements [local_offset, +numel) and parameter `param`'s elements
// [param_offset, +numel).
struct Segment {
  int param = 0;
  int bucket = 0;
  int64_t param_offset = 0;
  int64_t flat_offset = 0;
  int64_t local_offset = 0;
  int64_t numel = 0;
};

struct LayoutOptions {
  int64_t bucket_cap_bytes = 25ll << 20;     // SMP's bucket_cap_mb = 25
  int64_t first_bucket_cap_bytes = 1 << 20;  // DDP's; min(this, bucket_cap_bytes) applies
  int64_t element_size = 4;                  // bytes per element of the gradient dtype
  bool shard = false;                        // ZeRO-1: shard each bucket over its group
  int dp_size = 1;                           // size of DP_GROUP (tp * rdp)
  int rdp_size = 1;                          // size of RDP_GROUP
  // Sharded data parallelism: one bucket per unit (layer), whatever the caps, so a layer's
  // parameters are gathered and freed together. Units must be ascending in model order.
  bool bucket_per_unit = false;
};

class FlatLayout {
 public:
  FlatLayout() = default;
  // Throws smp::ConfigError for a cap < 1 byte, group sizes < 1 or a negative numel.
  FlatLayout(std::vector<LayoutParam> params, const LayoutOptions& options);

  const std::vector<LayoutParam>& params() const { return params_; }
  const std::vector<Bucket>& buckets() const { return buckets_; }
  const Slot& slot(int param) const { return slots_.at(param); }
  int64_t flat_numel() const { return flat_numel_; }  // padding included

  // Rank `rank_in_group[g]` (its rank inside each bucket's group) owns, per bucket, the local
  // range [local_base(b), + shard_numel) of its local space, laid out bucket after bucket.
  int64_t local_base(int bucket) const { return local_base_.at(bucket); }
  int64_t local_numel() const { return local_numel_; }
  // The owned elements of real parameters (padding left out), in flat order.
  std::vector<Segment> owned_segments(int dp_rank, int rdp_rank) const;
  // First flat element of bucket b owned by the rank with that rank in b's group.
  int64_t owned_begin(int bucket, int rank_in_group) const;

 private:
  std::vector<LayoutParam> params_;
  std::vector<Bucket> buckets_;
  std::vector<Slot> slots_;
  std::vector<int64_t> local_base_;
  int64_t flat_numel_ = 0;
  int64_t local_numel_ = 0;
};

}  // namespace smp::dp
