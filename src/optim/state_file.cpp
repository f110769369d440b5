// Optimizer state in a mapped file (see state_file.h).
#include "state_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "smp/core/error.h"

namespace smp::optim {

namespace {

int64_t page_size() {
  static const int64_t size = ::sysconf(_SC_PAGESIZE);
  return size;
}

}  // namespace

at::Tensor file_backed_zeros(int64_t numel, at::ScalarType dtype, const std::string& directory) {
  std::string path = directory + "/smp-optimizer-state-XXXXXX";
  const int fd = ::mkstemp(path.data());
  if (fd < 0) {
    throw Error("optimizer state file " + path + ": cannot create it (offload_optimizer_state): " +
                std::strerror(errno));
  }
  ::unlink(path.c_str());
  // Whole pages, at least one (a rank may own no elements).
  const int64_t pages = (numel * at::elementSize(dtype) + page_size() - 1) / page_size();
  const int64_t bytes = std::max<int64_t>(pages, 1) * page_size();
  // posix_fallocate reserves the blocks now, so a full disk fails here with a message rather than
  // later with SIGBUS on a page the update touches.
  const int err = ::posix_fallocate(fd, 0, bytes);
  void* data = err == 0 ? ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0) : MAP_FAILED;
  const std::string why = err != 0 ? std::strerror(err) : std::strerror(errno);
  ::close(fd);  // the mapping keeps the file
  if (data == MAP_FAILED) {
    throw Error("optimizer state file " + path + ": cannot reserve and map " + std::to_string(bytes) +
                " bytes (offload_optimizer_state): " + why);
  }
  return at::from_blob(
      data, {numel}, [bytes](void* p) { ::munmap(p, bytes); }, at::TensorOptions().dtype(dtype));
}

void release(const at::Tensor& view) {
  if (!view.defined() || view.numel() == 0) return;
  const auto begin = reinterpret_cast<uintptr_t>(view.data_ptr());
  const uintptr_t end = begin + view.nbytes();
  const uintptr_t first = begin / page_size() * page_size();
  const uintptr_t last = (end + page_size() - 1) / page_size() * page_size();
  // On a shared file mapping MADV_DONTNEED unmaps the pages; dirty ones stay dirty in the page
  // cache and reach the file, so nothing is lost.
  if (::madvise(reinterpret_cast<void*>(first), last - first, MADV_DONTNEED) != 0) {
    throw Error(std::string("optimizer state file: madvise(MADV_DONTNEED) failed: ") + std::strerror(errno));
  }
}

}  // namespace smp::optim
