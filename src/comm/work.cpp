// Waiting on communication: the polling loop with its deadline, and what a timeout reports.
//
// Every wait polls a nonblocking operation against the group's deadline. The first 50 ms it
// polls with sched_yield (fast hand-offs, and MPI needs the polls to progress large
// transfers); after that it sleeps between polls, growing to 2 ms, so a rank waiting on a
// pipeline peer gives its core to the ranks that compute. Where the node runs more ranks than a
// rank has cores, the spin lasts 1 ms: a yielding rank still takes its share of a core that a
// computing rank needs (GroupState::spin).
#include <sched.h>

#include <algorithm>
#include <chrono>
#include <sstream>
#include <thread>

#include "internal.h"
#include "smp/core/error.h"

namespace smp::comm {

using Clock = std::chrono::steady_clock;

Work::Work(std::shared_ptr<detail::WorkState> state) : state_(std::move(state)) {}

bool Work::is_completed() {
  if (!state_ || state_->done) return true;
  state_->done = state_->poll();
  return state_->done;
}

void Work::wait() {
  if (state_) wait(state_->group->timeout_s);
}

void Work::wait(double timeout_s) {
  if (is_completed()) return;
  if (state_->wait_on_stream()) return;
  const auto start = Clock::now();
  const bool diagnose = state_->peer < 0;  // collectives ask the group; p2p names its peer
  const auto timeout = std::chrono::duration<double>(
      diagnose ? timeout_s - detail::diagnosis_grace_s(timeout_s) : timeout_s);
  auto sleep = std::chrono::microseconds(100);
  while (!is_completed()) {
    state_->group->receives->advance_all();
    detail::check_peer_failure(*state_);
    const auto waited = Clock::now() - start;
    if (waited >= timeout) {
      throw TimeoutError(detail::diagnose_timeout(
          *state_, std::chrono::duration<double>(waited).count()));
    }
    if (waited < state_->group->spin) {
      sched_yield();
    } else {
      std::this_thread::sleep_for(sleep);
      sleep = std::min(sleep * 2, std::chrono::microseconds(2000));
    }
  }
}

const at::Tensor& Work::result() const {
  static const at::Tensor kEmpty;
  return state_ ? state_->result : kEmpty;
}

const std::vector<at::Tensor>& Work::results() const {
  static const std::vector<at::Tensor> kNone;
  return state_ ? state_->results : kNone;
}

void wait_all(std::initializer_list<Work*> works) {
  for (Work* work : works) work->wait();
}

namespace detail {

std::string WorkState::label() const {
  std::ostringstream out;
  out << op;
  if (seq >= 0) out << " #" << seq;
  out << " on " << group->describe();
  if (peer >= 0) out << " with peer " << group->describe_peer(peer);
  return out.str();
}

bool MpiWork::poll() {
  int flag = 0;
  check_mpi(MPI_Testall(static_cast<int>(requests.size()), requests.data(), &flag,
                        MPI_STATUSES_IGNORE),
            op, *group);
  if (!flag) return false;
  if (on_complete) on_complete();
  keep_alive.clear();
  return true;
}

namespace {

// What each rank tells the others when it times out in a collective.
constexpr int kDiagBytes = 256;
constexpr int kDiagTag = 7;

std::string join_peers(const GroupState& group, const std::vector<int>& peers) {
  std::ostringstream out;
  for (size_t i = 0; i < peers.size(); ++i) {
    out << (i ? ", " : "") << group.describe_peer(peers[i]);
  }
  return out.str();
}

// Tells every other member what this rank waits in and listens for the same from them for a
// grace period. Members that say nothing did not reach a wait on this group: dead, hung, or
// busy elsewhere.
std::string ask_group(const WorkState& work) {
  GroupState& group = *work.group;
  std::string mine = work.op + (work.seq >= 0 ? " #" + std::to_string(work.seq) : "");
  mine.resize(kDiagBytes - 1, '\0');
  std::vector<std::string> theirs(group.size, std::string(kDiagBytes, '\0'));
  std::vector<MPI_Request> sends;
  std::vector<MPI_Request> recvs(group.size, MPI_REQUEST_NULL);
  for (int peer = 0; peer < group.size; ++peer) {
    if (peer == group.rank) continue;
    MPI_Request request;
    MPI_Issend(mine.data(), kDiagBytes, MPI_CHAR, peer, kDiagTag, group.control, &request);
    sends.push_back(request);
    MPI_Irecv(theirs[peer].data(), kDiagBytes, MPI_CHAR, peer, kDiagTag, group.control,
              &recvs[peer]);
  }
  const double grace_s = diagnosis_grace_s(group.timeout_s);
  const auto deadline = Clock::now() + std::chrono::duration<double>(grace_s);
  std::vector<bool> heard(group.size, false);
  heard[group.rank] = true;
  while (Clock::now() < deadline &&
         !std::all_of(heard.begin(), heard.end(), [](bool h) { return h; })) {
    for (int peer = 0; peer < group.size; ++peer) {
      int flag = 0;
      if (!heard[peer] && MPI_Test(&recvs[peer], &flag, MPI_STATUS_IGNORE) == MPI_SUCCESS &&
          flag) {
        heard[peer] = true;
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  // Requests left pending belong to a broken group; the caller aborts the job next.
  std::vector<int> silent;
  std::ostringstream waiting;
  for (int peer = 0; peer < group.size; ++peer) {
    if (peer == group.rank) continue;
    if (!heard[peer]) {
      silent.push_back(peer);
    } else {
      waiting << (waiting.tellp() > 0 ? ", " : "") << group.describe_peer(peer) << " in "
              << theirs[peer].c_str();
    }
  }
  std::ostringstream out;
  if (!silent.empty()) out << "; no word from " << join_peers(group, silent);
  if (waiting.tellp() > 0) out << "; also waiting: " << waiting.str();
  return out.str();
}

}  // namespace

double diagnosis_grace_s(double timeout_s) { return std::min(timeout_s / 4, 5.0); }

std::string diagnose_timeout(const WorkState& work, double waited_s) {
  std::ostringstream out;
  out.precision(3);
  out << "smp: " << work.label() << " timed out after " << waited_s << " s on world rank "
      << work.group->world_ranks[work.group->rank];
  if (work.peer >= 0) {
    out << "; the peer never completed its side (dead, hung, or waiting elsewhere)";
  } else {
    out << ask_group(work);
  }
  out << ". The communicator is unusable now; abort the job.";
  return out.str();
}

}  // namespace detail
}  // namespace smp::comm
