// Communicator: one group of ranks and every operation smp runs over it.
//
// Host (CPU) tensors travel over MPI, device (CUDA) tensors over NCCL; the caller does not
// choose, the tensor's device does. Every call is collective over the group unless it says
// otherwise, returns a Work at once, and counts its calls and bytes (see Counters).
// Communicators are made by ProcessGroups (process_groups.h), one per group kind.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "smp/comm/work.h"

namespace smp::comm {

enum class ReduceOp { kSum, kAvg, kMax, kMin };
const char* to_string(ReduceOp op);

// Calls and payload bytes per operation name ("all_reduce", "all_gather", "reduce_scatter",
// "broadcast", "barrier", "send", "recv"). The payload is what this rank hands in: the tensor
// for all_reduce/broadcast/send/recv, the local input for all_gather and reduce_scatter.
struct OpStats {
  int64_t calls = 0;
  int64_t bytes = 0;
};
struct Counters {
  std::map<std::string, OpStats> by_op;
  OpStats total() const;
  OpStats get(const std::string& op) const;
};

namespace detail {
struct GroupState;
}

class Communicator {
 public:
  // Made by ProcessGroups (or detail::make_group in tests) over an MPI communicator.
  explicit Communicator(std::shared_ptr<detail::GroupState> state);
  ~Communicator();
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;

  const std::string& name() const;
  int rank() const;  // this rank's index in the group
  int size() const;
  const std::vector<int>& world_ranks() const;
  double timeout_s() const;        // comm_timeout_s: every wait on communication
  double phase_timeout_s() const;  // phase_timeout_s: waits on a long phase (agree.h)

  // --- Collectives (every group member calls them, in the same order) ------------------
  // In place; any shape, any size (0 included). kAvg needs a floating dtype.
  Work all_reduce(at::Tensor& tensor, ReduceOp op = ReduceOp::kSum);
  // `output` holds size() * input.numel() elements: rank i's input at offset i * numel.
  Work all_gather(at::Tensor& output, const at::Tensor& input);
  // `input` holds size() * output.numel() elements; rank i gets the reduction of slice i.
  Work reduce_scatter(at::Tensor& output, const at::Tensor& input, ReduceOp op = ReduceOp::kSum);
  // In place; `root` is a group rank.
  Work broadcast(at::Tensor& tensor, int root);
  Work barrier();

  // --- Point to point (only the two ranks call them) ----------------------------------------
  // `peer` is a group rank; tags in [0, kMaxTag). A message is one or more tensors (undefined
  // ones allowed: they travel as a mark); its header says their shapes, dtypes and paths, so
  // the receiver need not know them. Receives match messages by tag, in the order sent, as in
  // MPI. Host tensors travel over MPI, device tensors over NCCL, each ordered pair of ranks on
  // its own channel: a send never waits behind this rank's receives, so two ranks may both send
  // before they receive, whatever the size.
  static constexpr int kMaxTag = 1 << 20;
  // Keeps the tensors alive until done.
  Work send(const std::vector<at::Tensor>& tensors, int peer, int tag = 0);
  Work send(const at::Tensor& tensor, int peer, int tag = 0);
  // Receives a message whatever its shapes and dtypes. result() is its first tensor, results()
  // all of them. Host tensors arrive on the host, moved to `device` when it is a CUDA device;
  // CUDA tensors arrive on this rank's GPU and need a CUDA `device` (smp::CommError otherwise).
  Work recv(int peer, int tag = 0, at::Device device = at::kCPU);
  // Receives one tensor into `output`, which must have the sent shape and dtype (else
  // smp::CommError naming both).
  Work recv_into(at::Tensor& output, int peer, int tag = 0);
  // Reads the headers that are in and starts their payloads. Never blocks; for loops that
  // compute between receives.
  void progress();

  // --- Accounting ---------------------------------------------------------------------------
  const Counters& counters() const;
  void reset_counters();

 private:
  std::shared_ptr<detail::GroupState> state_;
};

}  // namespace smp::comm
