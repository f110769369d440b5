// Vocab-parallel cross-entropy (Megatron's): each rank holds a slice of the vocabulary's
// logits; the log-sum-exp and the target logit are assembled with two all-reduces of one value
// per token, and the gradient (softmax minus one-hot) needs no communication.
//
// Memory: the tokens go through in chunks, each read in the logits' own dtype (bf16, fp16,
// fp32) and upcast chunk by chunk into an fp32 (fp64 for fp64 logits) scratch buffer; no
// full-size fp32 tensor is ever made. Forward keeps the logits themselves (no copy) and one
// log-sum-exp per token; backward recomputes exp(x - lse) per chunk straight into the
// gradient: the logits' own storage when the caller says they are consumed, else one
// logits-sized tensor.
#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <limits>

#include "smp/core/error.h"
#include "smp/tensor_parallel/layers.h"

namespace smp::tp {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The default chunk: as many tokens as keep one chunk's fp32 scratch (tokens x this rank's
// columns x 4 bytes) near 64 MB: 333 tokens at GPT-2's 50257 columns, 1335 at tp=4; at least 1.
constexpr int64_t kChunkScratchBytes = int64_t{64} << 20;

void all_reduce_in_place(at::Tensor& t, comm::ReduceOp op, const TpGroup& group) {
  if (group.size() > 1) group.comm().all_reduce(t, op).wait();
}

// Accumulation dtype: fp32, or fp64 for fp64 logits.
at::ScalarType accumulation_type(at::ScalarType logits) {
  return logits == at::kDouble ? at::kDouble : at::kFloat;
}

int64_t tokens_per_chunk(int64_t chunk_tokens, int64_t columns, at::ScalarType acc) {
  if (chunk_tokens > 0) return chunk_tokens;
  const int64_t row_bytes = std::max<int64_t>(1, columns) * c10::elementSize(acc);
  return std::max<int64_t>(1, kChunkScratchBytes / row_bytes);
}

struct VocabParallelCrossEntropy : torch::autograd::Function<VocabParallelCrossEntropy> {
  // logits: (..., n) this rank's columns [rank * n, (rank + 1) * n); labels: as many as tokens.
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& logits,
                            const at::Tensor& labels, int64_t vocab_size, TpGroup group,
                            int64_t chunk_tokens, bool consumed) {
    const int64_t n = logits.size(-1), start = group.rank() * n;
    // Columns >= vocab_size are padding: never a class, never in the sum.
    const int64_t valid = std::clamp<int64_t>(vocab_size - start, 0, n);
    const at::ScalarType acc = accumulation_type(logits.scalar_type());
    const at::Tensor x = logits.reshape({-1, n});  // a view for contiguous logits
    const int64_t tokens = x.size(0);
    const int64_t rows = tokens_per_chunk(chunk_tokens, valid, acc);

    const at::Tensor flat = labels.reshape(-1);
    const bool here = flat.device() == logits.device() && flat.scalar_type() == at::kLong;
    const at::Tensor label = here ? flat : flat.to(logits.device(), at::kLong);
    const at::Tensor ignored = label < 0;
    const at::Tensor local = label - start;
    const at::Tensor mine = (local >= 0).logical_and(local < valid);  // excludes ignored
    const at::Tensor index = local.masked_fill(mine.logical_not(), 0);

    const auto opts = x.options().dtype(acc);
    at::Tensor max = at::full({tokens}, -std::numeric_limits<double>::infinity(), opts);
    at::Tensor stats = at::zeros({2, tokens}, opts);  // sum-exp, target logit: one all-reduce
    at::Tensor sum_exp = stats[0], target = stats[1];
    if (valid > 0) {
      for (int64_t r0 = 0; r0 < tokens; r0 += rows) {
        const int64_t m = std::min(rows, tokens - r0);
        const at::Tensor chunk = x.narrow(0, r0, m).narrow(1, 0, valid);
        // The only chunk-sized buffer: the chunk upcast, then exp(x - local max) in place.
        at::Tensor e = chunk.to(acc, /*non_blocking=*/false, /*copy=*/true);
        at::Tensor chunk_max = max.narrow(0, r0, m);
        at::amax_out(chunk_max, e, 1);
        // A row of -inf would give exp(-inf - -inf) = nan: shift it by 0 instead (sum 0).
        const at::Tensor shift = chunk_max.masked_fill(chunk_max.isneginf(), 0.0);
        e.sub_(shift.unsqueeze(1)).exp_();
        at::Tensor chunk_sum = sum_exp.narrow(0, r0, m);
        at::sum_out(chunk_sum, e, 1);
        const at::Tensor picked = chunk.gather(1, index.narrow(0, r0, m).unsqueeze(1));
        target.narrow(0, r0, m).copy_(picked.squeeze(1));
      }
    }
    // Each rank summed exp(x - its own max); rescale to the group's max.
    const at::Tensor own_shift = max.masked_fill(max.isneginf(), 0.0);
    all_reduce_in_place(max, comm::ReduceOp::kMax, group);
    sum_exp.mul_((own_shift - max).exp_());
    target.sub_(max).masked_fill_(mine.logical_not(), 0.0);
    all_reduce_in_place(stats, comm::ReduceOp::kSum, group);

    const at::Tensor log_sum_exp = sum_exp.log();
    at::Tensor loss = (log_sum_exp - target).masked_fill_(ignored, 0.0);
    ctx->save_for_backward({logits, log_sum_exp.add_(max), index, mine, ignored});
    ctx->saved_data["valid"] = valid;
    ctx->saved_data["rows"] = rows;
    ctx->saved_data["consumed"] = consumed;
    return loss.view(labels.sizes());
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& logits = saved[0];
    const at::Tensor& lse = saved[1];  // per token, the group's log-sum-exp
    const at::Tensor& index = saved[2];
    const at::Tensor& mine = saved[3];
    const at::Tensor& ignored = saved[4];
    const int64_t valid = ctx->saved_data["valid"].toInt();
    const int64_t rows = ctx->saved_data["rows"].toInt();
    const int64_t n = logits.size(-1);
    const at::ScalarType acc = lse.scalar_type();
    const bool in_place = logits.scalar_type() == acc;  // fp32/fp64: no scratch at all

    const at::Tensor x = logits.reshape({-1, n});
    const int64_t tokens = x.size(0);
    const at::Tensor upstream = grads[0].reshape(-1).to(acc).masked_fill(ignored, 0.0);
    const at::Tensor minus_one_hot = mine.to(acc).neg_().unsqueeze(1);
    // d loss / d logits = (softmax - one_hot(label)) * upstream; 0 for ignored tokens and in
    // the padding columns. Written over the logits when the caller consumed them.
    const bool reuse = ctx->saved_data["consumed"].toBool() && logits.is_contiguous();
    at::Tensor grad = reuse ? logits : at::empty_like(logits, at::MemoryFormat::Contiguous);
    at::Tensor gx = grad.view({-1, n});
    if (valid < n) gx.narrow(1, valid, n - valid).zero_();
    for (int64_t r0 = 0; r0 < tokens && valid > 0; r0 += rows) {
      const int64_t m = std::min(rows, tokens - r0);
      const at::Tensor chunk = x.narrow(0, r0, m).narrow(1, 0, valid);
      at::Tensor out = gx.narrow(0, r0, m).narrow(1, 0, valid);
      // bf16/fp16: upcast into the chunk's scratch first (a mixed-dtype sub_out would make a
      // second, hidden upcast copy on the CPU); fp32/fp64: straight into the gradient.
      at::Tensor p = out;
      if (in_place) {
        at::sub_out(p, chunk, lse.narrow(0, r0, m).unsqueeze(1));
      } else {
        p = chunk.to(acc, /*non_blocking=*/false, /*copy=*/true);
        p.sub_(lse.narrow(0, r0, m).unsqueeze(1));
      }
      p.exp_();
      p.scatter_add_(1, index.narrow(0, r0, m).unsqueeze(1), minus_one_hot.narrow(0, r0, m));
      p.mul_(upstream.narrow(0, r0, m).unsqueeze(1));
      if (!in_place) out.copy_(p);
    }
    return {grad, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

at::Tensor vocab_parallel_cross_entropy(const at::Tensor& logits, const at::Tensor& labels,
                                        int64_t vocab_size, const TpGroup& group,
                                        int64_t chunk_tokens, bool logits_consumed) {
  if (logits.size(-1) * group.size() < vocab_size) {
    throw ConfigError("logits: the last dim (" + std::to_string(logits.size(-1)) + ") times " +
                      "tensor_parallel_degree (" + std::to_string(group.size()) +
                      ") is less than vocab_size (" + std::to_string(vocab_size) + ")");
  }
  const int64_t tokens = logits.size(-1) > 0 ? logits.numel() / logits.size(-1) : 0;
  if (labels.numel() != tokens) {
    throw ConfigError("labels: " + std::to_string(labels.numel()) + " labels for " +
                      std::to_string(tokens) + " tokens of logits; allowed: one label a token");
  }
  if (chunk_tokens < 0) {
    throw ConfigError("chunk_tokens: got " + std::to_string(chunk_tokens) +
                      "; allowed: > 0, or 0 for the default");
  }
  return VocabParallelCrossEntropy::apply(logits, labels, vocab_size, group, chunk_tokens,
                                          logits_consumed);
}

void check_labels(const at::Tensor& labels, int64_t vocab_size) {
  SMP_CHECK(labels.is_cpu());
  if (labels.numel() == 0) return;
  const int64_t top = labels.max().item<int64_t>();
  if (top >= vocab_size) {
    throw ConfigError("labels: got a label " + std::to_string(top) + " but vocab_size is " +
                      std::to_string(vocab_size) + "; allowed: labels in [0, " +
                      std::to_string(vocab_size) + ") or negative (ignored)");
  }
}

}  // namespace smp::tp
