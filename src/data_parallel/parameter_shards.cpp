// ParameterShards: per-bucket storage that is filled and freed, per-microbatch reduce-scatter
// (see parameter_shards.h).
#include "smp/data_parallel/parameter_shards.h"

#include <ATen/ATen.h>
#include <c10/core/StorageImpl.h>

#include <algorithm>
#include <utility>

#include "smp/core/error.h"

namespace smp::dp {
namespace {

// The storage behind `t` gets zero bytes; every view of it keeps its shape and offset.
void free_storage(const at::Tensor& t) {
  c10::StorageImpl* storage = t.storage().unsafeGetStorageImpl();
  storage->set_data_ptr_noswap(at::DataPtr(nullptr, t.device()));
  storage->set_nbytes(0);
}

// Fresh memory (uninitialised) of `t`'s whole size behind the same storage: from `pool` on the
// host, if given.
void allocate_storage(const at::Tensor& t, BucketPool* pool = nullptr) {
  c10::StorageImpl* storage = t.storage().unsafeGetStorageImpl();
  const size_t bytes = static_cast<size_t>(t.numel()) * t.element_size();
  storage->set_data_ptr_noswap(pool != nullptr && t.is_cpu() ? pool->allocate(bytes)
                                                             : storage->allocator()->allocate(bytes));
  storage->set_nbytes(bytes);
}

}  // namespace

void DelayedSlices::take(int layer, const std::vector<at::Tensor>& params,
                         const std::vector<bool>& tp_sharded) {
  // The layer's buckets as the reducer's FlatLayout will make them (one per reduce group).
  std::vector<at::Tensor> trainable;
  std::vector<LayoutParam> sizes;
  for (size_t i = 0; i < params.size(); ++i) {
    if (!params[i].requires_grad()) continue;
    trainable.push_back(params[i]);
    sizes.push_back({params[i].numel(), tp_sharded[i] ? ReduceGroup::kRdp : ReduceGroup::kDp, layer});
  }
  LayoutOptions options;
  options.shard = true;
  options.dp_size = options.rdp_size = s_;
  options.bucket_per_unit = true;
  const FlatLayout layout(sizes, options);
  for (const Bucket& bucket : layout.buckets()) {
    std::vector<at::Tensor> flat;
    for (int i : bucket.params) flat.push_back(trainable[i].detach().reshape(-1));
    const at::Tensor whole = at::constant_pad_nd(at::cat(flat), {0, bucket.padded_numel - bucket.numel});
    slices_[{layer, static_cast<int>(bucket.group)}] =
        whole.narrow(0, rank_ * bucket.shard_numel(), bucket.shard_numel()).clone();
  }
  for (const at::Tensor& p : params) free_storage(p);
}

void DelayedSlices::take(const Layer& layer) {
  std::vector<at::Tensor> own;
  std::vector<bool> sharded;
  for (size_t j = 0; j < layer.parameters.size(); ++j) {
    if (!seen_.insert(layer.parameters[j].unsafeGetTensorImpl()).second) continue;
    own.push_back(layer.parameters[j]);
    sharded.push_back(j < layer.tp_shards.size() && layer.tp_shards[j].sharded());
  }
  take(layers_taken_++, own, sharded);
}

at::Tensor DelayedSlices::slice(int layer, ReduceGroup group) const {
  auto it = slices_.find({layer, static_cast<int>(group)});
  return it == slices_.end() ? at::Tensor() : it->second;
}

void DelayedSlices::to(at::Device device) {
  for (auto& [key, t] : slices_) t = t.to(device);
}

ParameterShards::ParameterShards(const FlatLayout& layout, std::vector<at::Tensor> params,
                                 const ShardingGroups& groups, const ShardingOptions& options,
                                 const DelayedSlices* delayed)
    : layout_(layout), params_(std::move(params)), groups_(groups),
      max_live_(options.max_live_parameters) {
  SMP_CHECK((groups_.node == nullptr) == (groups_.across == nullptr));
  at::TensorOptions opts = params_.empty() ? at::TensorOptions().dtype(at::kFloat)
                                           : params_[0].options().requires_grad(false);
  if (delayed != nullptr && !layout_.buckets().empty()) {
    const Bucket& first = layout_.buckets()[0];
    const at::Tensor some = delayed->slice(first.unit, first.group);
    SMP_CHECK(some.defined());
    opts = opts.device(some.device());
  }
  const std::vector<Bucket>& buckets = layout_.buckets();
  shard_ = at::zeros({layout_.local_numel()}, opts);
  grads_ = at::empty({layout_.local_numel()}, opts.dtype(options.grad_dtype));
  free_storage(grads_);  // allocated (as zeros) when first used
  // Bucket by bucket, so that a rank never holds the model twice: the parameters move into the
  // bucket (their old storage goes), the bucket comes from rank 0, this rank keeps its slice.
  for (size_t b = 0; b < buckets.size(); ++b) {
    SMP_CHECK(buckets[b].num_shards == group().size());
    buckets_.push_back(delayed != nullptr ? at::empty({buckets[b].padded_numel}, opts)
                                          : at::zeros({buckets[b].padded_numel}, opts));
    persistent_.push_back(buckets[b].numel < options.persistence_threshold ? 1 : 0);
    whole_.push_back(1);
    if (!persistent_[b]) live_ += buckets[b].padded_numel;
    for (int i : buckets[b].params) {
      at::Tensor& p = params_[i];
      const Slot& s = layout_.slot(i);
      at::Tensor view = buckets_[b].narrow(0, s.offset - buckets[b].offset, s.numel).view(p.sizes());
      if (delayed == nullptr) view.copy_(p.detach());
      p.set_data(view);
      p.mutable_grad() = at::Tensor();
    }
    const int64_t n = buckets[b].shard_numel();
    at::Tensor mine = shard_of(static_cast<int>(b));
    if (delayed != nullptr) {
      const at::Tensor slice = delayed->slice(buckets[b].unit, buckets[b].group);
      if (!slice.defined() || slice.numel() != n) {
        throw Error("delayed_parameter_initialization: no slice of " + std::to_string(n) +
                    " elements for layer " + std::to_string(buckets[b].unit) +
                    " (was every layer handed to DelayedSlices::take as it was built?)");
      }
      mine.copy_(slice);
      drop(static_cast<int>(b));  // (the bucket was never filled)
      if (persistent_[b]) gather({static_cast<int>(b)});
      continue;
    }
    comm::Communicator& from = buckets[b].group == ReduceGroup::kDp ? *groups_.dp : *groups_.rdp;
    if (from.size() > 1) from.broadcast(buckets_[b], 0).wait();
    mine.copy_(mine_in_whole(static_cast<int>(b)));
    release({static_cast<int>(b)});
  }
  peak_live_ = live_;
  make_packs(options.reduce_bucket_size);
}

void ParameterShards::gather(const std::vector<int>& buckets) {
  for (int b : buckets) {
    if (!whole_[b]) start_gather(b);
  }
  for (int b : buckets) finish_gather(b);
}

bool ParameterShards::prefetch(const std::vector<int>& buckets) {
  int64_t extra = 0;
  for (int b : buckets) extra += whole_[b] || persistent_[b] ? 0 : layout_.buckets()[b].padded_numel;
  if (extra == 0 || live_ + extra > max_live_) return false;
  for (int b : buckets) {
    if (!whole_[b]) start_gather(b);
  }
  ++prefetches_;
  return true;
}

// Fills bucket b's storage by an all-gather it does not wait for (flat, or the first level).
void ParameterShards::start_gather(int b) {
  allocate_storage(buckets_[b], &pool_);
  whole_[b] = 1;
  if (!persistent_[b]) live_ += layout_.buckets()[b].padded_numel;
  peak_live_ = std::max(peak_live_, live_);
  Gathering g;
  if (groups_.node != nullptr) {
    g.node_block = pool_.empty(shard_of(b).numel() * groups_.node->size(), shard_.options());
    g.work = groups_.node->all_gather(g.node_block, shard_of(b));
  } else {
    g.work = group().all_gather(buckets_[b], shard_of(b));
  }
  gathering_[b] = std::move(g);
}

// Waits for bucket b's all-gather, if one is in flight (hierarchical: and runs the second level,
// the node blocks across nodes, in the sharding group's order).
void ParameterShards::finish_gather(int b) {
  auto it = gathering_.find(b);
  if (it == gathering_.end()) return;
  it->second.work.wait();
  if (it->second.node_block.defined()) {
    groups_.across->all_gather(buckets_[b], it->second.node_block).wait();
  }
  gathering_.erase(it);
}

// Frees bucket b (after its all-gather, if one is in flight).
void ParameterShards::drop(int b) {
  finish_gather(b);
  free_storage(buckets_[b]);
  whole_[b] = 0;
  if (!persistent_[b]) live_ -= layout_.buckets()[b].padded_numel;
}

at::Tensor ParameterShards::shard_of(int bucket) const {
  return shard_.narrow(0, layout_.local_base(bucket), layout_.buckets()[bucket].shard_numel());
}

// This rank's part of whole bucket b.
at::Tensor ParameterShards::mine_in_whole(int bucket) const {
  const int64_t n = layout_.buckets()[bucket].shard_numel();
  return buckets_[bucket].narrow(0, group().rank() * n, n);
}

void ParameterShards::release(const std::vector<int>& buckets) {
  for (int b : buckets) {
    if (whole_[b] && !persistent_[b]) drop(b);
  }
}

void ParameterShards::gather_all() {
  std::vector<int> all(buckets_.size());
  for (size_t b = 0; b < all.size(); ++b) all[b] = static_cast<int>(b);
  gather(all);
}

void ParameterShards::release_all(bool take_values) {
  for (size_t b = 0; b < buckets_.size(); ++b) {
    if (!whole_[b]) continue;
    finish_gather(static_cast<int>(b));
    if (take_values) shard_of(static_cast<int>(b)).copy_(mine_in_whole(static_cast<int>(b)));
    release({static_cast<int>(b)});
  }
}

void ParameterShards::after_update() {
  // Whole buckets hold the old values: freed, and the persistent ones gathered again.
  std::vector<int> persistent;
  for (size_t b = 0; b < buckets_.size(); ++b) {
    if (!whole_[b]) continue;
    drop(static_cast<int>(b));
    if (persistent_[b]) persistent.push_back(static_cast<int>(b));
  }
  pool_.trim();  // what the step kept for reuse goes back to the system
  gather(persistent);
}

int64_t ParameterShards::resident_bytes() const {
  int64_t bytes = static_cast<int64_t>(shard_.nbytes());
  for (const at::Tensor& t : buckets_) bytes += static_cast<int64_t>(t.storage().nbytes());
  return bytes;
}

std::vector<Segment> ParameterShards::owned_segments() const {
  return layout_.owned_segments(group().rank(), group().rank());
}

int64_t ParameterShards::persistent_bytes() const {
  int64_t bytes = 0;
  for (size_t b = 0; b < buckets_.size(); ++b) {
    if (persistent_[b]) bytes += buckets_[b].numel() * buckets_[b].element_size();
  }
  return bytes;
}

// Packs of consecutive buckets, each of at most `reduce_bucket_size` elements (a larger bucket
// alone): reduce-scattered together, their slices are consecutive in grads().
void ParameterShards::make_packs(int64_t reduce_bucket_size) {
  int64_t size = 0;
  for (size_t b = 0; b < buckets_.size(); ++b) {
    const Bucket& bucket = layout_.buckets()[b];
    if (b == 0 || size + bucket.padded_numel > reduce_bucket_size) {
      pack_start_.push_back(static_cast<int>(b));
      size = 0;
    } else {
      SMP_CHECK(layout_.local_base(static_cast<int>(b)) ==
                layout_.local_base(static_cast<int>(b) - 1) + layout_.buckets()[b - 1].shard_numel());
    }
    size += bucket.padded_numel;
    pack_of_.push_back(static_cast<int>(pack_start_.size()) - 1);
    if (pack_numel_.size() < pack_start_.size()) pack_numel_.push_back(0);
    pack_numel_.back() += bucket.shard_numel();
  }
}

// One past the last bucket of pack p.
int ParameterShards::pack_end(int p) const {
  return p + 1 < static_cast<int>(pack_start_.size()) ? pack_start_[p + 1] : static_cast<int>(buckets_.size());
}

// What the last backward left incomplete (parameters it did not reach) goes out now, in pack
// order: every rank reaches the same parameters, so the collectives line up.
void ParameterShards::reduce_incomplete() {
  for (size_t p = 0; p < pack_landed_.size(); ++p) {
    if (pack_landed_[p] > 0) reduce(static_cast<int>(p));
  }
}

void ParameterShards::begin_backward(const std::vector<int>& accumulations) {
  reduce_incomplete();
  needed_.assign(buckets_.size(), 0);
  landed_.assign(buckets_.size(), 0);
  pack_needed_.assign(pack_start_.size(), 0);
  pack_landed_.assign(pack_start_.size(), 0);
  packs_.assign(pack_start_.size(), at::Tensor());
  for (size_t i = 0; i < params_.size(); ++i) {
    const int b = layout_.slot(static_cast<int>(i)).bucket;
    needed_[b] += accumulations[i];
    pack_needed_[pack_of_[b]] += accumulations[i];
  }
}

// The gradient that landed is added into its bucket's pack (in the gradients' dtype: fp32 for
// 16-bit parameters) and dropped; a complete bucket is freed, a complete pack reduce-scattered.
void ParameterShards::on_grad_ready(int param) {
  if (needed_.empty()) return;  // outside a training step's backward
  const int b = layout_.slot(param).bucket;
  at::Tensor& p = params_[param];
  if (p.grad().defined()) {
    add_to_pack(param, p.grad().reshape(-1));
    p.mutable_grad() = at::Tensor();
  }
  if (++landed_[b] == needed_[b]) release({b});
  if (++pack_landed_[pack_of_[b]] == pack_needed_[pack_of_[b]]) reduce(pack_of_[b]);
  poll(false);
}

// Adds parameter `param`'s gradient (flat) into its pack, where the reduce-scatter sends it:
// element i of bucket b goes to row i / n (n: b's slice), at b's place in the row. A
// parameter crossing slice boundaries is added piece by piece. A new pack waits for the
// reduce-scatter in flight (on a GPU, its stream does), so one pack is held at a time.
void ParameterShards::add_to_pack(int param, const at::Tensor& grad) {
  const Slot& slot = layout_.slot(param);
  const Bucket& bucket = layout_.buckets()[slot.bucket];
  const int p = pack_of_[slot.bucket];
  if (!packs_[p].defined()) {
    poll(true);  // the pack reduced before is done with first: its storage serves this one
    packs_[p] = pool_.empty(group().size() * pack_numel_[p], grads_.options()).zero_();
  }
  const at::Tensor rows = packs_[p].view({group().size(), pack_numel_[p]});
  const int64_t n = bucket.shard_numel();
  const int64_t column = layout_.local_base(slot.bucket) - layout_.local_base(pack_start_[p]);
  for (int64_t done = 0; done < slot.numel;) {
    const int64_t i = slot.offset - bucket.offset + done;
    const int64_t len = std::min(slot.numel - done, n - i % n);
    rows[i / n].narrow(0, column + i % n, len).add_(grad.narrow(0, done, len));
    done += len;
  }
}

// Starts the reduce-scatter of pack p (zero where no gradient landed), once the one in flight
// is done: each rank receives its slices of the pack's buckets, one after another.
void ParameterShards::reduce(int p) {
  poll(true);
  for (int b = pack_start_[p]; b < pack_end(p); ++b) landed_[b] = 0;
  at::Tensor input = std::exchange(packs_[p], at::Tensor());
  if (!input.defined()) input = pool_.empty(group().size() * pack_numel_[p], grads_.options()).zero_();
  at::Tensor out = pool_.empty(pack_numel_[p], grads_.options());
  comm::Work work = group().reduce_scatter(out, input, comm::ReduceOp::kAvg);
  in_flight_.push_back({pack_start_[p], std::move(input), std::move(out), std::move(work)});
  pack_landed_[p] = 0;
}

// Adds finished reductions to grads(), in order; with `wait`, all of them.
void ParameterShards::poll(bool wait) {
  size_t done = 0;
  for (; done < in_flight_.size(); ++done) {
    InFlight& f = in_flight_[done];
    if (wait) {
      f.work.wait();
    } else if (!f.work.is_completed()) {
      break;
    }
    ensure_grads();
    grads_.narrow(0, layout_.local_base(f.bucket), f.out.numel()).add_(f.out);
  }
  in_flight_.erase(in_flight_.begin(), in_flight_.begin() + static_cast<std::ptrdiff_t>(done));
}

void ParameterShards::finish() {
  // A prefetch nothing used (a recomputed segment's last layer's) completes before the
  // optimizer writes the slices it reads.
  while (!gathering_.empty()) finish_gather(gathering_.begin()->first);
  reduce_incomplete();
  poll(true);
  pool_.trim();  // no gather or pack until the next step: the optimizer runs without them
  needed_.clear();
  landed_.clear();
  pack_needed_.clear();
  pack_landed_.clear();
  ensure_grads();
  if (replicas().size() > 1) replicas().all_reduce(grads_, comm::ReduceOp::kAvg).wait();
  if (groups_.tp->size() == 1) return;
  std::vector<comm::Work> works;
  for (size_t b = 0; b < buckets_.size(); ++b) {
    const Bucket& bucket = layout_.buckets()[b];
    if (bucket.group != ReduceGroup::kDp) continue;
    at::Tensor slice = grads_.narrow(0, layout_.local_base(static_cast<int>(b)), bucket.shard_numel());
    works.push_back(groups_.tp->all_reduce(slice, comm::ReduceOp::kAvg));
  }
  for (comm::Work& w : works) w.wait();
}

void ParameterShards::zero_grad() { free_storage(grads_); }

void ParameterShards::ensure_grads() const {
  if (grads_.storage().nbytes() > 0 || grads_.numel() == 0) return;
  allocate_storage(grads_);
  grads_.zero_();
}

const at::Tensor& ParameterShards::grads() const {
  ensure_grads();
  return grads_;
}

}  // namespace smp::dp
