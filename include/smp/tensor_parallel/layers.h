// Megatron-style parallel layers: column- and row-parallel linear, vocab-parallel embedding,
// and a vocab-parallel cross-entropy that never materialises the full logits on one rank.
//
// Every layer is a libtorch module holding this rank's shards (built by slicing the full,
// tp-independent initialisation: init.h) and implements ShardedModule, so
// module_layer and data parallelism tell shards (reduced over RDP_GROUP) from replicated
// parameters (reduced over DP_GROUP). Shapes use the whole (global) sizes; each layer checks
// that the split dim divides by the group size and throws smp::ConfigError naming both.
// Forward and backward are collective over the layer's TP group.
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>

#include <map>
#include <memory>
#include <string>

#include "smp/layer/layer.h"
#include "smp/tensor_parallel/group.h"
#include "smp/tensor_parallel/init.h"

namespace smp::tp {

// Base of every module here: parameters registered with the dim they are a slice of.
class TpModule : public torch::nn::Module, public ShardedModule {
 public:
  explicit TpModule(TpGroup group) : group_(group) {}
  const TpGroup& tp_group() const { return group_; }
  ShardSpec tp_shard(const std::string& name) const override;
  // The dim of the full parameter `name` (this module's own) that is split over the group;
  // -1 when every rank holds all of it.
  int64_t tp_shard_dim(const std::string& name) const { return tp_shard(name).dim; }

 protected:
  // Registers this rank's slice of `full` along `dim` (-1: replicated) as parameter `name`.
  // With `padded` > full.size(dim), `full` is first extended with zero rows along `dim` to
  // `padded` (a vocabulary's padding: padded_vocab_size); the whole tensor stays `full`.
  at::Tensor register_sharded(const std::string& name, const at::Tensor& full, int64_t dim,
                              int64_t padded = 0);
  // Registers `shard` itself, a slice along `dim` of some full tensor of `whole` rows there
  // (0: shard rows times tp; fewer: the rest is padding).
  at::Tensor register_shard(const std::string& name, const at::Tensor& shard, int64_t dim,
                            int64_t whole = 0);

 private:
  TpGroup group_;
  std::map<std::string, ShardSpec> shards_;
};

// Every parameter of `root`, by its recursive name, with its shard dim (-1: replicated, and
// for parameters of modules that are not TpModules).
std::map<std::string, int64_t> tp_shard_dims(const torch::nn::Module& root);

struct LinearOptions {
  bool bias = true;
  Init init;
  // Sequence parallelism: inputs (column) / outputs (row) are this rank's slice of the
  // sequence dim `sequence_dim`, gathered / reduce-scattered at the boundary.
  bool sequence_parallel = false;
  int64_t sequence_dim = 1;
  // Column: `stack` projections of out_features each share one matmul (3 for Q, K, V; 2 for
  // SwiGLU's gate and up); the weight is (stack, out, in), split along out (dim 1).
  int64_t stack = 1;
  bool gather_output = false;     // column: all-gather the output's last dim
  // Column: out_features is a vocabulary (an LM head): padded with zero rows to
  // padded_vocab_size(out_features, tp), so it need not divide by tp; the whole weight (and a
  // gathered output) keeps out_features rows. Not with stack > 1.
  bool pad_vocab = false;
  bool input_is_parallel = true;  // row: the input is already split along its last dim
  bool skip_bias_add = false;     // row: forward leaves the bias to the caller (bias())
};

// y = x W^T + b with W (out, in) split along out: this rank computes out/tp outputs.
// Without sequence parallelism the input is replicated and enters through copy_to_tp.
class ColumnParallelLinear : public TpModule {
 public:
  ColumnParallelLinear(int64_t in_features, int64_t out_features, TpGroup group,
                       LinearOptions options = {});
  // x: (..., in) -> (..., stack * out / tp), or (..., out) with gather_output.
  at::Tensor forward(const at::Tensor& x);
  at::Tensor weight, bias;  // (out/tp, in) or (stack, out/tp, in); (out/tp) or (stack, out/tp)

