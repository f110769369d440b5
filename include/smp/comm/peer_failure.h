// A rank that fails inside a training step tells the others at once.
//
// Inside a step, ranks wait on each other: a pipeline stage on its neighbours' activations and
// gradients, a replica on the others' gradient reduction. When one rank's step throws (a layer's
// error, bad data on that rank), the others would wait until comm_timeout_s and then report a
// timeout that hides the cause. Instead, smp::step announces the error to every rank
// (announce_failure), and a wait inside a step (while a StepWatch is alive) that sees such an
// announcement stops with smp::PeerFailedError naming the failed rank and its error. Waits
// outside steps (agreements, checkpoints, shutdown) do not look: the failed rank itself still
// joins those, so the ranks can agree on the failure and all raise.
#pragma once

#include <string>

namespace smp::comm {

// Sends "world rank R failed: <what>" to every other world rank. Non-blocking; does nothing
// without a process group of more than one rank.
void announce_failure(const std::string& what);

// While one is alive (on any thread), waits check for announcements (the steps of smp::step).
class StepWatch {
 public:
  StepWatch();
  ~StepWatch();
  StepWatch(const StepWatch&) = delete;
  StepWatch& operator=(const StepWatch&) = delete;
};

// Receives and drops announcements that arrived while no wait looked for them (after the ranks
// agreed on a failure), so they do not end a later step.
void clear_peer_failures();

}  // namespace smp::comm
