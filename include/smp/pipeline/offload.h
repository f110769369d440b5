// Activation offloading (SMP's offload_activations): where the executor parks the saved inputs
// of checkpointed runs between their forward and their backward.
//
// A store takes a microbatch's tensors with put (asynchronous: the caller may drop its own
// references at once), starts bringing them back with prefetch, and hands them back with take
// (blocking until they are in memory again). Two kinds:
//  - FileStore (host tensors): one temporary file in a directory of local disk, written and read
//    back by a worker thread with pwrite/pread. The file's pages live in the page cache, which is
//    not part of the process's resident memory, so the activations really leave it; it also serves
//    device users short of host memory (NVMe offload). The file is removed when the store dies.
//  - PinnedStore (device tensors): pinned host buffers filled and emptied on a side stream, ordered
//    against the compute stream by events.
// Errors of the worker (disk full, I/O error) are rethrown by take as smp::Error naming the file.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <ATen/ATen.h>

#include "smp/layer/layer.h"

namespace smp::pipeline {

class ActivationStore {
 public:
  using Key = int64_t;
  virtual ~ActivationStore() = default;
  // Keeps `values` (undefined tensors allowed) under a key not in use; returns before the copy ends.
  virtual void put(Key key, Values values) = 0;
  // Starts bringing `key` back; a second prefetch of the same key does nothing.
  virtual void prefetch(Key key) = 0;
  // The values put under `key`, once in memory again (prefetching first if nobody did); the key
  // is free afterwards.
  virtual Values take(Key key) = 0;
};

// Options of the executor's offloading (from Config: offload_activations,
// activation_loading_horizon; the directory is where FileStore puts its file).
struct OffloadOptions {
  bool enabled = false;
  int horizon = 4;        // a load starts this many actions before its backward
  std::string directory;  // FileStore's directory: files::temp_dir() when empty
};

// The store for tensors on `device`: FileStore for the host, PinnedStore for a GPU.
std::unique_ptr<ActivationStore> make_activation_store(const at::Device& device,
                                                       const std::string& directory);

class FileStore : public ActivationStore {
 public:
  // Creates a file of its own in `directory` (throws smp::Error naming it when it cannot); the
  // file is unlinked at once, so it goes with the descriptor even if the process is killed.
  explicit FileStore(const std::string& directory);
  ~FileStore() override;  // waits for the worker, then removes the file
  FileStore(const FileStore&) = delete;
  FileStore& operator=(const FileStore&) = delete;

  void put(Key key, Values values) override;
  void prefetch(Key key) override;
  Values take(Key key) override;

  const std::string& path() const { return path_; }
  int64_t file_bytes() const;  // the file's length: the largest the stored set has been

 private:
  struct Slot {  // one tensor of an entry
    bool defined = false;
    at::ScalarType dtype = at::kFloat;
    std::vector<int64_t> sizes;
    at::Device device = at::kCPU;  // where take returns it
    int64_t offset = 0;
    int64_t bytes = 0;
  };
  enum class State { kWriting, kOnDisk, kLoaded };
  struct Entry {
    State state = State::kWriting;
    bool load_requested = false;
    std::vector<Slot> slots;
    Values values;  // while writing: the host copies; when loaded: what take returns
    std::exception_ptr error;
  };

  int64_t allocate(int64_t bytes);  // an extent of the file (callers hold mutex_)
  void release(int64_t offset, int64_t bytes);
  void submit(std::function<void()> job);
  void work();
  void write_entry(Key key);
  void read_entry(Key key);

  std::string path_;
  int fd_ = -1;
  mutable std::mutex mutex_;
  std::condition_variable changed_;
  std::map<Key, Entry> entries_;
  std::map<int64_t, int64_t> free_;  // free extents of the file: offset -> bytes
  int64_t end_ = 0;                  // the file's length
  std::deque<std::function<void()>> jobs_;
  bool stopping_ = false;
  std::thread worker_;
};

}  // namespace smp::pipeline
