// Vocab-parallel cross-entropy (Megatron's): each rank holds a slice of the vocabulary's
// logits; the log-sum-exp and the target logit are assembled with two all-reduces of one value
// per token, and the gradient (softmax minus one-hot) needs no communication.
#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>

#include <limits>

#include "smp/core/error.h"
#include "smp/tensor_parallel/layers.h"

namespace smp::tp {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

void all_reduce_in_place(at::Tensor& t, comm::ReduceOp op, const TpGroup& group) {
  if (group.size() > 1) group.comm().all_reduce(t, op).wait();
}

struct VocabParallelCrossEntropy : torch::autograd::Function<VocabParallelCrossEntropy> {
  // logits: (..., n) this rank's columns [rank * n, (rank + 1) * n); labels: (...).
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& logits,
                            const at::Tensor& labels, int64_t vocab_size, TpGroup group) {
    const int64_t n = logits.size(-1), start = group.rank() * n;
    at::Tensor x = logits.to(at::kFloat).contiguous();
    if (start + n > vocab_size) {  // padding columns: never a class
      x = x.clone();
      const int64_t first_pad = std::max<int64_t>(0, vocab_size - start);
      x.narrow(-1, first_pad, n - first_pad).fill_(-std::numeric_limits<float>::infinity());
    }
    at::Tensor max = x.amax(-1).contiguous();
    all_reduce_in_place(max, comm::ReduceOp::kMax, group);
    const at::Tensor shifted = x - max.unsqueeze(-1);
    const at::Tensor exp = shifted.exp();

    const at::Tensor ignored = labels < 0;
    const at::Tensor local = labels - start;
    const at::Tensor mine = (local >= 0).logical_and(local < n).logical_and(ignored.logical_not());
    const at::Tensor index = local.masked_fill(mine.logical_not(), 0).unsqueeze(-1);
    const at::Tensor target =
        shifted.gather(-1, index).squeeze(-1).masked_fill(mine.logical_not(), 0);
    // Sum-exp and target logit travel together.
    at::Tensor stats = at::stack({exp.sum(-1), target}).contiguous();
    all_reduce_in_place(stats, comm::ReduceOp::kSum, group);

    at::Tensor loss = (stats[0].log() - stats[1]).masked_fill(ignored, 0.0);
    ctx->save_for_backward({exp / stats[0].unsqueeze(-1), index, mine, ignored});
    ctx->saved_data["dtype"] = static_cast<int64_t>(logits.scalar_type());
    return loss;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& softmax = saved[0];
    const at::Tensor& index = saved[1];
    const at::Tensor& mine = saved[2];
    const at::Tensor& ignored = saved[3];
    // d loss / d logits = softmax - one_hot(label), zero for ignored tokens.
    at::Tensor g = softmax.scatter_add(-1, index, -mine.to(softmax.scalar_type()).unsqueeze(-1));
    g = g * grads[0].masked_fill(ignored, 0.0).unsqueeze(-1);
    g = g.to(static_cast<at::ScalarType>(ctx->saved_data["dtype"].toInt()));
    return {g, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

at::Tensor vocab_parallel_cross_entropy(const at::Tensor& logits, const at::Tensor& labels,
                                        int64_t vocab_size, const TpGroup& group) {
  if (labels.numel() > 0) {
    const int64_t top = labels.max().item<int64_t>();
    if (top >= vocab_size) {
      throw ConfigError("labels: got a label " + std::to_string(top) + " but vocab_size is " +
                        std::to_string(vocab_size) + "; allowed: labels in [0, " +
                        std::to_string(vocab_size) + ") or negative (ignored)");
    }
  }
  if (logits.size(-1) * group.size() < vocab_size) {
    throw ConfigError("logits: the last dim (" + std::to_string(logits.size(-1)) + ") times " +
                      "tensor_parallel_degree (" + std::to_string(group.size()) +
                      ") is less than vocab_size (" + std::to_string(vocab_size) + ")");
  }
  return VocabParallelCrossEntropy::apply(logits, labels, vocab_size, group);
}

}  // namespace smp::tp
