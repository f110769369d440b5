// Profiling layers on a trial microbatch (see profile.h).
#include "smp/pipeline/profile.h"

#include <algorithm>
#include <chrono>
#include <map>
#include <numeric>

#include <ATen/ATen.h>
#include <ATen/detail/CUDAHooksInterface.h>
#include <torch/csrc/autograd/autograd.h>

#include "smp/pipeline/recompute.h"

namespace smp::pipeline {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

int64_t bytes_of(const Values& values) {
  int64_t bytes = 0;
  for (const at::Tensor& t : values) bytes += t.defined() ? static_cast<int64_t>(t.nbytes()) : 0;
  return bytes;
}

// The device the trial runs on: the first defined input's (the host when there is none).
at::Device device_of(const Values& inputs) {
  for (const at::Tensor& t : inputs)
    if (t.defined()) return t.device();
  return at::kCPU;
}

// Waits for the device's queued work (a no-op on the host).
void synchronize(const at::Device& device) {
  if (device.is_cuda()) at::detail::getCUDAHooks().deviceSynchronize(device.index());
}

// Moves a layer's parameters to the profiling device for its runs (keeping the tensors'
// identity, as Module::to does) and back when it goes out of scope.
class OnDevice {
 public:
  OnDevice(const Layer& layer, const at::Device& device) {
    for (const at::Tensor& p : layer.parameters) {
      if (p.device() == device) continue;
      at::Tensor param = p;  // shares the TensorImpl: set_data moves the layer's own tensor
      moved_.emplace_back(param, p.data());
      param.set_data(p.data().to(device));
    }
  }
  ~OnDevice() {  // the gradients the runs left on the device go (profile_layers restores them)
    for (auto& [param, original] : moved_) {
      param.mutable_grad() = at::Tensor();
      param.set_data(original);
    }
  }
  OnDevice(const OnDevice&) = delete;
  OnDevice& operator=(const OnDevice&) = delete;

 private:
  std::vector<std::pair<at::Tensor, at::Tensor>> moved_;
};

// Forward, then backward from random output gradients; returns (outputs, seconds).
std::pair<Values, double> run_once(const Layer& layer, const Values& inputs) {
  const Values leaves = detach_as_leaves(inputs);
  const at::Device device = device_of(inputs);
  synchronize(device);
  const auto start = Clock::now();
  Values outputs = layer.forward(leaves);
  Values roots;
  Values grads;
  for (const at::Tensor& out : outputs) {
    if (out.defined() && out.requires_grad()) {
      roots.push_back(out);
      grads.push_back(at::randn_like(out));
    }
  }
  if (!roots.empty()) torch::autograd::backward(roots, grads);
  synchronize(device);
  return {outputs, seconds_since(start)};
}

}  // namespace

std::vector<int> share_groups(const std::vector<Layer>& layers) {
  // Union-find over layers, joined by a common parameter tensor.
  std::vector<int> parent(layers.size());
  std::iota(parent.begin(), parent.end(), 0);
  auto root = [&](int i) {
    while (parent[i] != i) i = parent[i] = parent[parent[i]];
    return i;
  };
  std::map<const void*, int> owner;
  for (int i = 0; i < static_cast<int>(layers.size()); ++i) {
    for (const at::Tensor& p : layers[i].parameters) {
      const void* key = p.unsafeGetTensorImpl();
      auto [it, fresh] = owner.emplace(key, i);
      if (!fresh) parent[root(i)] = root(it->second);
    }
  }
  std::vector<int> size(layers.size(), 0);
  for (int i = 0; i < static_cast<int>(layers.size()); ++i) size[root(i)]++;
  std::vector<int> group(layers.size(), -1);
  for (int i = 0; i < static_cast<int>(layers.size()); ++i) {
    if (size[root(i)] > 1) group[i] = root(i);
  }
  return group;
}

std::vector<LayerCost> profile_layers(const std::vector<Layer>& layers, const Values& trial_inputs,
                                      int repeats) {
  // Gradients as they were before profiling, set aside (backward would add into them in
  // place) and put back at the end.
  std::vector<std::pair<at::Tensor, at::Tensor>> saved_grads;
  for (const Layer& layer : layers) {
    for (const at::Tensor& p : layer.parameters) {
      saved_grads.emplace_back(p, p.grad());
      at::Tensor(p).mutable_grad() = at::Tensor();
    }
  }
  // The runs leave no trace: random numbers drawn (dropout, the output gradients) and state
  // the layers update (BatchNorm's running statistics) are put back as they were.
  std::vector<const Layer*> all;
  for (const Layer& layer : layers) all.push_back(&layer);
  RngState untouched = capture_rng(all, 0, all.size(), device_of(trial_inputs));
  const std::vector<int> groups = share_groups(layers);
  std::vector<LayerCost> costs;
  Values x = trial_inputs;
  for (size_t i = 0; i < layers.size(); ++i) {
    LayerCost cost;
    cost.name = layers[i].name;
    cost.share_group = groups[i];
    for (const at::Tensor& p : layers[i].parameters) {
      cost.param_bytes += static_cast<int64_t>(p.nbytes());
      cost.num_params += p.numel();
    }
    double best = 0;
    Values outputs;
    const OnDevice on_device(layers[i], device_of(x));
    for (int r = 0; r < std::max(1, repeats); ++r) {
      auto [out, seconds] = run_once(layers[i], x);
      best = r == 0 ? seconds : std::min(best, seconds);
      outputs = std::move(out);
    }
    cost.time_s = best;
    cost.activation_bytes = bytes_of(outputs);
    costs.push_back(cost);
    x.clear();
    for (const at::Tensor& t : outputs) x.push_back(t.defined() ? t.detach() : t);
  }
  for (auto& [param, grad] : saved_grads) param.mutable_grad() = grad;
  restore_rng(untouched);
  return costs;
}

}  // namespace smp::pipeline
