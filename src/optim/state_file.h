// Optimizer state kept in a file (Config::offload_optimizer_state): a flat tensor whose storage is
// a shared memory mapping of an unlinked file on local disk. Pages the update touches come into
// the process's resident memory; release() drops them again. The data stays in the file (the
// page cache holds it, the kernel writes it out), so resident memory holds only what is being
// updated: DeepSpeed's offload_optimizer to NVMe, with the kernel's page cache as the buffer.
#pragma once

#include <ATen/ATen.h>

#include <string>

namespace smp::optim {

// `numel` zeros of `dtype` in a new file in `directory`, mapped shared. The file is unlinked at
// once (it goes with the mapping, even if the process is killed); the mapping goes with the
// tensor's storage. Throws smp::Error naming the file when it cannot be made (disk full).
at::Tensor file_backed_zeros(int64_t numel, at::ScalarType dtype, const std::string& directory);

// Drops the pages under `view` (a contiguous view of a file_backed_zeros tensor, rounded out to
// whole pages) from the process's resident memory; their contents stay in the file.
void release(const at::Tensor& view);

}  // namespace smp::optim
