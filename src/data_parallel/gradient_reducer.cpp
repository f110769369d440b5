// GradientReducer: flat buffers, AccumulateGrad hooks, bucketed all-reduce / reduce-scatter
// (see gradient_reducer.h).
#include "smp/data_parallel/gradient_reducer.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>

#include <algorithm>
#include <chrono>
#include <functional>
#include <set>

#include "smp/core/error.h"

namespace smp::dp {
namespace {

using torch::autograd::variable_list;

// Calls back when a parameter's AccumulateGrad node has run.
class ReadyHook : public torch::autograd::FunctionPostHook {
 public:
  explicit ReadyHook(std::function<void()> fn) : fn_(std::move(fn)) {}
  variable_list operator()(const variable_list& outputs, const variable_list&) override {
    fn_();
    return outputs;
  }

 private:
  std::function<void()> fn_;
};

// The dtype the config asks for, else the parameters' own (which must agree).
at::ScalarType choose_dtype(const Config& cfg, const std::vector<ReducedParam>& params) {
  if (cfg.fp16) return at::kHalf;
  if (cfg.bf16) return at::kBFloat16;
  if (params.empty()) return at::kFloat;
  const at::ScalarType dtype = params[0].tensor.scalar_type();
  for (const ReducedParam& p : params) {
    if (p.tensor.scalar_type() != dtype || !at::isFloatingType(dtype)) {
      throw ConfigError("data parallelism: parameter \"" + p.name + "\" is " +
                        std::string(c10::toString(p.tensor.scalar_type())) + " but \"" +
                        params[0].name + "\" is " + c10::toString(dtype) +
                        "; allowed: one floating dtype for all trainable parameters");
    }
  }
  return dtype;
}

// Trainable parameters, each tensor once.
std::vector<ReducedParam> unique_trainable(std::vector<ReducedParam> params) {
  std::vector<ReducedParam> out;
  std::set<const void*> seen;
  for (ReducedParam& p : params) {
    if (!p.tensor.requires_grad()) continue;
    if (!seen.insert(p.tensor.unsafeGetTensorImpl()).second) continue;
    out.push_back(std::move(p));
  }
  return out;
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// fp32 gradients for 16-bit parameters (accumulated and reduced in fp32), else the parameters'.
at::ScalarType gradient_dtype(at::ScalarType param_dtype) {
  return param_dtype == at::kHalf || param_dtype == at::kBFloat16 ? at::kFloat : param_dtype;
}

FlatLayout make_layout(const ParallelContext& context, const std::vector<ReducedParam>& params,
                       const ReducerOptions& options, at::ScalarType grad_dtype, bool sharded) {
  std::vector<LayoutParam> sizes;
  for (const ReducedParam& p : params) {
    sizes.push_back({p.tensor.numel(), p.tp_sharded ? ReduceGroup::kRdp : ReduceGroup::kDp, p.layer});
  }
  LayoutOptions lo;
  lo.bucket_cap_bytes =
      std::max<int64_t>(1, static_cast<int64_t>(options.bucket_cap_mb * (1 << 20)));
  lo.element_size = static_cast<int64_t>(c10::elementSize(grad_dtype));
  lo.shard = sharded;
  lo.dp_size = context.dp_size();
  lo.rdp_size = context.rdp_size();
  if (context.sdp_degree() > 1) {  // shards within the sharding group, one bucket per layer
    lo.dp_size = lo.rdp_size = context.sdp_degree();
    lo.bucket_per_unit = true;
  }
  return FlatLayout(sizes, lo);
}

}  // namespace

std::vector<at::Tensor> cast_floating(const std::vector<at::Tensor>& values, at::ScalarType dtype) {
  std::vector<at::Tensor> out;
  for (const at::Tensor& t : values) {
    out.push_back(t.defined() && at::isFloatingType(t.scalar_type()) && t.scalar_type() != dtype
                      ? t.to(dtype)
                      : t);
  }
  return out;
}

namespace {

// Sharded data parallelism's communicators; its two levels with sdp_hierarchical_allgather.
ShardingGroups sharding_groups(const ParallelContext& context) {
  ShardingGroups groups;
  groups.group = &context.sdp_group();
  groups.replicas = &context.sdp_replica_group();
  groups.tp = &context.group(CommGroup::TP_GROUP);
  groups.dp = &context.group(CommGroup::DP_GROUP);
  groups.rdp = &context.group(CommGroup::RDP_GROUP);
  if (context.config().sdp_hierarchical_allgather) {
    groups.node = context.groups().sdp_node();
    groups.across = context.groups().sdp_across();
  }
  return groups;
}

ShardingOptions sharding_options(const Config& cfg, at::ScalarType grad_dtype) {
  ShardingOptions options;
  options.persistence_threshold = cfg.sdp_param_persistence_threshold;
  options.max_live_parameters = cfg.sdp_max_live_parameters;
  options.reduce_bucket_size = cfg.sdp_reduce_bucket_size;
  options.grad_dtype = grad_dtype;
  return options;
}

}  // namespace

GradientReducer::GradientReducer(const ParallelContext& context, std::vector<ReducedParam> params,
                                 const ReducerOptions& options)
    : context_(context), params_(unique_trainable(std::move(params))), options_(options) {
  const Config& cfg = context.config();
  if (!(options.bucket_cap_mb > 0)) {
    throw ConfigError("bucket_cap_mb: got " + std::to_string(options.bucket_cap_mb) +
                      "; allowed: > 0");
  }
  const bool sdp = cfg.sharded_data_parallel_degree > 1;  // (with ddp: Config::validate)
  if (options.delayed != nullptr && !sdp) {
    throw ConfigError("config key \"delayed_parameter_initialization\": got true; it builds each "
                      "layer already sharded and needs \"sharded_data_parallel_degree\" > 1");
  }
  dtype_ = choose_dtype(cfg, params_);
  grad_dtype_ = gradient_dtype(dtype_);
  accumulations_.assign(params_.size(), 1);
  sharded_ = cfg.shard_optimizer_state || sdp;
  communicates_ = cfg.ddp && context.dp_size() > 1;
  overlaps_ = communicates_ && options_.overlapping;
  layout_ = make_layout(context, params_, options, grad_dtype_, sharded_);
  if (sdp) {
    std::vector<at::Tensor> tensors;
    for (const ReducedParam& p : params_) tensors.push_back(p.tensor);
    if (options.delayed == nullptr && dtype_ != params_.at(0).tensor.scalar_type()) {
      for (at::Tensor& t : tensors) t.set_data(t.detach().to(dtype_));
    }
    shards_ = std::make_unique<ParameterShards>(layout_, std::move(tensors), sharding_groups(context),
                                                sharding_options(cfg, grad_dtype_), options.delayed);
    store_ = std::make_unique<ShardedStore>(context, *shards_);
  } else {
    adopt_parameters();
    if (cfg.ddp) broadcast_parameters();
    if (sharded_) {
      store_ = std::make_unique<Zero1Store>(context, layout_, flat_params_, shard_grads_);
    } else {
      store_ = std::make_unique<ReplicatedStore>(context, flat_params_, flat_grads_);
    }
  }
  index_stages();
  // The hooks start buckets during backward, feed sharded data parallelism, and move 16-bit
  // gradients into their fp32 slots.
  if (overlaps_ || shards_ || widened()) install_hooks();
}

// Parameters (and any gradients they hold) become views of the flat buffers; 16-bit gradients
// are added into their fp32 slots instead.
void GradientReducer::adopt_parameters() {
  const at::Device device = params_.empty() ? at::Device(at::kCPU) : params_[0].tensor.device();
  const auto opts = at::TensorOptions().dtype(dtype_).device(device);
  flat_params_ = at::zeros({layout_.flat_numel()}, opts);
  flat_grads_ = at::zeros({layout_.flat_numel()}, opts.dtype(grad_dtype_));
  if (sharded_) shard_grads_ = at::zeros({layout_.local_numel()}, opts.dtype(grad_dtype_));
  for (size_t i = 0; i < params_.size(); ++i) {
    at::Tensor& p = params_[i].tensor;
    const Slot& s = layout_.slot(static_cast<int>(i));
    at::Tensor view = flat_params_.narrow(0, s.offset, s.numel).view(p.sizes());
    view.copy_(p.detach());
    const at::Tensor grad = p.grad();
    p.set_data(view);
    at::Tensor grad_view = flat_grads_.narrow(0, s.offset, s.numel).view(p.sizes());
    if (grad.defined()) grad_view.copy_(grad);
    p.mutable_grad() = grad.defined() && !widened() ? grad_view : at::Tensor();
  }
}

// Replicas start equal: each bucket from rank 0 of its group.
void GradientReducer::broadcast_parameters() {
  std::vector<comm::Work> works;
  for (const Bucket& b : layout_.buckets()) {
    comm::Communicator& c = communicator(b.group);
    if (c.size() == 1) continue;
    at::Tensor range = flat_params_.narrow(0, b.offset, b.padded_numel);
    works.push_back(c.broadcast(range, 0));
  }
  for (comm::Work& w : works) w.wait();
}

// Local stages in order, each parameter's stage index, each group's buckets in launch order.
void GradientReducer::index_stages() {
  for (const ReducedParam& p : params_) {
    if (std::find(stages_.begin(), stages_.end(), p.stage) == stages_.end())
      stages_.push_back(p.stage);
  }
  std::sort(stages_.begin(), stages_.end());
  for (const ReducedParam& p : params_) {
    stage_index_.push_back(
        static_cast<int>(std::find(stages_.begin(), stages_.end(), p.stage) - stages_.begin()));
  }
  order_.resize(2);
  for (size_t b = 0; b < layout_.buckets().size(); ++b) {
    order_[static_cast<int>(layout_.buckets()[b].group)].push_back(static_cast<int>(b));
  }
}

// A post hook on each parameter's AccumulateGrad node (as PyTorch's C++ DDP reducer does); the
// nodes are kept alive so that every graph uses them.
void GradientReducer::install_hooks() {
  for (size_t i = 0; i < params_.size(); ++i) {
    std::shared_ptr<torch::autograd::Node> acc =
        torch::autograd::impl::grad_accumulator(params_[i].tensor);
    const int index = static_cast<int>(i);
    hook_keys_.push_back(
        acc->add_post_hook(std::make_unique<ReadyHook>([this, index] { on_grad_ready(index); })));
    accumulators_.push_back(std::move(acc));
  }
}

GradientReducer::~GradientReducer() { remove_hooks(); }

void GradientReducer::remove_hooks() {
  for (size_t i = 0; i < accumulators_.size(); ++i) {
    accumulators_[i]->del_post_hook(hook_keys_[i]);
  }
  accumulators_.clear();
  hook_keys_.clear();
}

int GradientReducer::rank_in(ReduceGroup group) const { return communicator(group).rank(); }

bool GradientReducer::writes_state(int bucket) const {
  const Bucket& b = layout_.buckets().at(bucket);
  if (shards_) {  // one sharding group writes; replicated parameters' slices on tp rank 0 only
    return shards_->replicas().rank() == 0 && (b.group == ReduceGroup::kRdp || context_.tp_rank() == 0);
  }
  return b.num_shards > 1 || rank_in(b.group) == 0;
}

comm::Communicator& GradientReducer::communicator(ReduceGroup group) const {
  if (shards_) return shards_->group();
  return context_.group(group == ReduceGroup::kDp ? CommGroup::DP_GROUP : CommGroup::RDP_GROUP);
}

void GradientReducer::begin_step(int num_microbatches, bool reduce) {
  num_microbatches_ = num_microbatches;
  in_step_ = true;
  reducing_ = reduce || shards_ != nullptr;
  backwards_seen_.assign(stages_.size(), 0);
  armed_.assign(stages_.size(), 0);
  ready_.assign(params_.size(), 0);
  accumulated_.assign(params_.size(), 0);
  pending_.clear();
  for (size_t b = 0; b < layout_.buckets().size(); ++b) {
    const int params = static_cast<int>(layout_.buckets()[b].params.size());
    pending_.push_back(params + (b < held_.size() && held_[b] ? 1 : 0));  // a held one never hits 0
  }
  next_[0] = next_[1] = 0;
  works_.clear();
  stats_ = ReducerStats{};
  stats_.buckets = static_cast<int>(layout_.buckets().size());
}

void GradientReducer::before_weight_backward(int stage) {
  if (!in_step_) return;
  const auto it = std::find(stages_.begin(), stages_.end(), stage);
  if (it == stages_.end()) return;  // a stage without trainable parameters
  if (shards_) {
    shards_->begin_backward(accumulations_);
    return;
  }
  const size_t s = it - stages_.begin();
  if (++backwards_seen_[s] == num_microbatches_) armed_[s] = 1;
}

void GradientReducer::set_accumulations(int param, int count) {
  accumulations_.at(param) = count;
}

void GradientReducer::on_grad_ready(int param) {
  if (!in_step_) return;
  if (shards_) {
    shards_->on_grad_ready(param);
    return;
  }
  if (widened()) add_into_slot(param);
  if (!overlaps_ || !reducing_ || !armed_[stage_index_[param]] || ready_[param]) return;
  if (++accumulated_[param] < accumulations_[param]) return;  // more parts to come
  ready_[param] = 1;
  copy_into_slot(param);
  const int bucket = layout_.slot(param).bucket;
  if (--pending_[bucket] == 0) launch_ready();
  poll();
}

// The parameter's gradient into its slot, unless backward accumulated it there already (a
// 16-bit gradient is there already: add_into_slot).
void GradientReducer::copy_into_slot(int param) {
  if (widened()) return;
  const at::Tensor& p = params_[param].tensor;
  const Slot& s = layout_.slot(param);
  at::Tensor slot = flat_grads_.narrow(0, s.offset, s.numel);
  const at::Tensor& grad = p.grad();
  if (!grad.defined()) {
    slot.zero_();  // unused this step: contributes zero, as in DDP
  } else if (grad.data_ptr() != slot.data_ptr() || grad.numel() != s.numel) {
    slot.view(p.sizes()).copy_(grad);
  }
}

// A part of a 16-bit gradient landed (one microbatch's, or one of a tied tensor's uses): it is
// added into the fp32 slot and released, so the next part starts afresh and the sum over
// microbatches is an fp32 one (Megatron's main_grad).
void GradientReducer::add_into_slot(int param) {
  at::Tensor& p = params_[param].tensor;
  if (!p.grad().defined()) return;
  const Slot& s = layout_.slot(param);
  flat_grads_.narrow(0, s.offset, s.numel).add_(p.grad().reshape(-1));
  p.mutable_grad() = at::Tensor();
}

void GradientReducer::launch_ready() {
  for (int g = 0; g < 2; ++g) {
    const std::vector<int>& order = order_[g];
    while (next_[g] < static_cast<int>(order.size()) && pending_[order[next_[g]]] == 0) {
      launch(order[next_[g]++]);
      ++stats_.launched_during_backward;
    }
  }
}

void GradientReducer::launch(int b) {
  const Bucket& bucket = layout_.buckets()[b];
  at::Tensor range = flat_grads_.narrow(0, bucket.offset, bucket.padded_numel);
  if (!sharded_) {
    if (communicates_)
      works_.push_back(communicator(bucket.group).all_reduce(range, comm::ReduceOp::kAvg));
    return;
  }
  at::Tensor out = shard_grads_.narrow(0, layout_.local_base(b), bucket.shard_numel());
  if (bucket.num_shards == 1) {
    out.copy_(range);
  } else {
    works_.push_back(communicator(bucket.group).reduce_scatter(out, range, comm::ReduceOp::kAvg));
  }
}

void GradientReducer::poll() {
  for (comm::Work& w : works_) w.is_completed();
}

void GradientReducer::finish() {
  if (!in_step_) return;
  if (shards_) {
    const auto start = std::chrono::steady_clock::now();
    shards_->finish();
    stats_.finish_wait_s = seconds_since(start);
  } else {
    finish_buckets();
  }
  in_step_ = false;
  ++steps_finished_;
}

void GradientReducer::finish_buckets() {
  for (size_t i = 0; i < params_.size(); ++i) {
    if (!ready_[i]) {
      ready_[i] = 1;
      copy_into_slot(static_cast<int>(i));
    }
  }
  if (reducing_) {
    if (finish_hook_) finish_hook_();
    // The rest, in bucket order per group (the same order on every rank).
    for (int g = 0; g < 2; ++g) {
      for (; next_[g] < static_cast<int>(order_[g].size()); ++next_[g]) launch(order_[g][next_[g]]);
    }
    const auto start = std::chrono::steady_clock::now();
    for (comm::Work& w : works_) w.wait();
    stats_.finish_wait_s = seconds_since(start);
    works_.clear();
  }
  for (size_t i = 0; i < params_.size() && !widened(); ++i) {
    at::Tensor& p = params_[i].tensor;
    const Slot& s = layout_.slot(static_cast<int>(i));
    if (!p.grad().defined() ||
        p.grad().data_ptr() != flat_grads_.narrow(0, s.offset, s.numel).data_ptr()) {
      p.mutable_grad() = flat_grads_.narrow(0, s.offset, s.numel).view(p.sizes());
    }
  }
}

void GradientReducer::hold_until_finish(const std::vector<int>& params, std::function<void()> hook) {
  held_.assign(layout_.buckets().size(), 0);
  for (int p : params) held_[layout_.slot(p).bucket] = 1;
  finish_hook_ = std::move(hook);
}

at::Tensor GradientReducer::grad_slot(int param) const {
  const Slot& s = layout_.slot(param);
  return flat_grads_.narrow(0, s.offset, s.numel).view(params_[param].tensor.sizes());
}

void GradientReducer::zero_grad() {
  if (shards_) {
    shards_->zero_grad();
    return;
  }
  // Zeroes the flat buffer and leaves every fp32 .grad a view of its slot: the next backward
  // accumulates straight into place (no fresh allocation, no copy into the slot). A 16-bit
  // .grad cannot be a view of an fp32 slot: it is dropped, and add_into_slot moves each one in.
  flat_grads_.zero_();
  for (size_t i = 0; i < params_.size(); ++i) {
    at::Tensor& p = params_[i].tensor;
    if (widened()) {
      p.mutable_grad() = at::Tensor();
      continue;
    }
    const Slot& s = layout_.slot(static_cast<int>(i));
    const at::Tensor slot = flat_grads_.narrow(0, s.offset, s.numel);
    if (!p.grad().defined() || p.grad().data_ptr() != slot.data_ptr()) {
      p.mutable_grad() = slot.view(p.sizes());
    }
  }
}

}  // namespace smp::dp
