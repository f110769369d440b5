// ParameterShards: the parameters and gradients of sharded data parallelism (SMP's
// "sharded_data_parallel_degree", after MiCS: ZeRO-3 inside a sharding group).
//
// The data-parallel ranks form sharding groups of s consecutive ranks (s being
// sharded_data_parallel_degree); the groups are replicas of one another. Each layer's
// parameters are one bucket (FlatLayout::bucket_per_unit), cut into s slices, and rank r of a
// sharding group keeps slice r of every bucket: shard(), the parameters at rest, which the
// optimizer updates. Then:
//   - gather(buckets) all-gathers whole buckets right before a layer's forward and, from a hook
//     on the layer's outputs, right before its backward; release(buckets) frees them after the
//     forward, and a bucket is freed again once all its parameters have their gradients of that
//     microbatch. Freeing gives the bucket's storage zero bytes while the parameters stay views
//     of it, so the graphs that saved them see the values again once it is refilled (what
//     PyTorch FSDP does with storage resizing);
//   - a bucket with fewer elements than the persistence threshold (SMP's
//     sdp_param_persistence_threshold, applied per layer) is never freed and is all-gathered
//     after each optimizer step instead;
//   - gradients: each gradient that lands is added into its bucket's pack and the parameter's
//     .grad dropped; once a bucket's gradients of a microbatch are all in, the pack is
//     reduce-scattered (average) over the sharding group into grads(), which sums over
//     microbatches (packs and grads() are fp32 for fp16/bf16 parameters); finish() averages
//     grads() over the replicas (and the slices of TP-replicated parameters over the
//     tensor-parallel group);
//     zero_grad() frees grads(). No rank holds a whole gradient buffer, only the buckets in
//     flight.
// Collectives go over the sharding group in bucket order, the same on every rank.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <set>
#include <utility>
#include <vector>

#include "smp/comm/communicator.h"
#include "smp/data_parallel/flat_layout.h"
#include "smp/layer/layer.h"

namespace smp::dp {

// SMP's delayed_parameter_initialization: each layer's slices taken right after the layer is
// built, and its parameters' storage freed, so that no rank ever holds the whole model. Keyed by
// (layer index, reduce group): exactly the bucket FlatLayout's bucket_per_unit makes of that
// layer's own parameters.
class DelayedSlices {
 public:
  // `s` is the sharding degree and `rank` this rank's rank in its sharding group.
  DelayedSlices(int s, int rank) : s_(s), rank_(rank) {}
  // Layer `layer` (its index in the model) was just built: its parameters not seen in an earlier
  // layer (a tied weight belongs to its first user), in the layer's order, each with whether it
  // is a tensor-parallel shard. Keeps this rank's slice of each bucket they make and frees their
  // storage (the tensors keep their shapes).
  void take(int layer, const std::vector<at::Tensor>& params, const std::vector<bool>& tp_sharded);
  // The same for the next layer built (models::build_model's on_layer hook): layers numbered in
  // the order they come, each one's own parameters and TP shards read from it.
  void take(const Layer& layer);
  // The slice of the bucket (layer, group), or undefined.
  at::Tensor slice(int layer, ReduceGroup group) const;
  // Moves every slice to `device`.
  void to(at::Device device);

 private:
  int s_;
  int rank_;
  std::map<std::pair<int, int>, at::Tensor> slices_;
  std::set<const void*> seen_;  // the parameters of the layers taken so far
  int layers_taken_ = 0;
};

// The communicators sharded data parallelism uses.
struct ShardingGroups {
  comm::Communicator* group = nullptr;     // the sharding group (SDP_GROUP)
  comm::Communicator* replicas = nullptr;  // the ranks holding the same slices (SDP_REPLICA_GROUP)
  comm::Communicator* tp = nullptr;        // TP_GROUP: replicated parameters' gradients average
                                           // over it too (they average over DP_GROUP = tp x rdp)
  comm::Communicator* dp = nullptr;        // DP_GROUP: where replicated buckets start from rank 0
  comm::Communicator* rdp = nullptr;       // RDP_GROUP: the same for tensor-parallel shards
};

class ParameterShards {
 public:
  // `params[i]` lives at layout.slot(i); each bucket's num_shards must be the sharding group's
  // size. Makes the parameters views into per-bucket storage, broadcasts each bucket from rank
  // 0 of its DP_GROUP or RDP_GROUP (replicas start equal), keeps this rank's slices and frees
  // what is not persistent. Collective over those groups. `grad_dtype`: grads()' dtype, in
  // which the gradients are summed and reduced (fp32 for 16-bit parameters).
  // With `delayed`, the parameters' storage is already freed and each bucket's slice comes
  // from it instead (no broadcast: every rank built the same model from the same seed).
  ParameterShards(const FlatLayout& layout, std::vector<at::Tensor> params,
                  const ShardingGroups& groups, int64_t persistence_threshold,
                  at::ScalarType grad_dtype, const DelayedSlices* delayed = nullptr);

