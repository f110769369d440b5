// BucketPool: host memory for sharded data parallelism's gathered buckets and gradient packs.
//
// A step fills and frees every layer's bucket twice per microbatch, and packs its gradients as
// often: on the host, glibc's heap would keep the freed blocks (GPT-2 350M: 1.3 GB of a 3 GB
// peak per rank). The pool maps its blocks itself (mmap) and keeps each freed one for the next
// request of the same size (the layers of a transformer share theirs). A kept block that no
// request reuses within the next kReuseWithin allocations is unmapped: the embedding's and the
// head's sizes, say, are not held idle while the blocks of the layers in between compute (kept
// by size until the step's end, they held 1.5 GB of GPT-2 350M's peak). trim() gives back every
// kept block (ParameterShards: after each optimizer step, so between steps a rank keeps none).
// Device tensors do not need it (the CUDA caching allocator does the same) and keep their own
// allocator. Thread-safe: gradients land on autograd's threads.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Allocator.h>

#include <cstdint>
#include <memory>

namespace smp::dp {

class BucketPool {
 public:
  // How many allocations a freed block waits for a request of its size.
  static constexpr uint64_t kReuseWithin = 16;

  BucketPool();
  // `bytes` of host memory (uninitialised), a freed block of that size if one is kept.
  at::DataPtr allocate(size_t bytes);
  // An uninitialised 1-D tensor of `numel` elements: from the pool on the host, from
  // `options`' allocator elsewhere.
  at::Tensor empty(int64_t numel, const at::TensorOptions& options);
  // Unmaps the kept blocks (those in use come back to the pool when freed).
  void trim();
  // Bytes mapped now (in use or kept), and kept for reuse.
  int64_t mapped_bytes() const;
  int64_t kept_bytes() const;

 private:
  struct State;
  struct Block;  // a block in use: freeing it hands it back to the pool
  static void give_back(void* block);
  std::shared_ptr<State> state_;
};

}  // namespace smp::dp
