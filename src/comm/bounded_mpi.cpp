// The MPI calls that make communicators, each bounded by the communication timeout: a rank
// that never arrives (crashed, or stuck in earlier work) is reported by the others instead of
// hanging them.
#include <mpi.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <future>
#include <memory>
#include <thread>

#include "internal.h"
#include "smp/comm/launch.h"
#include "smp/core/error.h"

namespace smp::comm::detail {
namespace {

using Clock = std::chrono::steady_clock;

[[noreturn]] void timed_out(const std::string& what, double timeout_s) {
  throw TimeoutError("smp::init on world rank " + std::to_string(world_rank()) + ": " + what +
                     " did not complete within comm_timeout_s (" + std::to_string(timeout_s) +
                     " s): a rank never arrived (it crashed, or is still busy in earlier "
                     "work); abort the job.");
}

// Fault injection for tests: SMP_TEST_STALL="<world rank>:<call>" makes that rank stall
// forever in the call whose description starts with <call>.
void stall_if_asked(const std::string& what) {
  const char* stall = std::getenv("SMP_TEST_STALL");
  if (!stall) return;
  const std::string spec = stall;
  const size_t colon = spec.find(':');
  if (colon == std::string::npos || spec.substr(0, colon) != std::to_string(world_rank())) return;
  if (what.rfind(spec.substr(colon + 1), 0) == 0) {
    for (;;) sleep(3600);
  }
}

}  // namespace

MPI_Comm dup_within(MPI_Comm comm, const std::string& what, double timeout_s) {
  stall_if_asked(what);
  MPI_Comm copy = MPI_COMM_NULL;
  MPI_Request request = MPI_REQUEST_NULL;
  if (MPI_Comm_idup(comm, &copy, &request) != MPI_SUCCESS) throw CommError("smp: " + what + " failed");
  const auto start = Clock::now();
  for (int done = 0; !done;) {
    if (MPI_Test(&request, &done, MPI_STATUS_IGNORE) != MPI_SUCCESS) {
      throw CommError("smp: " + what + " failed");
    }
    if (done) break;
    if (std::chrono::duration<double>(Clock::now() - start).count() > timeout_s) {
      timed_out(what, timeout_s);
    }
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  return copy;
}

// MPI has no non-blocking split: the call runs on a thread of its own while this one waits
// within the timeout. Past it, the call stays blocked on its thread (a blocked MPI call cannot
// be cancelled; MPI_THREAD_MULTIPLE keeps the rest of MPI usable, so the main can still abort
// the job) and this one throws.
MPI_Comm split_within(const std::string& what, double timeout_s,
                      std::function<int(MPI_Comm*)> split_call) {
  auto result = std::make_shared<std::promise<MPI_Comm>>();
  std::future<MPI_Comm> split = result->get_future();
  std::thread([result, what, split_call = std::move(split_call)] {
    stall_if_asked(what);
    MPI_Comm out = MPI_COMM_NULL;
    if (split_call(&out) != MPI_SUCCESS) {
      result->set_exception(std::make_exception_ptr(CommError("smp: " + what + " failed")));
    } else {
      result->set_value(out);
    }
  }).detach();
  if (split.wait_for(std::chrono::duration<double>(timeout_s)) != std::future_status::ready) {
    timed_out(what, timeout_s);
  }
  return split.get();
}

}  // namespace smp::comm::detail
