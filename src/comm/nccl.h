// The device path of a Communicator: NCCL over the same group, created on the first device
// tensor that crosses it (bootstrapped over the group's MPI communicator). Every function is
// collective over the group like its MPI twin in communicator.cpp. Without NCCL in the build
// each throws smp::CommError saying so.
#pragma once

#include <memory>

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
// Payloads only: the header of a device send still travels over MPI.
Work nccl_send(const std::shared_ptr<GroupState>& group, const at::Tensor& payload, int peer);
Work nccl_recv(const std::shared_ptr<GroupState>& group, at::Tensor& buffer, int peer);

}  // namespace smp::comm::detail