  // --- parameters ---------------------------------------------------------------------------
  // Makes the buckets whole (those not already), one all-gather each. Blocks.
  void gather(const std::vector<int>& buckets);
  // Frees the buckets that are whole and not persistent.
  void release(const std::vector<int>& buckets);
  // Every bucket whole, for code that reads or writes the parameters outside a step
  // (checkpoints). Collective over the sharding group.
  void gather_all();
  // Frees every non-persistent bucket; with `take_values`, this rank's slices are first copied
  // from the parameters (they were written, a checkpoint load say). Not collective.
  void release_all(bool take_values);
  // After the optimizer wrote shard(): persistent buckets are all-gathered again, others freed.
  void after_update();
  const at::Tensor& shard() const { return shard_; }
  bool whole(int bucket) const { return whole_.at(bucket) != 0; }
  bool persistent(int bucket) const { return persistent_.at(bucket) != 0; }
  // Bytes of parameter storage held now: shards plus whole buckets.
  int64_t resident_bytes() const;
  // This rank's slices as runs of parameters (FlatLayout::owned_segments at this rank's place
  // in the sharding group): segment.local_offset indexes shard(). Checkpoints write and read
  // the parameters there, with no bucket made whole.
  std::vector<Segment> owned_segments() const;
  // Bytes of the buckets kept whole between steps (the persistent ones).
  int64_t persistent_bytes() const;

  // --- gradients ----------------------------------------------------------------------------
  // Before each backward: reduces what the last backward left incomplete (missing gradients
  // count as zero) and starts counting again. `accumulations[i]`: how many times one backward
  // accumulates into parameter i (GradientReducer::set_accumulations).
  void begin_backward(const std::vector<int>& accumulations);
  // From parameter `param`'s AccumulateGrad hook.
  void on_grad_ready(int param);
  // Reduces what is left, waits, and averages grads() over the replicas. Blocks.
  void finish();
  // Frees grads() (torch's zero_grad(set_to_none=True), as FSDP): it comes back as zeros when
  // next used, so between steps a rank holds no gradients.
  void zero_grad();
  const at::Tensor& grads() const;
  // Bytes of gradients held now (0 after zero_grad()).
  int64_t grad_bytes() const { return static_cast<int64_t>(grads_.storage().nbytes()); }
  comm::Communicator& group() const { return *groups_.group; }
  comm::Communicator& replicas() const { return *groups_.replicas; }

 private:
  at::Tensor shard_of(int bucket) const;       // this rank's slice of a bucket, in shard()
  at::Tensor mine_in_whole(int bucket) const;  // the same elements in the whole bucket
  void reduce(int bucket);
  void reduce_incomplete();
  void ensure_grads() const;
  void poll(bool wait);

  const FlatLayout& layout_;
  std::vector<at::Tensor> params_;
  ShardingGroups groups_;
  std::vector<at::Tensor> buckets_;  // by bucket: whole (padded) storage, zero bytes when freed
  std::vector<char> whole_;
  std::vector<char> persistent_;
  at::Tensor shard_;  // this rank's slice of every bucket, bucket after bucket (local layout)
  at::Tensor grads_;  // the same layout: reduce-scattered gradients

  std::vector<int> needed_;  // by bucket: accumulations per backward
  std::vector<int> landed_;  // by bucket: this backward's so far
  std::vector<at::Tensor> packs_;  // by bucket: the sum of what landed, whole bucket (or undefined)
  struct InFlight {
    int bucket = 0;
    at::Tensor packed;  // kept alive until done
    at::Tensor out;
    comm::Work work;
  };
  std::vector<InFlight> in_flight_;
};

}  // namespace smp::dp
