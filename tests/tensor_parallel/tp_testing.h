// Test harness for tensor parallelism: restart smp with a layout, compare with a tolerance
// (reporting the max abs error), cut a whole tensor into this rank's part, and check a parallel
// module against its plain reference (init, forward, input grad, each weight grad).
#pragma once

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/nn/module.h>

#include <functional>
#include <map>
#include <memory>
#include <sstream>
#include <string>

#include "reference.h"
#include "smp/smp.h"
#include "smp/tensor_parallel/layers.h"
#include "smp/tensor_parallel/primitives.h"

namespace smp::testing {

using tp::TpGroup;

inline void reinit(const std::string& json_fields) {
  if (is_initialized()) shutdown();
  init(Config::from_json_string("{\"ddp\": true, \"comm_timeout_s\": 60, " + json_fields + "}"));
}

inline TpGroup tp_group() { return TpGroup(process_group(CommGroup::TP_GROUP)); }

// max |got - want| <= tol * max(1, max |want|); the failure message gives the max abs error.
inline ::testing::AssertionResult close(const at::Tensor& got, const at::Tensor& want, double tol) {
  if (got.sizes() != want.sizes()) {
    return ::testing::AssertionFailure() << "shape " << got.sizes() << " != " << want.sizes();
  }
  const double err = got.numel() ? (got - want).abs().max().item<double>() : 0.0;
  const double scale = std::max(1.0, want.numel() ? want.abs().max().item<double>() : 0.0);
  if (err <= tol * scale) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "max abs error " << err << " > " << tol << " * " << scale;
}

// The TP group's collectives since the last reset equal `want` exactly: op -> {calls, bytes};
// ops not listed must not have run.
inline ::testing::AssertionResult counted(const comm::Counters& got,
                                          const std::map<std::string, comm::OpStats>& want) {
  std::ostringstream diff;
  for (const auto& [op, stats] : got.by_op) {
    if (stats.calls && !want.count(op)) diff << " unexpected " << op << " x" << stats.calls;
  }
  for (const auto& [op, stats] : want) {
    const comm::OpStats g = got.get(op);
    if (g.calls != stats.calls || g.bytes != stats.bytes) {
      diff << " " << op << ": " << g.calls << " calls, " << g.bytes << " bytes; want "
           << stats.calls << " calls, " << stats.bytes << " bytes";
    }
  }
  if (diff.str().empty()) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << diff.str();
}

// kBatch: each rank holds its own samples (dim 0), SMP's non-prescaled batch flow.
enum class Layout { kReplicated, kLastDim, kSequence, kBatch };

// This rank's part of a whole tensor; `stack` > 1 splits each of `stack` blocks of the last dim.
inline at::Tensor local(const at::Tensor& whole, Layout layout, const TpGroup& g,
                        int64_t stack = 1) {
  if (layout == Layout::kReplicated) return whole;
  if (layout == Layout::kSequence) return tp::own_slice(whole, 1, g);
  if (layout == Layout::kBatch) return tp::own_slice(whole, 0, g);
  if (stack == 1) return tp::own_slice(whole, -1, g);
  std::vector<int64_t> sizes = whole.sizes().vec();
  sizes.back() /= stack;
  sizes.insert(sizes.end() - 1, stack);
  at::Tensor part = tp::own_slice(whole.reshape(sizes), -1, g);
  std::vector<int64_t> out = whole.sizes().vec();
  out.back() /= g.size();
  return part.reshape(out);
}

// What rank's shard of `full` along `dim` must be; `full` is first padded with zero rows up to
// shard.size(dim) * tp (the vocabulary padding).
inline at::Tensor expected_shard(const at::Tensor& full, int64_t dim, const at::Tensor& shard,
                                 const TpGroup& g) {
  if (dim < 0) return full;
  const int64_t padded = shard.size(dim) * g.size();
  at::Tensor whole = full;
  if (padded > full.size(dim)) {
    std::vector<int64_t> pad = full.sizes().vec();
    pad[dim] = padded - full.size(dim);
    whole = at::cat({full, at::zeros(pad, full.options())}, dim);
  }
  return tp::own_slice(whole, dim, g);
}

// The full module's parameters as fresh leaves for the reference.
inline Params leaves_of(const torch::nn::Module& full) {
  Params out;
  for (const auto& p : full.named_parameters()) {
    out[p.key()] = p.value().detach().clone().requires_grad_(true);
  }
  return out;
}

// Builds the same module twice from one seed: over `g`, and over the group of one.
template <class M>
std::pair<std::shared_ptr<M>, std::shared_ptr<M>> build_pair(
    uint64_t seed, const TpGroup& g, const std::function<std::shared_ptr<M>(TpGroup)>& make) {
  at::manual_seed(seed);
  auto parallel = make(g);
  at::manual_seed(seed);
  auto full = make(TpGroup());
  return {parallel, full};
}

struct LayerCheck {
  std::string what;
  double tol;  // relative to max(1, max |reference|)
  Layout in = Layout::kReplicated;
  Layout out = Layout::kReplicated;
  int64_t out_stack = 1;
};

// Checks `parallel` against the plain reference on the whole input x (same on every rank, or
// each rank its own samples with Layout::kBatch): every shard equals the slice of the full
// parameter (torch::equal), then forward output, input gradient and every parameter gradient
// under a fixed random upstream gradient. With kBatch inputs the ranks' objectives add up to
// the reference's, and a parameter's gradient is their mean (tp::gather_batch): the
// reference's / tp.
inline void check_against_reference(
    const LayerCheck& c, torch::nn::Module& parallel, const torch::nn::Module& full,
    const std::function<at::Tensor(const at::Tensor&)>& run_parallel,
    const std::function<at::Tensor(const Params&, const at::Tensor&)>& run_reference,
    const at::Tensor& x, const TpGroup& g) {
  SCOPED_TRACE(c.what + " tp=" + std::to_string(g.size()));
  const auto dims = tp::tp_shard_dims(parallel);
  Params ref = leaves_of(full);
  for (const auto& p : parallel.named_parameters()) {
    EXPECT_TRUE(
        at::equal(p.value(), expected_shard(ref.at(p.key()), dims.at(p.key()), p.value(), g)))
        << "init of " << p.key() << " is not the slice of the tp=1 parameter";
  }
  const bool differentiable = at::isFloatingType(x.scalar_type());
  at::Tensor x_ref = differentiable ? x.detach().clone().requires_grad_(true) : x;
  const at::Tensor y_ref = run_reference(ref, x_ref);
  at::manual_seed(99);
  const at::Tensor upstream = at::randn(y_ref.sizes());
  (y_ref * upstream).sum().backward();

  at::Tensor x_local = local(x, c.in, g).detach().clone();
  if (differentiable) x_local.requires_grad_(true);
  parallel.zero_grad();
  const at::Tensor y = run_parallel(x_local);
  (y * local(upstream, c.out, g, c.out_stack)).sum().backward();

  EXPECT_TRUE(close(y, local(y_ref, c.out, g, c.out_stack), c.tol)) << "forward output";
  if (differentiable) {
    EXPECT_TRUE(close(x_local.grad(), local(x_ref.grad(), c.in, g), c.tol)) << "input grad";
  }
  for (const auto& p : parallel.named_parameters()) {
    ASSERT_TRUE(p.value().grad().defined()) << "no grad for " << p.key();
    at::Tensor want = expected_shard(ref.at(p.key()).grad(), dims.at(p.key()), p.value(), g);
    if (c.in == Layout::kBatch) want = want / g.size();
    EXPECT_TRUE(close(p.value().grad(), want, c.tol)) << "grad of " << p.key();
  }
}

}  // namespace smp::testing
