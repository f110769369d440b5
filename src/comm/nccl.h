// The device path of a Communicator: NCCL over the same group (bootstrapped over the group's
// MPI communicator), or its emulation on host tensors. ProcessGroups makes every group's
// device communicator when it makes the groups (start_device_path); a group made elsewhere
// (tests' own) makes its own on the first device tensor. Every function is collective over the
// group like its MPI twin in communicator.cpp. Without NCCL in the build each throws
// smp::CommError saying so.
#pragma once

#include <memory>
#include <vector>

#include <ATen/core/Tensor.h>

#include "internal.h"

namespace smp::comm::detail {

Work nccl_all_reduce(const std::shared_ptr<GroupState>& group, at::Tensor& tensor, ReduceOp op,
                     int64_t seq);
Work nccl_all_gather(const std::shared_ptr<GroupState>& group, at::Tensor& output,
                     const at::Tensor& input, int64_t seq);
Work nccl_reduce_scatter(const std::shared_ptr<GroupState>& group, at::Tensor& output,
                         const at::Tensor& input, ReduceOp op, int64_t seq);
Work nccl_broadcast(const std::shared_ptr<GroupState>& group, at::Tensor& tensor, int root,
                    int64_t seq);
// Payloads only (p2p.cpp sends their headers over MPI), each on the channel of its ordered
// pair of ranks: a communicator of those two ranks with its own stream, so sends and receives
// between two ranks never wait behind each other. `payload`/`buffer` are contiguous.
Work nccl_send(const std::shared_ptr<GroupState>& group, const at::Tensor& payload, int peer);
Work nccl_recv(const std::shared_ptr<GroupState>& group, const at::Tensor& buffer, int peer);

// Picks this rank's GPU and makes the device communicator of every group in `groups`, and the
// channel of every ordered pair of ranks in `p2p_group`, in the order given (the same on every
// rank), each within the groups' timeout (smp::TimeoutError naming the group otherwise). With
// CUDA: the device is local_rank, set before any other CUDA call; a node with more ranks than
// GPUs gets no device path, and a CUDA tensor that reaches a group later is a CommError saying
// why. Under the emulation: the emulated communicators. Else nothing.
void start_device_path(const std::vector<std::shared_ptr<GroupState>>& groups,
                       const std::shared_ptr<GroupState>& p2p_group, int local_rank,
                       int local_size);

// --- The emulation (nccl_emulation.cpp): NCCL's rules on host tensors ---------------------------
// SMP_EMULATE_NCCL=1 turns it on for the whole process.
bool emulating_nccl();
// Whether `t` travels over the device path: CUDA tensors, and under the emulation the
// floating-point host tensors, which stand for them.
bool on_device_path(const at::Tensor& t);
class EmulatedNccl;
// Makes `group`'s emulated communicator: collective over the group, bounded by its timeout.
void start_emulated(GroupState& group);
Work emulated_all_reduce(const std::shared_ptr<GroupState>& group, at::Tensor& tensor,
                         ReduceOp op, int64_t seq);
Work emulated_all_gather(const std::shared_ptr<GroupState>& group, at::Tensor& output,
                         const at::Tensor& input, int64_t seq);
Work emulated_reduce_scatter(const std::shared_ptr<GroupState>& group, at::Tensor& output,
                             const at::Tensor& input, ReduceOp op, int64_t seq);
Work emulated_broadcast(const std::shared_ptr<GroupState>& group, at::Tensor& tensor, int root,
                        int64_t seq);
// One payload on the channel to (`send`) or from `peer`.
Work emulated_p2p(const std::shared_ptr<GroupState>& group, const at::Tensor& tensor, int peer,
                  bool send);

}  // namespace smp::comm::detail
