// The training step of a pp = 1 run as a CUDA graph replays it (training.cuda_graphs).
//
// StaticStep is the step's body over buffers that keep their addresses: the batch is copied
// into static input and label buffers (load), then run() does smp::step, clipping (or the
// norm alone), DistributedOptimizer::step and zero_grad, and writes the loss, the norm and the
// overflow flag into one static output (figures). Nothing in run() waits for the device (no
// item(), no copy to the host, no output-size-dependent op), and every tensor it reads from
// outside (parameters, gradient buffers, optimizer state, masters, the overflow flag, fp16's
// scale, the learning rates) keeps its address from step to step: what replaying a captured
// graph needs. graph_step_test checks both on the CPU with HostSyncCounter.
//
// CudaGraphStep runs StaticStep on a GPU: `warmup` steps eagerly on a side stream (as PyTorch
// warms up before capturing: lazily made buffers, the partition, the optimizer's state and
// views all exist before capture), then captures one step with at::cuda::CUDAGraph and replays
// the graph for that step and every later one. It is compiled in CUDA builds only
// (src/train/cuda_graph_step.cpp); elsewhere make_cuda_graph_step throws.
//
// The optimizer must read its learning rates from the device (DistributedOptimizerOptions::
// lr_on_device): a captured kernel keeps its scalar arguments, so run() uploads the groups'
// current learning rates before each step (outside the graph).
#pragma once

#include <ATen/core/Tensor.h>

#include <memory>

#include "smp/distributed_optimizer.h"
#include "smp/step.h"

namespace smp::train {

class StaticStep {
 public:
  // grad_clip > 0 clips at it; 0 only computes the norm. The model must have one pipeline
  // stage per rank (pp = 1); `optimizer` must have lr_on_device.
  StaticStep(DistributedModel& model, DistributedOptimizer& optimizer, LossFn loss_fn, double grad_clip);

  // Copies the batch into the static buffers, made at the first call like `x` and `y` on
  // `device`; later batches must have the same shapes (ConfigError naming both otherwise).
  // Uploads the optimizer's learning rates. Not part of the graph.
  void load(const at::Tensor& x, const at::Tensor& y, const at::Device& device);
  // The body (what CudaGraphStep captures). Collective as smp::step is.
  void run();
  // After a replay of run() (its host part did not run): the optimizer's bookkeeping of the
  // step is pending (DistributedOptimizer::step_replayed), for the caller's record_overflow.
  void replayed() { optimizer_.step_replayed(); }
  // (3,) fp64 on the device, written by run(): the mean loss, the gradient norm (inf/NaN on an
  // overflow) and the overflow flag (DistributedOptimizer::overflow_tensor).
  const at::Tensor& figures() const { return figures_; }
  const at::Tensor& inputs() const { return x_; }
  const at::Tensor& labels() const { return y_; }

 private:
  DistributedModel& model_;
  DistributedOptimizer& optimizer_;
  LossFn loss_fn_;
  double grad_clip_;
  at::Tensor x_, y_, figures_;
};

// Replays a captured StaticStep (see the file comment). Not copyable.
class CudaGraphStep {
 public:
  virtual ~CudaGraphStep() = default;
  // The batch into the static buffers, then one training step: eager during warm-up, the
  // capture (and a replay) at step warmup + 1, replays after. Returns figures() (no wait).
  virtual const at::Tensor& step(const at::Tensor& x, const at::Tensor& y) = 0;
};

// Throws ConfigError naming training.cuda_graphs in a build without CUDA or off a CUDA device.
std::unique_ptr<CudaGraphStep> make_cuda_graph_step(DistributedModel& model, DistributedOptimizer& optimizer,
                                                    LossFn loss_fn, double grad_clip, const at::Device& device,
                                                    int warmup = 3);

}  // namespace smp::train
