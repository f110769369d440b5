// The state smp::init builds, and SMP's rank helpers and object messaging on top of it.
#include "smp/runtime.h"

#include "smp/comm/agree.h"

#include <cstdio>
#include <memory>

#include <ATen/ATen.h>

namespace smp {
namespace {

// The one process-wide object: built by init, read by everything, freed by shutdown.
struct State {
  ParallelContext context;
  bool started_mpi = false;  // smp::init started MPI, so smp::shutdown finalises it
};
std::unique_ptr<State> g_state;

State& state() {
  if (!g_state) throw Error("smp: not initialised; call smp::init(config) on every rank first");
  return *g_state;
}

int group_rank(CommGroup kind) { return process_group(kind).rank(); }
int group_size(CommGroup kind) { return process_group(kind).size(); }

// Object messages travel over WORLD on a tag of their own.
constexpr int kObjectTag = comm::Communicator::kMaxTag - 1;

int to_world_rank(int rank, RankType rank_type) {
  const CommGroup group = [rank_type] {
    switch (rank_type) {
      case RankType::WORLD_RANK: return CommGroup::WORLD;
      case RankType::MP_RANK: return CommGroup::MP_GROUP;
      case RankType::PP_RANK: return CommGroup::PP_GROUP;
      case RankType::TP_RANK: return CommGroup::TP_GROUP;
      case RankType::DP_RANK: return CommGroup::DP_GROUP;
      case RankType::RDP_RANK: return CommGroup::RDP_GROUP;
    }
    return CommGroup::WORLD;
  }();
  const char* name = group == CommGroup::WORLD ? "world" : to_string(group);
  const std::vector<int> members = process_group(group).world_ranks();
  if (rank < 0 || rank >= static_cast<int>(members.size())) {
    throw CommError(std::string("smp: rank ") + std::to_string(rank) + " is not a rank of the " +
                    name + "; allowed 0.." + std::to_string(members.size() - 1));
  }
  return members[rank];
}

void send_world(const std::string& obj, int world_dest) {
  process_group(CommGroup::WORLD).send(comm::bytes_tensor(obj), world_dest, kObjectTag).wait();
}

}  // namespace

void init(const Config& config) {
  if (g_state) throw Error("smp: init called twice; call smp::shutdown() before init again");
  const bool started_mpi = !comm::mpi_initialized();
  comm::init_mpi();
  g_state.reset(new State{ParallelContext(config), started_mpi});
  // Accepted keys whose features smp lacks yet are said out loud, once, by rank 0.
  if (rank() == 0) {
    for (const std::string& warning : config.not_implemented_warnings()) {
      std::fprintf(stderr, "smp warning: %s\n", warning.c_str());
    }
  }
}

void init() { init(Config::from_env()); }
bool is_initialized() { return g_state != nullptr; }

void shutdown() {
  if (!g_state) return;
  barrier(CommGroup::WORLD);
  const bool finalise = g_state->started_mpi;
  g_state.reset();
  if (finalise) comm::finalize_mpi();
}

ParallelContext& context() { return state().context; }
const Config& config() { return context().config(); }
const Topology& topology() { return context().topology(); }
const comm::ProcessGroups& process_groups() { return context().groups(); }
comm::Communicator& process_group(CommGroup group) { return context().group(group); }

int rank() { return context().rank(); }
int size() { return context().size(); }
int local_rank() { return context().groups().local_rank(); }
int local_size() { return context().groups().local_size(); }
int pp_rank() { return group_rank(CommGroup::PP_GROUP); }
int pp_size() { return group_size(CommGroup::PP_GROUP); }
int tp_rank() { return group_rank(CommGroup::TP_GROUP); }
int tp_size() { return group_size(CommGroup::TP_GROUP); }
int dp_rank() { return group_rank(CommGroup::DP_GROUP); }
int dp_size() { return group_size(CommGroup::DP_GROUP); }
int rdp_rank() { return group_rank(CommGroup::RDP_GROUP); }
int rdp_size() { return group_size(CommGroup::RDP_GROUP); }
int mp_rank() { return group_rank(CommGroup::MP_GROUP); }
int mp_size() { return group_size(CommGroup::MP_GROUP); }
std::vector<int> get_mp_group() { return process_group(CommGroup::MP_GROUP).world_ranks(); }
std::vector<int> get_dp_group() { return process_group(CommGroup::DP_GROUP).world_ranks(); }
std::vector<int> get_tp_group() { return process_group(CommGroup::TP_GROUP).world_ranks(); }
std::vector<int> get_pp_group() { return process_group(CommGroup::PP_GROUP).world_ranks(); }
std::vector<int> get_rdp_group() { return process_group(CommGroup::RDP_GROUP).world_ranks(); }

void broadcast(const std::string& obj, CommGroup group) {
  for (int member : process_group(group).world_ranks()) {
    if (member != rank()) send_world(obj, member);
  }
}

void send(const std::string& obj, int dest_rank, RankType rank_type) {
  send_world(obj, to_world_rank(dest_rank, rank_type));
}

std::string recv_from(int src_rank, RankType rank_type) {
  comm::Work work =
      process_group(CommGroup::WORLD).recv(to_world_rank(src_rank, rank_type), kObjectTag);
  work.wait();
  return comm::tensor_bytes(work.result());
}

std::vector<std::string> allgather(const std::string& obj, CommGroup group) {
  return comm::allgather_objects(obj, process_group(group));
}

void barrier(CommGroup group) { process_group(group).barrier().wait(); }

std::string on_rank0(const std::string& what, const std::function<std::string()>& work) {
  return comm::on_rank0(what, work, process_group(CommGroup::WORLD));
}
void on_every_rank(const std::string& what, const std::function<void()>& work) {
  comm::on_every_rank(what, work, process_group(CommGroup::WORLD));
}

void dp_barrier() { barrier(CommGroup::DP_GROUP); }
void mp_barrier() { barrier(CommGroup::MP_GROUP); }

}  // namespace smp
