// Vocab-parallel cross-entropy for tp = the world size (1, 2, 4): the chunked forward/backward
// against plain references (several chunks with a ragged last one, ignored labels, padding
// columns), bf16 logits against an fp32 reference on the same values, a finite-difference check
// in fp64, and the peak of CPU memory allocated above the start during forward + backward.
#include <c10/core/Allocator.h>
#include <c10/util/ThreadLocalDebugInfo.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <memory>

#include "tp_testing.h"

namespace smp::testing {
namespace {

void start() { reinit("\"tensor_parallel_degree\": " + std::to_string(comm::world_size())); }

// Every CPU allocation and free on this thread while pushed: the running total and its peak.
struct PeakCpuBytes : c10::MemoryReportingInfoBase {
  int64_t now = 0, peak = 0;
  void reportMemoryUsage(void*, int64_t alloc_size, size_t, size_t, c10::Device device) override {
    if (!device.is_cpu()) return;
    now += alloc_size;
    peak = std::max(peak, now);
  }
  bool memoryProfilingEnabled() const override { return true; }
};

// Pushes a PeakCpuBytes as the thread's PROFILER_STATE for its lifetime.
class MeasureCpuPeak {
 public:
  MeasureCpuPeak() : info_(std::make_shared<PeakCpuBytes>()) {
    c10::ThreadLocalDebugInfo::_push(c10::DebugInfoKind::PROFILER_STATE, info_);
  }
  ~MeasureCpuPeak() { c10::ThreadLocalDebugInfo::_pop(c10::DebugInfoKind::PROFILER_STATE); }
  int64_t peak() const { return info_->peak; }