 private:
  int64_t in_features_, out_features_;
  LinearOptions options_;
};

// y = x W^T + b with W (out, in) split along in: each rank's partial product is summed by
// reduce_from_tp (or reduce-scattered along the sequence with sequence parallelism).
class RowParallelLinear : public TpModule {
 public:
  RowParallelLinear(int64_t in_features, int64_t out_features, TpGroup group,
                    LinearOptions options = {});
  // x: (..., in / tp) (or (..., in) when !input_is_parallel) -> (..., out), the bias added
  // unless skip_bias_add.
  at::Tensor forward(const at::Tensor& x);
  at::Tensor weight, bias;  // (out, in/tp); (out), replicated

 private:
  LinearOptions options_;
};

struct EmbeddingOptions {
  Init init = Init::normal(1.0);   // torch.nn.Embedding's N(0, 1)
  bool sequence_parallel = false;  // output reduce-scattered along dim 1 instead of all-reduced
};

// Embedding with the vocabulary split across the group (rows [r*V_pad/tp, (r+1)*V_pad/tp) on
// rank r), V_pad = padded_vocab_size(V, tp) (group.h): the weight is drawn for the V real rows
// (as at any tp), then extended with zero rows, which no id looks up and whose gradient stays 0.
class VocabParallelEmbedding : public TpModule {
 public:
  VocabParallelEmbedding(int64_t num_embeddings, int64_t embedding_dim, TpGroup group,
                         EmbeddingOptions options = {});
  // ids: (B, S) int64 -> (B, S, H) (or (B, S/tp, H) with sequence parallelism).
  at::Tensor forward(const at::Tensor& ids);
  int64_t vocab_size() const { return vocab_size_; }     // as given
  int64_t padded_vocab_size() const { return padded_; }  // padded_vocab_size(V, tp)
  int64_t vocab_start() const;                           // this rank's first row
  at::Tensor weight;                                     // (V_pad / tp, H)

 private:
  int64_t vocab_size_, padded_;
  EmbeddingOptions options_;
};

// Cross-entropy over a vocabulary split across the group: logits (..., V_pad/tp) are this
// rank's columns [rank*V_pad/tp, ...); columns >= vocab_size (padding) never count and get a
// zero gradient. Returns the per-token loss with the labels' shape (fp32; fp64 for fp64
// logits), the same on every rank; labels < 0 (-100, say) give 0. Forward is two all-reduces
// of one value per token (max, then sum-exp and target logit together); backward communicates
// nothing. The tokens go through in chunks of `chunk_tokens` (0: as many as keep a chunk's fp32
// scratch near 64 MB), reading the logits in their own dtype (bf16/fp16/fp32) and accumulating
// in fp32: no full-size fp32 tensor is made; forward saves only the logits (no copy) and one
// log-sum-exp per token; backward recomputes chunk by chunk into the one logits-sized gradient
// (in the logits' dtype). With `logits_consumed` the caller promises that nothing reads the
// logits after this loss's backward (a head's GEMM keeps its inputs, not its output): the
// gradient is then written over the logits, and no logits-sized tensor is made at all (a
// second backward through the graph fails on autograd's version counter).
// Labels are not range-checked here (on a device that would be a wait every microbatch):
// check them with check_labels on the host, before they are copied to the device, once a batch
// (smp-train's data path, smp.nn's LM head); a label >= vocab_size is no rank's class, its
// loss the log-sum-exp. labels must hold one label a token (ConfigError otherwise).
at::Tensor vocab_parallel_cross_entropy(const at::Tensor& logits, const at::Tensor& labels,
                                        int64_t vocab_size, const TpGroup& group,
                                        int64_t chunk_tokens = 0, bool logits_consumed = false);

// Throws smp::ConfigError naming the label and vocab_size for a label >= vocab_size (negative
// labels are ignored ones). `labels` must be on the host (it reads them there: no device wait).
void check_labels(const at::Tensor& labels, int64_t vocab_size);

}  // namespace smp::tp
