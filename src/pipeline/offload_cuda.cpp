// PinnedStore: offloaded activations of a GPU in pinned host memory (see offload.h). Copies run
// on a side stream: put's device-to-host copies after an event of the compute stream (the
// values are ready), prefetch's host-to-device copies after them (same stream); take makes
// the compute stream wait for the loads' event. The caching allocator is told which stream
// last used each device block (recordStream), so dropping a tensor never frees memory a copy
// still reads or writes.
#include <optional>

#include <ATen/cuda/CUDAEvent.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "pinned_store.h"

namespace smp::pipeline {
namespace {

void used_on(const at::Tensor& t, const c10::cuda::CUDAStream& stream) {
  c10::cuda::CUDACachingAllocator::recordStream(t.storage().data_ptr(), stream);
}

class PinnedStore : public ActivationStore {
 public:
  explicit PinnedStore(const at::Device& device)
      : device_(device), side_(c10::cuda::getStreamFromPool(false, device.index())) {}

  void put(Key key, Values values) override {
    c10::cuda::CUDAGuard guard(device_);
    auto entry = std::make_unique<Entry>();
    at::cuda::CUDAEvent ready;
    ready.record(c10::cuda::getCurrentCUDAStream(device_.index()));
    ready.block(side_);
    c10::cuda::CUDAStreamGuard on_side(side_);
    for (const at::Tensor& value : values) {
      at::Tensor host;
      if (value.defined()) {
        host = at::empty(value.sizes(), value.options().device(at::kCPU).pinned_memory(true));
        host.copy_(value.detach(), /*non_blocking=*/true);
        used_on(value, side_);
      }
      entry->host.push_back(std::move(host));
    }
    entries_.emplace(key, std::move(entry));
  }

  void prefetch(Key key) override {
    Entry& entry = *entries_.at(key);
    if (entry.loaded_event) return;
    c10::cuda::CUDAGuard guard(device_);
    c10::cuda::CUDAStreamGuard on_side(side_);  // after put's copies: the same stream
    for (const at::Tensor& host : entry.host) {
      at::Tensor t;
      if (host.defined()) {
        t = at::empty(host.sizes(), host.options().device(device_).pinned_memory(false));
        t.copy_(host, /*non_blocking=*/true);
      }
      entry.loaded.push_back(std::move(t));
    }
    entry.loaded_event.emplace();
    entry.loaded_event->record(side_);
  }

  Values take(Key key) override {
    prefetch(key);
    c10::cuda::CUDAGuard guard(device_);
    const c10::cuda::CUDAStream compute = c10::cuda::getCurrentCUDAStream(device_.index());
    Entry& entry = *entries_.at(key);
    entry.loaded_event->block(compute);
    Values out = std::move(entry.loaded);
    for (const at::Tensor& t : out) {
      if (t.defined()) used_on(t, compute);
    }
    entries_.erase(key);  // the pinned buffers return to the host allocator after their copies
    return out;
  }

 private:
  struct Entry {
    Values host;    // pinned copies
    Values loaded;  // device tensors, once prefetched
    std::optional<at::cuda::CUDAEvent> loaded_event;
  };

  at::Device device_;
  c10::cuda::CUDAStream side_;
  std::map<Key, std::unique_ptr<Entry>> entries_;
};

}  // namespace

std::unique_ptr<ActivationStore> make_pinned_store(const at::Device& device) {
  return std::make_unique<PinnedStore>(device);
}

}  // namespace smp::pipeline
