// BucketPool: mmap'd host blocks kept by size for reuse, for a while (see bucket_pool.h).
#include "smp/data_parallel/bucket_pool.h"

#include <ATen/ATen.h>
#include <sys/mman.h>

#include <cerrno>
#include <cstring>
#include <iterator>
#include <limits>
#include <map>
#include <mutex>
#include <new>
#include <vector>

#include "smp/core/error.h"

namespace smp::dp {

struct BucketPool::State {
  struct Kept {
    void* data;
    uint64_t freed_at;  // the allocation count when it was freed
  };
  std::mutex mutex;
  std::map<size_t, std::vector<Kept>> kept;  // by size: freed blocks, oldest first
  uint64_t allocations = 0;
  int64_t mapped = 0;
  int64_t kept_bytes = 0;

  ~State() { unmap_kept(std::numeric_limits<uint64_t>::max()); }
  // Unmaps the kept blocks freed before allocation number `before`.
  void unmap_kept(uint64_t before) {
    for (auto it = kept.begin(); it != kept.end();) {
      auto& blocks = it->second;
      size_t old = 0;
      while (old < blocks.size() && blocks[old].freed_at < before) munmap(blocks[old++].data, it->first);
      blocks.erase(blocks.begin(), blocks.begin() + static_cast<std::ptrdiff_t>(old));
      mapped -= static_cast<int64_t>(it->first * old);
      kept_bytes -= static_cast<int64_t>(it->first * old);
      it = blocks.empty() ? kept.erase(it) : std::next(it);
    }
  }
};

struct BucketPool::Block {
  std::shared_ptr<State> pool;
  void* data;
  size_t bytes;
};

void BucketPool::give_back(void* context) {
  Block* block = static_cast<Block*>(context);
  {
    std::lock_guard<std::mutex> lock(block->pool->mutex);
    block->pool->kept[block->bytes].push_back({block->data, block->pool->allocations});
    block->pool->kept_bytes += static_cast<int64_t>(block->bytes);
  }
  delete block;
}

BucketPool::BucketPool() : state_(std::make_shared<State>()) {}

at::DataPtr BucketPool::allocate(size_t bytes) {
  if (bytes == 0) return at::DataPtr(nullptr, at::Device(at::kCPU));
  void* data = nullptr;
  {
    std::lock_guard<std::mutex> lock(state_->mutex);
    if (++state_->allocations > kReuseWithin) state_->unmap_kept(state_->allocations - kReuseWithin);
    auto it = state_->kept.find(bytes);
    if (it != state_->kept.end()) {
      data = it->second.back().data;  // the newest
      it->second.pop_back();
      if (it->second.empty()) state_->kept.erase(it);
      state_->kept_bytes -= static_cast<int64_t>(bytes);
    }
  }
  if (data == nullptr) {
    data = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (data == MAP_FAILED) {
      throw std::runtime_error("BucketPool: mmap of " + std::to_string(bytes) +
                               " bytes failed: " + std::strerror(errno));
    }
    std::lock_guard<std::mutex> lock(state_->mutex);
    state_->mapped += static_cast<int64_t>(bytes);
  }
  return at::DataPtr(data, new Block{state_, data, bytes}, &give_back, at::Device(at::kCPU));
}

at::Tensor BucketPool::empty(int64_t numel, const at::TensorOptions& options) {
  if (!options.device().is_cpu()) return at::empty({numel}, options);
  const size_t bytes = static_cast<size_t>(numel) * c10::elementSize(c10::typeMetaToScalarType(options.dtype()));
  c10::Storage storage(c10::Storage::use_byte_size_t(), bytes, allocate(bytes), nullptr, false);
  return at::empty({0}, options).set_(storage, 0, {numel}, {1});
}

void BucketPool::trim() {
  std::lock_guard<std::mutex> lock(state_->mutex);
  state_->unmap_kept(std::numeric_limits<uint64_t>::max());
}

int64_t BucketPool::mapped_bytes() const {
  std::lock_guard<std::mutex> lock(state_->mutex);
  return state_->mapped;
}

int64_t BucketPool::kept_bytes() const {
  std::lock_guard<std::mutex> lock(state_->mutex);
  return state_->kept_bytes;
}

}  // namespace smp::dp
