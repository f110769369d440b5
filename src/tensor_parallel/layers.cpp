// Column/row-parallel linear and vocab-parallel embedding (see layers.h).
#include "smp/tensor_parallel/layers.h"

#include <ATen/ATen.h>

#include <vector>

#include "smp/core/error.h"
#include "smp/tensor_parallel/primitives.h"

namespace smp::tp {

// ---- TpModule --------------------------------------------------------------------------------

ShardSpec TpModule::tp_shard(const std::string& name) const {
  auto it = shards_.find(name);
  return it == shards_.end() ? ShardSpec{} : it->second;
}

at::Tensor TpModule::register_sharded(const std::string& name, const at::Tensor& full,
                                      int64_t dim, int64_t padded) {
  if (dim < 0) return register_parameter(name, shard_of(full, dim, group_));
  shards_[name] = {dim, full.size(dim)};
  at::Tensor whole = full;
  if (padded > full.size(dim)) {  // zero rows past the end of `dim` (pads list the last dim first)
    std::vector<int64_t> pad(2 * (full.dim() - dim), 0);
    pad.back() = padded - full.size(dim);
    whole = at::constant_pad_nd(full, pad);
  }
  return register_parameter(name, shard_of(whole, dim, group_));
}

at::Tensor TpModule::register_shard(const std::string& name, const at::Tensor& shard, int64_t dim,
                                    int64_t whole) {
  if (dim >= 0) {
    const int64_t rows = shard.size(dim) * group_.size();
    SMP_CHECK(whole <= rows);
    shards_[name] = {dim, whole > 0 ? whole : rows};
  }
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
    : TpModule(group), in_features_(in_features), out_features_(out_features), options_(options) {
  if (!options.pad_vocab) check_divisible("out_features", out_features, group.size());
  SMP_CHECK(options.stack >= 1 && !(options.pad_vocab && options.stack > 1));
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
  const int64_t padded = options.pad_vocab ? padded_vocab_size(out_features, group.size()) : 0;
  weight = register_sharded("weight", init_weight(w_shape, in_features, options.init), dim, padded);
  if (options.bias) {
    bias = register_sharded("bias", init_bias(b_shape, in_features, options.init), dim, padded);
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
  if (!options_.gather_output) return y;
  const at::Tensor whole = gather_from_tp(y, g);
  return whole.size(-1) == out_features_ ? whole : whole.narrow(-1, 0, out_features_);
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
      padded_(tp::padded_vocab_size(num_embeddings, group.size())),
      options_(options) {
  weight = register_sharded(
      "weight", init_weight({num_embeddings, embedding_dim}, embedding_dim, options.init), 0, padded_);
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
