// allgather_objects, on_rank0, on_every_rank over one communicator (see agree.h).
#include "smp/comm/agree.h"

#include <ATen/ATen.h>

#include "smp/core/error.h"

namespace smp::comm {

at::Tensor bytes_tensor(const std::string& obj) {
  return at::from_blob(const_cast<char*>(obj.data()), {static_cast<int64_t>(obj.size())}, at::kByte)
      .clone();
}

std::string tensor_bytes(const at::Tensor& t) {
  return std::string(static_cast<const char*>(t.data_ptr()), t.numel());
}

namespace {

// Every member's byte string; the first wait (for the slowest member to arrive) bounded by
// `arrival_timeout_s`.
std::vector<std::string> allgather_within(const std::string& obj, Communicator& group,
                                          double arrival_timeout_s) {
  // Sizes first, then every object padded to the largest.
  at::Tensor size = at::full({1}, static_cast<int64_t>(obj.size()), at::kLong);
  at::Tensor sizes = at::empty({group.size()}, at::kLong);
  group.all_gather(sizes, size).wait(arrival_timeout_s);
  const int64_t longest = sizes.max().item<int64_t>();
  at::Tensor mine = at::zeros({longest}, at::kByte);
  if (!obj.empty()) mine.narrow(0, 0, static_cast<int64_t>(obj.size())).copy_(bytes_tensor(obj));
  at::Tensor all = at::empty({longest * group.size()}, at::kByte);
  group.all_gather(all, mine).wait();
  std::vector<std::string> out;
  for (int r = 0; r < group.size(); ++r) {
    out.push_back(tensor_bytes(all.narrow(0, r * longest, sizes[r].item<int64_t>())));
  }
  return out;
}

// A wait on members busy in the phase `what`: bounded by phase_timeout_s, and a timeout says so.
template <class F>
auto after_phase(const std::string& what, Communicator& group, F&& wait) {
  try {
    return wait(group.phase_timeout_s());
  } catch (const TimeoutError& e) {
    throw TimeoutError(what + ": a member did not finish this phase within phase_timeout_s (" +
                       std::to_string(group.phase_timeout_s()) + " s): " + e.what());
  }
}

}  // namespace

std::vector<std::string> allgather_objects(const std::string& obj, Communicator& group) {
  return allgather_within(obj, group, group.timeout_s());
}

std::string on_rank0(const std::string& what, const std::function<std::string()>& work,
                     Communicator& group) {
  // A one-byte verdict ('+' result, '-' error) then the text; only rank 0's counts.
  std::string message;
  if (group.rank() == 0) {
    try {
      message = "+" + work();
    } catch (const std::exception& e) {
      message = std::string("-") + e.what();
    }
  }
  // Rank 0's message to everyone: its length (waiting for rank 0's work), then its bytes.
  at::Tensor length = at::full({1}, static_cast<int64_t>(message.size()), at::kLong);
  Work sent = group.broadcast(length, 0);
  after_phase(what, group, [&](double timeout_s) { sent.wait(timeout_s); });
  at::Tensor bytes = group.rank() == 0 ? bytes_tensor(message) : at::empty({length.item<int64_t>()}, at::kByte);
  if (bytes.numel() > 0) group.broadcast(bytes, 0).wait();
  message = tensor_bytes(bytes);
  if (message.empty() || message[0] != '+') {
    throw ConfigError(what + ": " + (message.empty() ? std::string("no result") : message.substr(1)));
  }
  return message.substr(1);
}

void on_every_rank(const std::string& what, const std::function<void()>& work, Communicator& group) {
  // One letter for the kind (so every rank throws the kind the failing rank threw), then the
  // message; empty when the work succeeded.
  std::string error;
  try {
    work();
  } catch (const ConfigError& e) {
    error = std::string("C") + e.what();
  } catch (const CheckpointError& e) {
    error = std::string("K") + e.what();
  } catch (const std::exception& e) {
    error = std::string("E") + e.what();
  }
  const std::vector<std::string> all = after_phase(what, group, [&](double timeout_s) {
    return allgather_within(error, group, timeout_s);
  });
  for (size_t r = 0; r < all.size(); ++r) {
    if (all[r].empty()) continue;
    const std::string message = what + " failed on rank " + std::to_string(r) + ": " + all[r].substr(1);
    if (all[r][0] == 'C') throw ConfigError(message);
    if (all[r][0] == 'K') throw CheckpointError(message);
    throw Error(message);
  }
}

}  // namespace smp::comm
