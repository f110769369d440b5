// Internal state shared by the communicator, its Work handles and the timeout diagnosis.
// Not installed: only src/comm includes it.
#pragma once

#include <chrono>
#include <mpi.h>

#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "smp/comm/communicator.h"

namespace smp::comm::detail {

class NcclComm;      // nccl.cpp; null until a device tensor first crosses the group
class EmulatedNccl;  // nccl_emulation.cpp; likewise, under SMP_EMULATE_NCCL=1
struct WorkState;
struct P2PState;  // p2p.cpp: what this rank knows of the messages from each peer

// Receives whose second phase (posting the payload once the header says what comes) waits
// for someone to poll them. Every wait advances all of them, in every group that shares this
// registry (ProcessGroups shares one among its groups): a rank blocked in one operation must
// still post the payload receive a peer's send depends on, or two ranks could wait on each
// other forever.
class PendingReceives {
 public:
  void add(const std::shared_ptr<WorkState>& work);
  // Advances every live, unfinished receive one phase if it can. Never blocks or throws.
  void advance_all();

 private:
  std::mutex mutex_;
  std::vector<std::weak_ptr<WorkState>> works_;
};

// Everything one group owns. Shared by the Communicator and the Works it hands out, so a
// Work can report on its group even while the Communicator is being destroyed.
struct GroupState : std::enable_shared_from_this<GroupState> {
  MPI_Comm comm = MPI_COMM_NULL;     // collectives, p2p headers and payloads
  MPI_Comm control = MPI_COMM_NULL;  // only the timeout diagnosis talks here
  std::string name;
  std::vector<int> world_ranks;
  int rank = 0;
  int size = 1;
  double timeout_s = 60.0;
  double phase_timeout_s = 3600.0;  // set by ProcessGroups
  // How long a wait polls with sched_yield before it sleeps between polls (set by ProcessGroups:
  // short when the node runs more ranks than this process may use cores).
  std::chrono::microseconds spin{50000};

  std::mutex mutex;  // guards what follows: calls may come from several threads
  Counters counters;
  int64_t num_collectives = 0;     // sequence number of the next collective, for diagnosis
  std::vector<int64_t> send_seq;   // per peer: payload tags of this rank's sends
  std::shared_ptr<NcclComm> nccl;  // shared_ptr: destructible where NcclComm is incomplete
  // Point-to-point channels: (peer, this rank sends) -> a communicator of the two.
  std::map<std::pair<int, bool>, std::shared_ptr<NcclComm>> nccl_channels;
  std::shared_ptr<EmulatedNccl> emulated;
  std::shared_ptr<P2PState> p2p;  // made on the first point-to-point call
  std::string no_device_path;     // why device tensors cannot cross this group, if they cannot
  std::shared_ptr<PendingReceives> receives = std::make_shared<PendingReceives>();

  ~GroupState();
  // "TP_GROUP (world ranks [0, 1])"
  std::string describe() const;
  // "rank 1 (world rank 3)"
  std::string describe_peer(int peer) const;
  // Counts a call and returns its collective sequence number.
  int64_t count(const std::string& op, int64_t bytes);
};

// Communicators made within timeout_s (bounded_mpi.cpp): past it, a TimeoutError naming
// `what` (e.g. "MPI_Comm_split for TP_GROUP"). The copy is polled (MPI_Comm_idup); a split
// (`split_call` makes it: MPI_Comm_split or MPI_Comm_split_type), which MPI cannot do without
// blocking, runs on a thread of its own; the callable must own what it reads.
MPI_Comm dup_within(MPI_Comm comm, const std::string& what, double timeout_s);
MPI_Comm split_within(const std::string& what, double timeout_s,
                      std::function<int(MPI_Comm*)> split_call);

// Takes ownership of `comm`. `name` is what errors print ("TP_GROUP"); `world_ranks[i]` is
// the world rank of group rank i. Every wait is bounded by `timeout_s`.
// Groups made with the same `receives` advance each other's pending receives while waiting.
std::shared_ptr<GroupState> make_group(MPI_Comm comm, std::string name,
                                       std::vector<int> world_ranks, double timeout_s,
                                       std::shared_ptr<PendingReceives> receives = nullptr);

// One operation in flight. poll() advances it without blocking and reports completion.
struct WorkState {
  std::shared_ptr<GroupState> group;
  std::string op;     // "all_reduce #12" style label for messages is built from op + seq
  int64_t seq = -1;   // collective sequence number; -1 for point to point
  int peer = -1;      // group rank of the peer for point to point
  bool done = false;
  at::Tensor result;
  std::vector<at::Tensor> results;  // a received message's tensors

  virtual ~WorkState() = default;
  virtual bool poll() = 0;
  // Moves a multi-phase operation to its next phase if it can, without blocking or throwing
  // (errors are kept for poll). Used by PendingReceives.
  virtual void advance() {}
  // For operations on a device stream: makes the caller's current stream wait for it and
  // returns true (wait() then returns without blocking the host). Others return false.
  virtual bool wait_on_stream() { return false; }
  std::string label() const;  // "all_reduce #12 on TP_GROUP (world ranks [0, 1])"
};

// MPI requests plus what to do once they all complete (copy back, divide for kAvg, ...).
struct MpiWork : WorkState {
  std::vector<MPI_Request> requests;
  std::vector<at::Tensor> keep_alive;
  std::function<void()> on_complete;
  bool poll() override;
};

// Throws smp::CommError naming the call, the group and MPI's own words when rc is an error.
void check_mpi(int rc, const std::string& what, const GroupState& group);

// `count` as MPI's int count; smp::CommError naming `op` and the group when it does not fit.
int to_int_count(int64_t count, const std::string& op, const GroupState& group);

// MPI's view of a dtype and a reduction; 16-bit floats use smp's own ops.
MPI_Datatype mpi_datatype(at::ScalarType dtype);
MPI_Op mpi_op(ReduceOp op, at::ScalarType dtype);

// How much of a group's timeout is kept for asking the other members what they wait on, so
// that detection plus diagnosis together end within the timeout.
double diagnosis_grace_s(double timeout_s);
// The peer-failure channel (peer_failure.cpp): WORLD of the current init; and, inside a step,
// a PeerFailedError if a rank announced its failure.
void set_failure_channel(const std::shared_ptr<GroupState>& world_group);
void check_peer_failure(const WorkState& work);

// Builds the TimeoutError message for `work`: for collectives it first asks every other
// group member, over the control communicator, which operation it is waiting in.
std::string diagnose_timeout(const WorkState& work, double waited_s);

}  // namespace smp::comm::detail
