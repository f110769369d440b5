// Work: the handle every asynchronous communication call returns (c10d's shape).
//
// A Work is cheap to copy (shared state). wait() blocks until the operation completes or
// its communicator's timeout passes; on timeout it throws smp::TimeoutError naming the
// operation, the group and the peers that did not arrive. After a timeout or a CommError
// the communicator is unusable: catch at the top, print, and call smp::comm::abort_world().
#pragma once

#include <memory>
#include <vector>

#include <ATen/core/Tensor.h>

namespace smp::comm {

namespace detail {
struct WorkState;
}

class Work {
 public:
  Work() = default;  // an already completed, empty Work
  explicit Work(std::shared_ptr<detail::WorkState> state);

  // Blocks until done. Yields the core while waiting (ranks may share cores).
  // Throws smp::TimeoutError / smp::CommError. Calling it again after success is a no-op.
  void wait();
  // The same, bounded by `timeout_s` instead of the communicator's comm_timeout_s: for a wait
  // on peers busy in a known long phase (agree.h).
  void wait(double timeout_s);
  // Advances the operation once and reports whether it is done. Never blocks.
  bool is_completed();
  // The operation's output: the received tensor for recv, the output tensor otherwise.
  // Valid after wait().
  const at::Tensor& result() const;
  // A received message's tensors (undefined where the sender sent none). Valid after wait().
  const std::vector<at::Tensor>& results() const;

 private:
  std::shared_ptr<detail::WorkState> state_;
};

// Waits for every Work in order.
void wait_all(std::initializer_list<Work*> works);

}  // namespace smp::comm
