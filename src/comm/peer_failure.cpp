// Announcing a failed step, and stopping the waits on it (see peer_failure.h). The messages
// travel on WORLD's control communicator, which only diagnosis and bootstrap use otherwise.
#include "smp/comm/peer_failure.h"

#include <atomic>
#include <deque>
#include <mutex>

#include "internal.h"
#include "smp/core/error.h"

namespace smp::comm {
namespace {

constexpr int kFailureTag = 13;
constexpr int kFailureBytes = 1024;

std::mutex g_mutex;                         // guards what follows
std::weak_ptr<detail::GroupState> g_world;  // the current init's WORLD
std::deque<std::string> g_sent;             // the announcements' buffers (MPI reads them later)
std::atomic<int> g_watching{0};             // StepWatch objects alive

std::shared_ptr<detail::GroupState> world() {
  std::lock_guard<std::mutex> lock(g_mutex);
  return g_world.lock();
}

// An announcement waiting to be received, with its text; empty when none.
std::string receive_one(detail::GroupState& group) {
  // A matched probe: two threads probing at once cannot both take the one message.
  int flag = 0;
  MPI_Message message;
  if (MPI_Improbe(MPI_ANY_SOURCE, kFailureTag, group.control, &flag, &message, MPI_STATUS_IGNORE) !=
          MPI_SUCCESS ||
      !flag) {
    return {};
  }
  std::string text(kFailureBytes, '\0');
  MPI_Mrecv(text.data(), kFailureBytes, MPI_CHAR, &message, MPI_STATUS_IGNORE);
  return text.c_str();
}

}  // namespace

namespace detail {

void set_failure_channel(const std::shared_ptr<GroupState>& world_group) {
  std::lock_guard<std::mutex> lock(g_mutex);
  g_world = world_group;
}

void check_peer_failure(const WorkState& work) {
  if (g_watching.load(std::memory_order_relaxed) == 0) return;
  const std::shared_ptr<GroupState> group = world();
  if (!group) return;
  const std::string text = receive_one(*group);
  if (text.empty()) return;
  throw PeerFailedError("smp: " + work.label() + " abandoned: " + text);
}

}  // namespace detail

void announce_failure(const std::string& what) {
  const std::shared_ptr<detail::GroupState> group = world();
  if (!group || group->size == 1) return;
  std::lock_guard<std::mutex> lock(g_mutex);
  std::string& text = g_sent.emplace_back(
      "world rank " + std::to_string(group->world_ranks[group->rank]) + " failed in its step: " + what);
  text.resize(kFailureBytes - 1);
  text.push_back('\0');
  for (int peer = 0; peer < group->size; ++peer) {
    if (peer == group->rank) continue;
    MPI_Request request;
    if (MPI_Isend(text.data(), kFailureBytes, MPI_CHAR, peer, kFailureTag, group->control, &request) ==
        MPI_SUCCESS) {
      MPI_Request_free(&request);  // the buffer stays in g_sent
    }
  }
}

StepWatch::StepWatch() { g_watching.fetch_add(1); }
StepWatch::~StepWatch() { g_watching.fetch_sub(1); }

void clear_peer_failures() {
  const std::shared_ptr<detail::GroupState> group = world();
  if (!group) return;
  while (!receive_one(*group).empty()) {
  }
}

}  // namespace smp::comm
