// ParameterShards: the parameters and gradients of sharded data parallelism (SMP's
// "sharded_data_parallel_degree", after MiCS: ZeRO-3 inside a sharding group).
//
// The data-parallel ranks form sharding groups of s consecutive ranks (s being
// sharded_data_parallel_degree); the groups are replicas of one another. Each layer's
// parameters are one bucket (FlatLayout::bucket_per_unit), cut into s slices, and rank r of a
// sharding group keeps slice r of every bucket: shard(), the parameters at rest, which the
// optimizer updates. Then:
//   - gather(buckets) makes whole buckets right before a layer's forward and, from a hook on the
//     layer's outputs, right before its backward; prefetch(buckets) starts the next layer's
//     all-gathers (forward: the next layer, backward: the one before) without waiting, while
//     the buckets gathered and not freed stay within sdp_max_live_parameters elements with
//     them (the layer computed now is always gathered, whatever the bound); release(buckets)
//     frees them after the forward, and a bucket is freed again once all its parameters have
//     their gradients of that microbatch. Freeing gives the bucket's storage zero bytes while
//     the parameters stay views of it, so the graphs that saved them see the values again once
//     it is refilled (what PyTorch FSDP does with storage resizing);
//   - with the sharding group's two levels (ShardingGroups::node and ::across, from
//     sdp_hierarchical_allgather over several nodes) an all-gather is two: within the node,
//     then across nodes (a prefetch starts the first; the second starts when the bucket is
//     needed);
//   - a bucket with fewer elements than the persistence threshold (SMP's
//     sdp_param_persistence_threshold, applied per layer) is never freed and is all-gathered
//     after each optimizer step instead (it does not count as live);
//   - gradients: each gradient that lands is added into its bucket's pack and the parameter's
//     .grad dropped; consecutive buckets make reduce packs of at most sdp_reduce_bucket_size
//     elements (a bucket larger than that alone), each summed in place in the order the
//     reduce-scatter sends it (rank r's slices of its buckets together: no copy to send), and
//     once a pack's gradients of a microbatch are all in, it is reduce-scattered (average) over
//     the sharding group into grads() in one collective, which sums over microbatches (packs and
//     grads() are fp32 for fp16/bf16 parameters); a new pack waits for the reduce-scatter
//     in flight, so a rank holds one pack at a time;
//     finish() averages grads() over the replicas (and the slices of
//     TP-replicated parameters over the tensor-parallel group);
//     zero_grad() frees grads(). No rank holds a whole gradient buffer, only the packs in
//     flight (up to sdp_reduce_bucket_size elements of them).
// Collectives go over the sharding group in the same order on every rank: every rank of it
// runs the same layers in the same order, and what is prefetched depends only on that order.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <set>
#include <utility>
#include <vector>

#include "smp/comm/communicator.h"
#include "smp/data_parallel/bucket_pool.h"
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
  comm::Communicator* node = nullptr;      // hierarchical all-gather: the sharding group's ranks
  comm::Communicator* across = nullptr;    // on this node, and at this place on the others
                                           // (ProcessGroups::sdp_node); both null: flat
};

// How ParameterShards gathers and reduces: SMP's sdp_* keys.
struct ShardingOptions {
  int64_t persistence_threshold = 1000000;   // sdp_param_persistence_threshold (elements)
  int64_t max_live_parameters = 1000000000;  // sdp_max_live_parameters (elements)
  int64_t reduce_bucket_size = 500000000;    // sdp_reduce_bucket_size (elements)
  at::ScalarType grad_dtype = at::kFloat;    // grads()' dtype (fp32 for 16-bit parameters)
};

class ParameterShards {
 public:
  // `params[i]` lives at layout.slot(i); each bucket's num_shards must be the sharding group's
  // size. Makes the parameters views into per-bucket storage, broadcasts each bucket from rank
  // 0 of its DP_GROUP or RDP_GROUP (replicas start equal), keeps this rank's slices and frees
  // what is not persistent. Collective over those groups.
  // With `delayed`, the parameters' storage is already freed and each bucket's slice comes
  // from it instead (no broadcast: every rank built the same model from the same seed).
  ParameterShards(const FlatLayout& layout, std::vector<at::Tensor> params,
                  const ShardingGroups& groups, const ShardingOptions& options,
                  const DelayedSlices* delayed = nullptr);

  // --- parameters ---------------------------------------------------------------------------
  // Makes the buckets whole: waits for those prefetched, all-gathers the others. Blocks.
  void gather(const std::vector<int>& buckets);
  // Starts the all-gathers of the buckets not whole and returns at once, if the live elements
  // stay within sdp_max_live_parameters with them; otherwise starts none. Returns whether it
  // started any.
  bool prefetch(const std::vector<int>& buckets);
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
  // Live elements: those of the non-persistent buckets whole or being gathered, now and at
  // most since the last reset_peak(); and how many prefetches started.
  int64_t live_elements() const { return live_; }
  int64_t peak_live_elements() const { return peak_live_; }
  void reset_peak() { peak_live_ = live_; }
  int64_t prefetches() const { return prefetches_; }
  const BucketPool& pool() const { return pool_; }
  // Reduce packs: the first bucket of each, in bucket order.
  const std::vector<int>& pack_starts() const { return pack_start_; }

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
  void start_gather(int bucket);
  void finish_gather(int bucket);
  void drop(int bucket);
  void make_packs(int64_t reduce_bucket_size);
  int pack_end(int pack) const;
  void add_to_pack(int param, const at::Tensor& grad);
  void reduce(int pack);
  void reduce_incomplete();
  void ensure_grads() const;
  void poll(bool wait);

  const FlatLayout& layout_;
  std::vector<at::Tensor> params_;
  ShardingGroups groups_;
  int64_t max_live_;
  BucketPool pool_;  // host memory of buckets and packs, trimmed after each update
  std::vector<at::Tensor> buckets_;  // by bucket: whole (padded) storage, zero bytes when freed
  std::vector<char> whole_;
  std::vector<char> persistent_;
  at::Tensor shard_;  // this rank's slice of every bucket, bucket after bucket (local layout)
  at::Tensor grads_;  // the same layout: reduce-scattered gradients
  int64_t live_ = 0;
  int64_t peak_live_ = 0;
  int64_t prefetches_ = 0;
  struct Gathering {
    comm::Work work;
    at::Tensor node_block;  // hierarchical: the node's slices, gathered across nodes next
  };
  std::map<int, Gathering> gathering_;  // by bucket: all-gathers started, not waited for

  std::vector<int> pack_start_;  // by pack: its first bucket
  std::vector<int> pack_of_;     // by bucket: its pack
  std::vector<int> needed_;  // by bucket: accumulations per backward
  std::vector<int> landed_;  // by bucket: this backward's so far
  std::vector<int> pack_needed_;  // the same by pack
  std::vector<int> pack_landed_;
  std::vector<int64_t> pack_numel_;  // by pack: its buckets' slices (what a rank receives)
  // By pack: the sum of what landed, laid out as the reduce-scatter sends it (s rows of
  // pack_numel_: row r holds rank r's slice of each bucket, one after another), or undefined.
  std::vector<at::Tensor> packs_;
  struct InFlight {
    int bucket = 0;  // the pack's first
    at::Tensor packed;  // kept alive until done
    at::Tensor out;
    comm::Work work;
  };
  std::vector<InFlight> in_flight_;
};

}  // namespace smp::dp
