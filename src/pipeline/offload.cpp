// FileStore: offloaded activations in a temporary file, written and read by one worker thread
// (see offload.h). Each tensor of an entry gets an extent of the file (first fit among the
// extents freed by take, else the file's end); jobs run in the order they were submitted, so a
// read never overtakes the write of the same entry.
#include "smp/pipeline/offload.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "smp/core/error.h"
#include "smp/core/files.h"
#include "pinned_store.h"

namespace smp::pipeline {

std::unique_ptr<ActivationStore> make_activation_store(const at::Device& device,
                                                       const std::string& directory) {
#ifdef SMP_WITH_CUDA
  if (device.is_cuda()) return make_pinned_store(device);
#endif
  return std::make_unique<FileStore>(directory);
}

namespace {

// pwrite / pread of all `bytes`, retrying short transfers; throws naming the path.
void transfer(bool write, int fd, char* data, int64_t bytes, int64_t offset,
              const std::string& path) {
  while (bytes > 0) {
    const ssize_t n = write ? ::pwrite(fd, data, bytes, offset) : ::pread(fd, data, bytes, offset);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const std::string why = n < 0 ? std::strerror(errno) : "unexpected end of file";
      throw Error("activation offload file " + path + ": " + (write ? "write" : "read") +
                  " of " + std::to_string(bytes) + " bytes at offset " + std::to_string(offset) +
                  " failed: " + why);
    }
    data += n;
    bytes -= n;
    offset += n;
  }
}

}  // namespace

FileStore::FileStore(const std::string& directory) {
  std::string name = (directory.empty() ? files::temp_dir() : directory) +
                     "/smp-offload-XXXXXX";
  fd_ = ::mkstemp(name.data());
  path_ = name;
  if (fd_ < 0) {
    throw Error("activation offload file " + path_ + ": cannot create it: " + std::strerror(errno));
  }
  // Unlinked at once: the file lives as long as the descriptor, so even a killed process
  // leaves nothing behind.
  ::unlink(path_.c_str());
  worker_ = std::thread([this] { work(); });
}

FileStore::~FileStore() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
    jobs_.clear();
  }
  changed_.notify_all();
  worker_.join();
  ::close(fd_);
}

int64_t FileStore::file_bytes() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return end_;
}

int64_t FileStore::allocate(int64_t bytes) {
  for (auto it = free_.begin(); it != free_.end(); ++it) {
    if (it->second < bytes) continue;
    const int64_t offset = it->first;
    const int64_t rest = it->second - bytes;
    free_.erase(it);
    if (rest > 0) free_[offset + bytes] = rest;
    return offset;
  }
  const int64_t offset = end_;
  end_ += bytes;
  return offset;
}

void FileStore::release(int64_t offset, int64_t bytes) {
  if (bytes == 0) return;
  auto next = free_.lower_bound(offset);
  if (next != free_.end() && offset + bytes == next->first) {  // merge with the extent after
    bytes += next->second;
    next = free_.erase(next);
  }
  if (next != free_.begin()) {  // and with the one before
    auto prev = std::prev(next);
    if (prev->first + prev->second == offset) {
      prev->second += bytes;
      return;
    }
  }
  free_[offset] = bytes;
}

void FileStore::submit(std::function<void()> job) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    jobs_.push_back(std::move(job));
  }
  changed_.notify_all();
}

void FileStore::work() {
  for (;;) {
    std::function<void()> job;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      changed_.wait(lock, [&] { return stopping_ || !jobs_.empty(); });
      if (stopping_) return;
      job = std::move(jobs_.front());
      jobs_.pop_front();
    }
    job();
  }
}

void FileStore::put(Key key, Values values) {
  Entry entry;
  for (const at::Tensor& value : values) {
    Slot slot;
    at::Tensor host;
    if (value.defined()) {
      host = value.detach().to(at::kCPU).contiguous();
      slot = {true, host.scalar_type(), host.sizes().vec(), value.device(), 0,
              static_cast<int64_t>(host.nbytes())};
    }
    entry.slots.push_back(std::move(slot));
    entry.values.push_back(std::move(host));
  }
  {
    std::lock_guard<std::mutex> lock(mutex_);
    SMP_CHECK(entries_.count(key) == 0);
    for (Slot& slot : entry.slots) slot.offset = allocate(slot.bytes);
    entries_.emplace(key, std::move(entry));
  }
  submit([this, key] { write_entry(key); });
}

void FileStore::write_entry(Key key) {
  std::unique_lock<std::mutex> lock(mutex_);
  Entry& entry = entries_.at(key);  // entries stay put in the map while jobs for them run
  lock.unlock();
  std::exception_ptr error;
  try {
    for (size_t i = 0; i < entry.slots.size(); ++i) {
      const Slot& slot = entry.slots[i];
      if (!slot.defined) continue;
      transfer(true, fd_, static_cast<char*>(entry.values[i].data_ptr()), slot.bytes,
               slot.offset, path_);
    }
  } catch (...) {
    error = std::current_exception();
  }
  Values written;
  lock.lock();
  written.swap(entry.values);
  entry.error = error;
  entry.state = State::kOnDisk;
  lock.unlock();
  changed_.notify_all();
  written.clear();  // the host copies go, outside the lock
}

void FileStore::prefetch(Key key) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    Entry& entry = entries_.at(key);
    if (entry.load_requested) return;
    entry.load_requested = true;
  }
  submit([this, key] { read_entry(key); });
}

void FileStore::read_entry(Key key) {
  std::unique_lock<std::mutex> lock(mutex_);
  Entry& entry = entries_.at(key);
  const std::vector<Slot> slots = entry.slots;
  const bool failed = entry.error != nullptr;
  lock.unlock();
  Values values;
  std::exception_ptr error;
  try {
    for (const Slot& slot : slots) {
      at::Tensor t;
      if (slot.defined && !failed) {
        t = at::empty(slot.sizes, at::TensorOptions().dtype(slot.dtype));
        transfer(false, fd_, static_cast<char*>(t.data_ptr()), slot.bytes, slot.offset, path_);
      }
      values.push_back(std::move(t));
    }
  } catch (...) {
    error = std::current_exception();
  }
  lock.lock();
  entry.values = std::move(values);
  if (!entry.error) entry.error = error;
  entry.state = State::kLoaded;
  lock.unlock();
  changed_.notify_all();
}

Values FileStore::take(Key key) {
  prefetch(key);
  Entry entry;
  {
    std::unique_lock<std::mutex> lock(mutex_);
    changed_.wait(lock, [&] { return entries_.at(key).state == State::kLoaded; });
    entry = std::move(entries_.at(key));
    entries_.erase(key);
    for (const Slot& slot : entry.slots) release(slot.offset, slot.bytes);
  }
  if (entry.error) std::rethrow_exception(entry.error);
  Values out;
  for (size_t i = 0; i < entry.slots.size(); ++i) {
    const Slot& slot = entry.slots[i];
    out.push_back(slot.defined ? entry.values[i].to(slot.device) : at::Tensor());
  }
  return out;
}

}  // namespace smp::pipeline
