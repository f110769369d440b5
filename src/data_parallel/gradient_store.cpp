// The three forms of GradientStore: replicated, ZeRO-1, sharded data parallelism (see
// gradient_store.h).
#include "smp/data_parallel/gradient_store.h"

#include <vector>

namespace smp::dp {

// ---- replicated ---------------------------------------------------------------------------

ReplicatedStore::ReplicatedStore(const ParallelContext& context, at::Tensor flat_params,
                                 at::Tensor flat_grads)
    : context_(context), flat_params_(std::move(flat_params)), flat_grads_(std::move(flat_grads)) {}

at::Tensor ReplicatedStore::params(int64_t flat, int64_t, int64_t numel) const {
  return flat_params_.narrow(0, flat, numel);
}

at::Tensor ReplicatedStore::grads(int64_t flat, int64_t, int64_t numel) const {
  return flat_grads_.narrow(0, flat, numel);
}

bool ReplicatedStore::counts_in_norm(const Bucket& bucket) const {
  return bucket.group == ReduceGroup::kRdp || context_.tp_rank() == 0;
}

void ReplicatedStore::sum_norm(at::Tensor& sum_sq) const {
  comm::Communicator& mp = context_.group(CommGroup::MP_GROUP);
  if (mp.size() > 1) mp.all_reduce(sum_sq).wait();  // alone: nothing to add (and no wait)
}

// ---- ZeRO-1 -------------------------------------------------------------------------------

Zero1Store::Zero1Store(const ParallelContext& context, const FlatLayout& layout,
                       at::Tensor flat_params, at::Tensor shard_grads)
    : context_(context), layout_(layout), flat_params_(std::move(flat_params)),
      shard_grads_(std::move(shard_grads)) {}

at::Tensor Zero1Store::params(int64_t flat, int64_t, int64_t numel) const {
  return flat_params_.narrow(0, flat, numel);
}

at::Tensor Zero1Store::grads(int64_t, int64_t local, int64_t numel) const {
  return shard_grads_.narrow(0, local, numel);
}

void Zero1Store::sum_norm(at::Tensor& sum_sq) const {
  context_.group(CommGroup::WORLD).all_reduce(sum_sq).wait();
}

void Zero1Store::after_update() {
  // Each bucket's owned slices from every rank of its group.
  std::vector<comm::Work> works;
  for (size_t b = 0; b < layout_.buckets().size(); ++b) {
    const Bucket& bucket = layout_.buckets()[b];
    if (bucket.num_shards == 1) continue;
    comm::Communicator& c =
        context_.group(bucket.group == ReduceGroup::kDp ? CommGroup::DP_GROUP : CommGroup::RDP_GROUP);
    const at::Tensor mine =
        flat_params_.narrow(0, layout_.owned_begin(static_cast<int>(b), c.rank()), bucket.shard_numel())
            .clone();
    at::Tensor out = flat_params_.narrow(0, bucket.offset, bucket.padded_numel);
    works.push_back(c.all_gather(out, mine));
  }
  for (comm::Work& w : works) w.wait();
}

// ---- sharded data parallelism ---------------------------------------------------------------

ShardedStore::ShardedStore(const ParallelContext& context, ParameterShards& shards)
    : context_(context), shards_(shards) {}

at::Tensor ShardedStore::params(int64_t, int64_t local, int64_t numel) const {
  return shards_.shard().narrow(0, local, numel);
}

at::Tensor ShardedStore::grads(int64_t, int64_t local, int64_t numel) const {
  return shards_.grads().narrow(0, local, numel);
}

const at::Tensor& ShardedStore::params_buffer() const { return shards_.shard(); }
const at::Tensor& ShardedStore::grads_buffer() const { return shards_.grads(); }

bool ShardedStore::counts_in_norm(const Bucket& bucket) const {
  return bucket.group == ReduceGroup::kRdp || context_.tp_rank() == 0;
}

void ShardedStore::sum_norm(at::Tensor& sum_sq) const {
  shards_.group().all_reduce(sum_sq).wait();
  context_.group(CommGroup::TP_GROUP).all_reduce(sum_sq).wait();
}

void ShardedStore::after_update() { shards_.after_update(); }

}  // namespace smp::dp
