// HostSyncCounter: what a stretch of code dispatches, and where a GPU run of it would wait for
// the device, counted on any machine by a global ATen RecordFunction observer at
// RecordScope::FUNCTION (bench/step_ops.sh's figures; the capture-safety tests of a
// CUDA-graph step). Autograd's BACKWARD_FUNCTION records are not counted; the ATen ops the
// backward nodes call are.
//
// Counted per phase (a name the caller sets; nothing is counted before the first phase or
// while paused):
//   - top-level ops: not called from inside another recorded op (per thread): what the code
//     dispatches itself, whatever a CPU kernel decomposes into; `all` counts nested ones too;
//   - sync points: every aten::_local_scalar_dense (what .item() calls), every copy to the host
//     (aten::to / aten::_to_copy with an explicit CPU device argument, outermost only: on a CPU
//     run no-ops or casts, on a GPU device-to-host copies), every op whose name has
//     "synchronize" in it, and the ops that wait for their output's size on CUDA
//     (aten::nonzero, masked_select, unique*, equal). Not syncs: an item() on the result of a
//     counted copy to the host (the copy waited), the item() calls inside PyTorch's CPU
//     _fused_* optimizer kernels (they read each parameter's step count from its CPU tensor;
//     the CUDA kernels read it on the device), and item() in a phase marked host_tensors (the
//     caller knows those tensors live on the host in a GPU run too).
//
// One counter at a time per process (it owns the global callback). Not thread-safe to set
// phases from several threads; counting itself takes a lock.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>

namespace smp::train {

class HostSyncCounter {
 public:
  struct Phase {
    int64_t top = 0, all = 0, syncs = 0;
    int64_t scalar_dense = 0;        // aten::_local_scalar_dense, not-syncs included
    int64_t items = 0;               // aten::item
    int64_t host_items = 0;          // in a host_tensors phase: not syncs
    int64_t items_after_copy = 0;    // on a copy already brought to the host: not syncs
    int64_t fused_kernel_items = 0;  // inside a CPU _fused_* kernel: not syncs
    int64_t to_host = 0, synchronize = 0, dynamic_shape = 0;
    std::map<std::string, int64_t> sync_sites;  // op name -> syncs
    std::map<std::string, int64_t> top_ops;     // op name -> top-level calls
  };

  HostSyncCounter();  // registers the callback (and enables RecordFunction)
  ~HostSyncCounter();  // removes it
  HostSyncCounter(const HostSyncCounter&) = delete;
  HostSyncCounter& operator=(const HostSyncCounter&) = delete;

  // Counts from now on into `name` (created empty, or added to). host_tensors: item() calls
  // here read host tensors (not syncs).
  void phase(const std::string& name, bool host_tensors = false);
  void pause();  // counts nothing until the next phase()
  void clear();  // forgets every phase and the copies seen

  const std::map<std::string, Phase>& phases() const { return phases_; }
  Phase total() const;  // every phase summed

  struct State;  // the observer's (src/train/host_syncs.cpp)

 private:
  std::map<std::string, Phase> phases_;
  uint64_t handle_ = 0;
};

}  // namespace smp::train
