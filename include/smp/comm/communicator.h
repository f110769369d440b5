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
  double timeout_s() const;

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
  // `peer` is a group rank; tags in [0, kMaxTag). Messages between two ranks with the same tag
  // arrive in the order they were sent.
  static constexpr int kMaxTag = 1 << 20;
  // Sends shape and dtype first, so the receiver need not know them. Keeps `tensor` alive
  // until done.
  Work send(const at::Tensor& tensor, int peer, int tag = 0);
  // Receives a tensor of whatever shape and dtype was sent, on the device given; result()
  // holds it.
  Work recv(int peer, int tag = 0, at::Device device = at::kCPU);
  // Receives into `output`, which must have the sent shape and dtype (else smp::CommError
  // naming both).
  Work recv_into(at::Tensor& output, int peer, int tag = 0);

  // --- Accounting ---------------------------------------------------------------------------
  const Counters& counters() const;
  void reset_counters();

 private:
  std::shared_ptr<detail::GroupState> state_;
};

}  // namespace smp::comm