 private:
  std::shared_ptr<PeakCpuBytes> info_;
};

// The plain reference: log_softmax + nll over the real columns of the whole logits (every
// negative label ignored, as -100 is there).
at::Tensor reference_loss(const at::Tensor& whole, const at::Tensor& labels, int64_t vocab) {
  return at::cross_entropy_loss(whole.narrow(-1, 0, vocab).reshape({-1, vocab}),
                                labels.reshape(-1).masked_fill(labels.reshape(-1) < 0, -100), {},
                                at::Reduction::None)
      .view(labels.sizes());
}

// Labels in [0, vocab) with some ignored (-100) and the last real class present.
at::Tensor some_labels(int64_t b, int64_t t, int64_t vocab) {
  at::Tensor labels = at::randint(0, vocab, {b, t}, at::kLong);
  labels.view(-1)[0] = vocab - 1;
  labels.view(-1)[2] = -100;
  labels.view(-1)[b * t - 1] = -100;
  labels.view(-1)[b * t / 2] = -1;
  return labels;
}

// Whole logits (b, t, padded), the padding columns holding large garbage (never a class).
at::Tensor some_logits(int64_t b, int64_t t, int64_t vocab, int64_t padded, at::ScalarType type) {
  at::Tensor whole = at::randn({b, t, padded}, at::TensorOptions().dtype(type)) * 3;
  if (padded > vocab) whole.narrow(-1, vocab, padded - vocab).fill_(50);
  return whole;
}

// 21 tokens in chunks of 1, 4 and 5 (ragged last chunk), the default and more than all of them;
// vocabularies 13 and 9 padded to 16 columns: padding on the last rank at tp 1, 2 and 4, and at
// tp 4 with 9 a rank of padding only. fp32 within 2e-6 of the plain reference, fp64 within 1e-12.
TEST(TpCrossEntropy, ChunksIgnoredLabelsAndPaddingMatchThePlainReference) {
  start();
  const TpGroup g = tp_group();
  constexpr int64_t kB = 3, kT = 7, kPadded = 16;
  for (const at::ScalarType type : {at::kFloat, at::kDouble}) {
    const double tol = type == at::kFloat ? 1e-6 : 1e-12;
    for (const int64_t vocab : {13, 9}) {
      for (const int64_t chunk : {1, 4, 5, 0, 21, 100}) {
        at::manual_seed(7 + vocab);
        const at::Tensor labels = some_labels(kB, kT, vocab);
        const at::Tensor whole = some_logits(kB, kT, vocab, kPadded, type);
        torch::nn::Module none;
        const std::string what = std::string(type == at::kFloat ? "fp32" : "fp64") +
                                 " vocab=" + std::to_string(vocab) +
                                 " chunk_tokens=" + std::to_string(chunk);
        check_against_reference(
            {what, tol, Layout::kLastDim, Layout::kReplicated}, none, none,
            [&](const at::Tensor& x) {
              at::Tensor y = tp::vocab_parallel_cross_entropy(x, labels, vocab, g, chunk);
              EXPECT_EQ(y.scalar_type(), type) << what;
              return y;
            },
            [&](const Params&, const at::Tensor& x) { return reference_loss(x, labels, vocab); },
            whole, g);
      }
    }
  }
}

// Central differences in fp64 over every element of the whole logits (each rank perturbs the
// ones it holds; all ranks run every forward), against the analytic gradient.
TEST(TpCrossEntropy, Fp64GradientMatchesFiniteDifferences) {
  start();
  const TpGroup g = tp_group();
  constexpr int64_t kB = 2, kT = 3, kVocab = 7, kPadded = 8;
  at::manual_seed(21);
  const at::Tensor labels = some_labels(kB, kT, kVocab);
  const at::Tensor whole = some_logits(kB, kT, kVocab, kPadded, at::kDouble);
  const at::Tensor upstream = at::randn({kB, kT}, at::kDouble);
  at::Tensor x = local(whole, Layout::kLastDim, g).clone();
  const int64_t n = x.size(-1), first = g.rank() * n;
  auto objective = [&](const at::Tensor& t) {
    return (tp::vocab_parallel_cross_entropy(t, labels, kVocab, g, 2) * upstream).sum();
  };
  at::Tensor leaf = x.clone().requires_grad_(true);
  objective(leaf).backward();
  const at::Tensor analytic = leaf.grad();
  at::Tensor numeric = at::zeros_like(x);
  constexpr double kEps = 1e-6;
  auto flat = x.view({-1, n});
  for (int64_t token = 0; token < kB * kT; ++token) {
    for (int64_t column = 0; column < kPadded; ++column) {
      const bool mine = column >= first && column < first + n;
      auto value = [&](double delta) {
        if (mine) flat[token][column - first] += delta;
        const double v = objective(x).item<double>();
        if (mine) flat[token][column - first] -= delta;
        return v;
      };
      const double d = (value(kEps) - value(-kEps)) / (2 * kEps);
      if (mine) numeric.view({-1, n})[token][column - first] = d;
    }
  }
  EXPECT_TRUE(close(analytic, numeric, 1e-7)) << "tp=" << g.size();
  // The padding columns and the ignored tokens get exactly zero.
  if (first + n > kVocab) {
    const int64_t pad_from = std::max<int64_t>(0, kVocab - first);
    EXPECT_TRUE(at::equal(analytic.narrow(-1, pad_from, n - pad_from),
                          at::zeros_like(analytic.narrow(-1, pad_from, n - pad_from))));
  }
  EXPECT_TRUE(at::equal(analytic.view({-1, n})[2], at::zeros({n}, at::kDouble)));
}

// bf16 and fp16 logits against the fp32 reference on the same values upcast: the loss within
// 1e-5 relative (fp32 accumulation), the gradient (in the logits' dtype) within its resolution.
TEST(TpCrossEntropy, HalfPrecisionLogitsAccumulateInFp32) {
  start();
  const TpGroup g = tp_group();
  constexpr int64_t kB = 2, kT = 9, kVocab = 1001;
  const int64_t padded = tp::padded_vocab_size(kVocab, 4);  // 1024: padding at every tp
  for (const at::ScalarType type : {at::kBFloat16, at::kHalf}) {
    SCOPED_TRACE(std::string(c10::toString(type)) + " tp=" + std::to_string(g.size()));
    const double resolution = type == at::kBFloat16 ? 1.0 / 256 : 1.0 / 2048;
    at::manual_seed(31);
    const at::Tensor labels = some_labels(kB, kT, kVocab);
    const at::Tensor whole = some_logits(kB, kT, kVocab, padded, at::kFloat).to(type);
    at::Tensor ref_x = whole.to(at::kFloat).requires_grad_(true);
    const at::Tensor ref = reference_loss(ref_x, labels, kVocab);
    const at::Tensor upstream = at::randn({kB, kT});
    (ref * upstream).sum().backward();

    at::Tensor x = local(whole, Layout::kLastDim, g).clone().requires_grad_(true);
    const at::Tensor loss = tp::vocab_parallel_cross_entropy(x, labels, kVocab, g, 4);
    EXPECT_EQ(loss.scalar_type(), at::kFloat);
    (loss * upstream).sum().backward();
    EXPECT_TRUE(close(loss, ref, 1e-5)) << "loss";
    ASSERT_EQ(x.grad().scalar_type(), type);
    const at::Tensor want = local(ref_x.grad(), Layout::kLastDim, g);
    const at::Tensor err = (x.grad().to(at::kFloat) - want).abs();
    EXPECT_TRUE((err <= want.abs() * resolution + 1e-7).all().item<bool>())
        << "max abs error " << err.max().item<double>();
  }
}

TEST(TpCrossEntropy, BadInputThrowsConfigError) {
  start();
  const TpGroup g = tp_group();
  const at::Tensor logits = at::randn({2, 3, 4});
  const at::Tensor labels = at::zeros({2, 3}, at::kLong);
  EXPECT_THROW(tp::check_labels(labels.clone().fill_(4 * g.size()), 4 * g.size()), ConfigError);
  tp::check_labels(labels.clone().fill_(4 * g.size() - 1), 4 * g.size());  // the last class
  EXPECT_THROW(tp::vocab_parallel_cross_entropy(logits, labels, 4 * g.size() + 1, g), ConfigError);
  EXPECT_THROW(tp::vocab_parallel_cross_entropy(logits, at::zeros({5}, at::kLong), 4, g),
               ConfigError);
  EXPECT_THROW(tp::vocab_parallel_cross_entropy(logits, labels, 4, g, -1), ConfigError);
}

// GPT-2's vocabulary, B*T = 2048 tokens, bf16 logits: the peak extra CPU bytes of forward +
// backward (the gradient included) over the bytes of this rank's logits.
TEST(TpCrossEntropy, PeakMemoryIsTheGradientPlusAChunk) {
  start();
  const TpGroup g = tp_group();
  constexpr int64_t kVocab = 50257, kB = 2, kT = 1024;
  const int64_t n = tp::padded_vocab_size(kVocab, g.size()) / g.size();
  at::manual_seed(11);
  const at::Tensor labels = at::randint(0, kVocab, {kB, kT}, at::kLong);
  const at::Tensor logits = at::randn({kB, kT, n}).mul_(3).to(at::kBFloat16).requires_grad_(true);
  const int64_t logits_bytes = logits.numel() * logits.element_size();
  const auto t0 = std::chrono::steady_clock::now();
  int64_t peak = 0;
  {
    MeasureCpuPeak measure;
    tp::vocab_parallel_cross_entropy(logits, labels, kVocab, g).mean().backward();
    peak = measure.peak();
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ASSERT_TRUE(logits.grad().defined());
  EXPECT_EQ(logits.grad().scalar_type(), at::kBFloat16);
  const double ratio = static_cast<double>(peak) / static_cast<double>(logits_bytes);
  // The gradient (one logits-sized buffer) plus one chunk's fp32 scratch (the default chunk:
  // ~64 MB) plus per-token vectors.
  const int64_t rows =
      std::min<int64_t>(kB * kT, std::max<int64_t>(1, (int64_t{64} << 20) / (n * 4)));
  const int64_t allowance = rows * n * 4 + (int64_t{4} << 20);
  EXPECT_LE(peak, logits_bytes + allowance) << "peak extra bytes over logits: " << ratio << " x";
  if (comm::world_rank() == 0) {
    std::printf("[ loss_extra_over_logits ] tp=%d tokens=%lld V=%lld n=%lld bf16 logits %.1f MB: "
                "peak extra %.1f MB = %.3f x logits (forward+backward %.2f s; limit %.3f x)\n",
                static_cast<int>(g.size()), static_cast<long long>(kB * kT),
                static_cast<long long>(kVocab), static_cast<long long>(n), logits_bytes / 1e6,
                peak / 1e6, ratio, seconds,
                static_cast<double>(logits_bytes + allowance) / logits_bytes);
  }
}

// Logits that only the loss holds (made by a head's GEMM, which keeps its inputs): with
// logits_consumed the gradient is written over them. The same gradients reach the hidden
// states as without it; the peak holds no logits-sized gradient (a chunk's scratch and the
// hidden states' gradient only); a second backward fails on the version counter, not silently.
TEST(TpCrossEntropy, ConsumedLogitsTakeTheirGradientInPlace) {
  start();
  const TpGroup g = tp_group();
  constexpr int64_t kVocab = 50257, kB = 2, kT = 512, kH = 64;
  const int64_t n = tp::padded_vocab_size(kVocab, g.size()) / g.size();
  at::manual_seed(12);
  const at::Tensor labels = at::randint(0, kVocab, {kB, kT}, at::kLong);
  const at::Tensor w = at::randn({n, kH}).to(at::kBFloat16);
  const at::Tensor hidden = at::randn({kB, kT, kH}).to(at::kBFloat16);
  at::Tensor expected;
  {
    const at::Tensor h = hidden.clone().requires_grad_(true);
    tp::vocab_parallel_cross_entropy(at::linear(h, w), labels, kVocab, g).mean().backward();
    expected = h.grad();
  }
  const at::Tensor h = hidden.clone().requires_grad_(true);
  const int64_t logits_bytes = kB * kT * n * 2;
  int64_t peak = 0;
  {
    MeasureCpuPeak measure;
    at::Tensor loss = tp::vocab_parallel_cross_entropy(at::linear(h, w), labels, kVocab, g, 0,
                                                       /*logits_consumed=*/true)
                          .mean();
    loss.backward({}, /*retain_graph=*/true);
    peak = measure.peak() - logits_bytes;  // beyond the logits themselves
    EXPECT_THROW(loss.backward(), c10::Error);
  }
  EXPECT_TRUE(at::equal(h.grad(), expected));
  const int64_t rows = std::min<int64_t>(kB * kT, (int64_t{64} << 20) / (n * 4));
  EXPECT_LE(peak, rows * n * 4 + kB * kT * kH * 2 + (int64_t{4} << 20))
      << "peak extra over the logits: " << static_cast<double>(peak) / logits_bytes << " x";
}

}  // namespace
}  // namespace smp::testing
