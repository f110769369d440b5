// Column/row-parallel linear and vocab-parallel embedding (see layers.h).
#include "smp/tensor_parallel/layers.h"

#include <ATen/ATen.h>

#include <cstdio>

#include "smp/core/error.h"
#include "smp/comm/launch.h"
#include "smp/tensor_parallel/primitives.h"

namespace smp::tp {

// ---- TpModule --------------------------------------------------------------------------------

ShardSpec TpModule::tp_shard(const std::string& name) const {
  auto it = shards_.find(name);
  return it == shards_.end() ? ShardSpec{} : it->second;
}

void TpModule::set_whole_size(const std::string& name, int64_t size) {
  auto it = shards_.find(name);
  SMP_CHECK(it != shards_.end() && it->second.sharded() && size <= it->second.size);
  it->second.size = size;
}

at::Tensor TpModule::register_sharded(const std::string& name, const at::Tensor& full,
                                      int64_t dim) {
  if (dim >= 0) shards_[name] = {dim, full.size(dim)};
  return register_parameter(name, shard_of(full, dim, group_));
}

at::Tensor TpModule::register_shard(const std::string& name, const at::Tensor& shard, int64_t dim) {
  if (dim >= 0) shards_[name] = {dim, shard.size(dim) * group_.size()};
  return register_parameter(name, shard);
}

namespace {
void collect_dims(const torch::nn::Module& module, const std::string& prefix,
                  std::map<std::string, int64_t>& out) {
  const auto* tp = dynamic_cast<const TpModule*>(&module);
  for (const auto& p : module.named_parameters(/*recurse=*/false)) {
    out[prefix + p.key()] = tp ? tp->tp_shard_dim(p.key()) : -1;
  }
  for (const auto& child : module.named_children()) {
    collect_dims(*child.value(), prefix + child.key() + ".", out);
  }
}
}  // namespace

std::map<std::string, int64_t> tp_shard_dims(const torch::nn::Module& root) {
  std::map<std::string, int64_t> out;
  collect_dims(root, "", out);
  return out;
}

// ---- ColumnParallelLinear --------------------------------------------------------------------

ColumnParallelLinear::ColumnParallelLinear(int64_t in_features, int64_t out_features, TpGroup group,
                                           LinearOptions options)
    : TpModule(group), in_features_(in_features), options_(options) {
  check_divisible("out_features", out_features, group.size());
  SMP_CHECK(options.stack >= 1);
  if (options.stack > 1 && options.gather_output) {
    throw ConfigError("gather_output: got true with stack " + std::to_string(options.stack) +
                      "; allowed: false (stacked projections stay split)");
  }
  // The full weight, drawn identically whatever tp is; stacked projections split along out.
  const bool stacked = options.stack > 1;
  const int64_t dim = stacked ? 1 : 0;
  std::vector<int64_t> w_shape = {out_features, in_features};
  std::vector<int64_t> b_shape = {out_features};
  if (stacked) {
    w_shape.insert(w_shape.begin(), options.stack);
    b_shape.insert(b_shape.begin(), options.stack);
  }
  weight = register_sharded("weight", init_weight(w_shape, in_features, options.init), dim);
  if (options.bias) {
    bias = register_sharded("bias", init_bias(b_shape, in_features, options.init), dim);
  }
}

at::Tensor ColumnParallelLinear::forward(const at::Tensor& x) {
  const TpGroup& g = tp_group();
  // Every rank needs the whole input: gathered along the sequence, or copied in.
  const at::Tensor input = options_.sequence_parallel
                               ? all_gather_sequence(x, g, options_.sequence_dim)
                               : copy_to_tp(x, g);
  const at::Tensor w = options_.stack > 1 ? weight.reshape({-1, in_features_}) : weight;
  const at::Tensor b = bias.defined() && options_.stack > 1 ? bias.reshape(-1) : bias;
  at::Tensor y = at::linear(input, w, b);
  return options_.gather_output ? gather_from_tp(y, g) : y;
}

// ---- RowParallelLinear -----------------------------------------------------------------------

RowParallelLinear::RowParallelLinear(int64_t in_features, int64_t out_features, TpGroup group,
                                     LinearOptions options)
    : TpModule(group), options_(options) {
  check_divisible("in_features", in_features, group.size());
  weight = register_sharded("weight",
                            init_weight({out_features, in_features}, in_features, options.init), 1);
  if (options.bias) {
    bias = register_sharded("bias", init_bias({out_features}, in_features, options.init), -1);
  }
}

at::Tensor RowParallelLinear::forward(const at::Tensor& x) {
  const TpGroup& g = tp_group();
  const at::Tensor input = options_.input_is_parallel ? x : scatter_to_tp(x, g);
  const at::Tensor partial = at::linear(input, weight);
  at::Tensor y = options_.sequence_parallel
                     ? reduce_scatter_sequence(partial, g, options_.sequence_dim)
                     : reduce_from_tp(partial, g);
  if (!bias.defined() || options_.skip_bias_add) return y;
  // Under sequence parallelism each rank adds the bias to its own tokens only: sum the grads.
  return y + (options_.sequence_parallel ? sync_replicated_grads({bias}, g)[0] : bias);
}

// ---- VocabParallelEmbedding ------------------------------------------------------------------

VocabParallelEmbedding::VocabParallelEmbedding(int64_t num_embeddings, int64_t embedding_dim,
                                               TpGroup group, EmbeddingOptions options)
    : TpModule(group),
      vocab_size_(num_embeddings),
      padded_(round_up(num_embeddings, group.size())),
      options_(options) {
  at::Tensor full = init_weight({num_embeddings, embedding_dim}, embedding_dim, options.init);
  if (padded_ != vocab_size_) {
    full = at::cat({full, at::zeros({padded_ - vocab_size_, embedding_dim}, full.options())});
    const bool first = comm::mpi_initialized() ? comm::world_rank() == 0 : group.rank() == 0;
    if (first) {
      std::printf(
          "smp: vocab_size %lld padded to %lld, a multiple of tensor_parallel_degree %d "
          "(%lld zero rows, never predicted)\n",
          static_cast<long long>(vocab_size_), static_cast<long long>(padded_), group.size(),
          static_cast<long long>(padded_ - vocab_size_));
      std::fflush(stdout);
    }
  }
  weight = register_sharded("weight", full, 0);
  set_whole_size("weight", vocab_size_);
}

int64_t VocabParallelEmbedding::vocab_start() const {
  return tp_group().rank() * (padded_ / tp_group().size());
}

at::Tensor VocabParallelEmbedding::forward(const at::Tensor& ids) {
  const TpGroup& g = tp_group();
  at::Tensor rows;
  if (g.size() == 1) {
    rows = at::embedding(weight, ids);
  } else {
    // Ids outside this rank's rows look up row 0 and are zeroed; the sum over ranks is whole.
    const int64_t start = vocab_start(), n = weight.size(0);
    const at::Tensor outside = (ids < start).logical_or(ids >= start + n);
    const at::Tensor local = (ids - start).masked_fill(outside, 0);
    rows = at::embedding(weight, local).masked_fill(outside.unsqueeze(-1), 0.0);
  }
  return options_.sequence_parallel ? reduce_scatter_sequence(rows, g, 1) : reduce_from_tp(rows, g);
}

}  // namespace smp::tp
