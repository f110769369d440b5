// Tensor-parallel primitives (see primitives.h): the collectives along a dim, and one autograd
// function, Mapping, whose forward and backward are each one of five operations; every public
// primitive is a Mapping with its pair of operations.
#include "smp/tensor_parallel/primitives.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>

#include "smp/core/error.h"

namespace smp::tp {

// ---- collectives along a dim ---------------------------------------------------------------

at::Tensor own_slice(const at::Tensor& x, int64_t dim, const TpGroup& group) {
  dim = at::maybe_wrap_dim(dim, x.dim());
  check_divisible(
      "size " + std::to_string(x.size(dim)) + " of dim " + std::to_string(dim) + ": the length",
      x.size(dim), group.size());
  const int64_t n = x.size(dim) / group.size();
  return x.narrow(dim, group.rank() * n, n);
}

at::Tensor all_gather_along(const at::Tensor& x, int64_t dim, const TpGroup& group) {
  if (group.size() == 1) return x;
  dim = at::maybe_wrap_dim(dim, x.dim());
  const int t = group.size();
  const at::Tensor in = x.contiguous();
  std::vector<int64_t> stacked = {t};
  for (int64_t s : x.sizes()) stacked.push_back(s);
  at::Tensor out = at::empty(stacked, x.options());
  group.comm().all_gather(out, in).wait();
  // (t, ..., n, ...) -> (..., t, n, ...) -> (..., t * n, ...): rank i's part at offset i * n.
  std::vector<int64_t> sizes = x.sizes().vec();
  sizes[dim] *= t;
  return out.movedim(0, dim).reshape(sizes);
}

at::Tensor reduce_scatter_along(const at::Tensor& x, int64_t dim, const TpGroup& group) {
  if (group.size() == 1) return x;
  dim = at::maybe_wrap_dim(dim, x.dim());
  const int t = group.size();
  check_divisible(
      "size " + std::to_string(x.size(dim)) + " of dim " + std::to_string(dim) + ": the length",
      x.size(dim), t);
  // (..., t * n, ...) -> (t, ..., n, ...), contiguous: rank i's slice is the i-th block.
  std::vector<int64_t> split = x.sizes().vec();
  split[dim] /= t;
  split.insert(split.begin() + dim, t);
  const at::Tensor in = x.reshape(split).movedim(dim, 0).contiguous();
  std::vector<int64_t> sizes = x.sizes().vec();
  sizes[dim] /= t;
  at::Tensor out = at::empty(sizes, x.options());
  group.comm().reduce_scatter(out, in).wait();
  return out;
}

at::Tensor all_reduced(const at::Tensor& x, const TpGroup& group) {
  at::Tensor out = x.clone(at::MemoryFormat::Contiguous);
  if (group.size() > 1) group.comm().all_reduce(out).wait();
  return out;
}

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

enum class Op : int64_t { kIdentity, kAllReduce, kSlice, kAllGather, kReduceScatter };

at::Tensor run(Op op, const at::Tensor& x, int64_t dim, const TpGroup& group) {
  switch (op) {
    case Op::kIdentity:
      return x;
    case Op::kAllReduce:
      return all_reduced(x, group);
    case Op::kSlice:
      return own_slice(x, dim, group).clone(at::MemoryFormat::Contiguous);
    case Op::kAllGather:
      return all_gather_along(x, dim, group);
    case Op::kReduceScatter:
      return reduce_scatter_along(x, dim, group);
  }
  SMP_CHECK(false);
  return x;
}

void save_group(AutogradContext* ctx, const TpGroup& group) {
  ctx->saved_data["comm"] = reinterpret_cast<int64_t>(group.communicator());
}
TpGroup saved_group(AutogradContext* ctx) {
  return TpGroup(reinterpret_cast<comm::Communicator*>(ctx->saved_data["comm"].toInt()));
}

// Forward runs `fwd`, backward runs `bwd` on the incoming gradient and scales the result.
struct Mapping : torch::autograd::Function<Mapping> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, TpGroup group, int64_t dim,
                            Op fwd, Op bwd, double bwd_scale) {
    save_group(ctx, group);
    ctx->saved_data["dim"] = dim;
    ctx->saved_data["bwd"] = static_cast<int64_t>(bwd);
    ctx->saved_data["scale"] = bwd_scale;
    return run(fwd, x, dim, group);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto bwd = static_cast<Op>(ctx->saved_data["bwd"].toInt());
    at::Tensor g = run(bwd, grads[0], ctx->saved_data["dim"].toInt(), saved_group(ctx));
    const double scale = ctx->saved_data["scale"].toDouble();
    if (scale != 1.0) g = g * scale;
    return {g, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor mapping(const at::Tensor& x, const TpGroup& group, int64_t dim, Op fwd, Op bwd,
                   double bwd_scale = 1.0) {
  if (group.size() == 1) return x;
  return Mapping::apply(x, group, at::maybe_wrap_dim(dim, x.dim()), fwd, bwd, bwd_scale);
}

// Identity forward; backward sums all gradients over the group in one all-reduce. Shapes
// are saved as [ndim, sizes..., ndim, sizes...] so an unused parameter still gets zeros.
struct SyncGrads : torch::autograd::Function<SyncGrads> {
  static variable_list forward(AutogradContext* ctx, at::TensorList params, TpGroup group) {
    save_group(ctx, group);
    std::vector<int64_t> shapes;
    for (const at::Tensor& p : params) {
      shapes.push_back(p.dim());
      for (int64_t s : p.sizes()) shapes.push_back(s);
    }
    ctx->saved_data["shapes"] = shapes;
    // dtype and device of the gradients
    ctx->saved_data["dtype"] = static_cast<int64_t>(params[0].scalar_type());
    ctx->saved_data["device"] = params[0].device().str();
    return variable_list(params.begin(), params.end());
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const std::vector<int64_t> shapes = ctx->saved_data["shapes"].toIntVector();
    const at::TensorOptions options =
        at::TensorOptions()
            .dtype(static_cast<at::ScalarType>(ctx->saved_data["dtype"].toInt()))
            .device(at::Device(ctx->saved_data["device"].toStringRef()));
    std::vector<std::vector<int64_t>> sizes;
    for (size_t at = 0; at < shapes.size(); at += 1 + shapes[at]) {
      sizes.emplace_back(shapes.begin() + at + 1, shapes.begin() + at + 1 + shapes[at]);
    }
    std::vector<at::Tensor> flat;
    for (size_t i = 0; i < grads.size(); ++i) {
      flat.push_back(grads[i].defined() ? grads[i].reshape(-1)
                                        : at::zeros(sizes[i], options).view(-1));
    }
    at::Tensor all = at::cat(flat);
    saved_group(ctx).comm().all_reduce(all).wait();
    variable_list out;
    int64_t offset = 0;
    for (size_t i = 0; i < grads.size(); ++i) {
      const int64_t n = flat[i].numel();
      out.push_back(all.narrow(0, offset, n).view(sizes[i]));
      offset += n;
    }
    out.emplace_back();  // the group
    return out;
  }
};

}  // namespace

at::Tensor copy_to_tp(const at::Tensor& x, const TpGroup& g) {
  return mapping(x, g, 0, Op::kIdentity, Op::kAllReduce);
}
at::Tensor reduce_from_tp(const at::Tensor& x, const TpGroup& g) {
  return mapping(x, g, 0, Op::kAllReduce, Op::kIdentity);
}
at::Tensor scatter_to_tp(const at::Tensor& x, const TpGroup& g) {
  return mapping(x, g, -1, Op::kSlice, Op::kAllGather);
}
at::Tensor gather_from_tp(const at::Tensor& x, const TpGroup& g) {
  return mapping(x, g, -1, Op::kAllGather, Op::kSlice);
}
at::Tensor all_gather_sequence(const at::Tensor& x, const TpGroup& g, int64_t dim) {
  return mapping(x, g, dim, Op::kAllGather, Op::kReduceScatter);
}
at::Tensor reduce_scatter_sequence(const at::Tensor& x, const TpGroup& g, int64_t dim) {
  return mapping(x, g, dim, Op::kReduceScatter, Op::kAllGather);
}
at::Tensor scatter_to_sequence(const at::Tensor& x, const TpGroup& g, int64_t dim) {
  return mapping(x, g, dim, Op::kSlice, Op::kAllGather);
}
at::Tensor gather_from_sequence(const at::Tensor& x, const TpGroup& g, int64_t dim) {
  return mapping(x, g, dim, Op::kAllGather, Op::kSlice);
}

at::Tensor gather_batch(const at::Tensor& x, const TpGroup& g) {
  return mapping(x, g, 0, Op::kAllGather, Op::kSlice, g.size());
}
at::Tensor split_batch(const at::Tensor& x, const TpGroup& g) {
  return mapping(x, g, 0, Op::kSlice, Op::kAllGather, 1.0 / g.size());
}

std::vector<at::Tensor> sync_replicated_grads(const std::vector<at::Tensor>& params,
                                              const TpGroup& group) {
  if (group.size() == 1 || params.empty()) return params;
  return SyncGrads::apply(at::TensorList(params), group);
}

}  // namespace smp::tp
