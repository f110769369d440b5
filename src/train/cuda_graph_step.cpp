// CudaGraphStep: StaticStep captured once with at::cuda::CUDAGraph and replayed (see
// graph_step.h). CUDA builds compile the capture (SMP_WITH_CUDA); others only the refusal.
#include "smp/train/graph_step.h"

#include <string>
#include <utility>

#include "smp/core/error.h"

#ifdef SMP_WITH_CUDA
#include <ATen/cuda/CUDAEvent.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace smp::train {

#ifdef SMP_WITH_CUDA
namespace {

class Captured : public CudaGraphStep {
 public:
  Captured(DistributedModel& model, DistributedOptimizer& optimizer, LossFn loss_fn, double grad_clip,
           const at::Device& device, int warmup)
      : body_(model, optimizer, std::move(loss_fn), grad_clip), device_(device), warmup_(warmup) {}

  const at::Tensor& step(const at::Tensor& x, const at::Tensor& y) override {
    c10::cuda::CUDAGuard guard(device_);
    body_.load(x, y, device_);  // on the current stream, before the graph reads them
    if (steps_ < warmup_) {
      on_side_stream([this] { body_.run(); });
    } else if (steps_ == warmup_) {
      // Captured on a side stream (capture needs a non-default stream), then replayed once:
      // capturing records the step without running it.
      on_side_stream([this] {
        graph_.capture_begin();
        body_.run();
        graph_.capture_end();
      });
      graph_.replay();
    } else {
      graph_.replay();
      body_.replayed();
    }
    ++steps_;
    return body_.figures();
  }

 private:
  // `f` on a side stream that waits for the current one, which then waits for it (PyTorch's
  // warm-up and torch.cuda.graph's capture stream).
  template <typename F>
  void on_side_stream(F f) {
    const c10::cuda::CUDAStream current = c10::cuda::getCurrentCUDAStream(device_.index());
    at::cuda::CUDAEvent loaded;
    loaded.record(current);
    loaded.block(side_);
    {
      c10::cuda::CUDAStreamGuard stream_guard(side_);
      f();
    }
    at::cuda::CUDAEvent done;
    done.record(side_);
    done.block(current);
  }

  StaticStep body_;
  at::Device device_;
  int warmup_;
  int steps_ = 0;
  at::cuda::CUDAGraph graph_;
  c10::cuda::CUDAStream side_ = c10::cuda::getStreamFromPool(false, device_.index());
};

}  // namespace
#endif

std::unique_ptr<CudaGraphStep> make_cuda_graph_step(DistributedModel& model, DistributedOptimizer& optimizer,
                                                    LossFn loss_fn, double grad_clip,
                                                    const at::Device& device, int warmup) {
  if (!device.is_cuda()) {
    throw ConfigError("training.cuda_graphs: got true with training.device \"" + device.str() +
                      "\"; allowed: only with training.device \"cuda\"");
  }
#ifdef SMP_WITH_CUDA
  return std::make_unique<Captured>(model, optimizer, std::move(loss_fn), grad_clip, device, warmup);
#else
  (void)model, (void)optimizer, (void)grad_clip, (void)warmup;
  throw ConfigError("training.cuda_graphs: this build of smp has no CUDA; allowed: false");
#endif
}

}  // namespace smp::train
