// Helpers that take a group and make its ranks agree: on a result one rank computed, on
// whether a piece of work failed anywhere, on every rank's object. Each is collective over the
// communicator given (every member calls it, in the same order) and blocks. on_rank0 and
// on_every_rank wait for the work of a known long phase (preparing data, partitioning,
// checkpoint writers): that wait is bounded by the group's phase_timeout_s, not its
// comm_timeout_s, and a timeout names the phase (`what`).
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "smp/comm/communicator.h"

namespace smp::comm {

// A byte string as a CPU uint8 tensor (a copy) and back: how objects travel.
at::Tensor bytes_tensor(const std::string& obj);
std::string tensor_bytes(const at::Tensor& t);

// Every member's byte string, in group-rank order.
std::vector<std::string> allgather_objects(const std::string& obj, Communicator& group);

// Rank 0 of `group` runs `work` (profiling, preparing files, ...) and every member returns its
// result; if it throws, every member throws smp::ConfigError with rank 0's message prefixed by
// `what`. So one rank does the work and no rank waits on a failed one.
std::string on_rank0(const std::string& what, const std::function<std::string()>& work,
                     Communicator& group);

// Every member runs `work`; if any throws, every member throws "<what> failed on rank <r>:
// <message>" for the first failing rank, as a ConfigError or CheckpointError when that rank
// threw one, else smp::Error; so a failure on one rank stops them all together instead of
// leaving the rest waiting.
void on_every_rank(const std::string& what, const std::function<void()>& work, Communicator& group);

}  // namespace smp::comm
