// One MPI communicator per group kind, split from the world by the topology's group index.
#include "smp/comm/process_groups.h"

#include <sched.h>

#include <mpi.h>

#include <algorithm>
#include <map>

#include "internal.h"
#include "nccl.h"
#include "smp/core/error.h"
#include "smp/comm/agree.h"
#include "smp/comm/launch.h"

namespace smp::comm {
namespace {

// What every rank's init must agree on before the groups are split: the layout, and how many
// inits this process ran (a rank that skipped a shutdown and init cycle pairs its collectives
// with the wrong init of the others: groups of the wrong size, or a hang).
std::string init_fingerprint(const Topology& topology, int sdp_degree) {
  static int inits = 0;
  return "init #" + std::to_string(++inits) + " of " + std::to_string(topology.world_size()) +
         " ranks, pp " + std::to_string(topology.pp_size()) + " tp " +
         std::to_string(topology.tp_size()) + " rdp " + std::to_string(topology.rdp_size()) +
         ", placement " + topology.placement() + ", sdp " + std::to_string(sdp_degree);
}

void check_agreement(const std::string& mine, Communicator& world) {
  const std::vector<std::string> all = allgather_objects(mine, world);
  std::string differ;
  for (size_t r = 1; r < all.size(); ++r) {
    if (all[r] != all[0]) differ += "; rank " + std::to_string(r) + " has " + all[r];
  }
  if (!differ.empty()) {
    throw ConfigError("smp::init: the ranks disagree: rank 0 has " + all[0] + differ +
                      "; every rank must call smp::init with the same config, as often as the "
                      "others");
  }
}

MPI_Comm split_world(const std::string& what, int color, int key, double timeout_s) {
  return detail::split_within(what, timeout_s, [color, key](MPI_Comm* out) {
    return MPI_Comm_split(MPI_COMM_WORLD, color, key, out);
  });
}

}  // namespace

ProcessGroups::ProcessGroups(const Topology& topology, double timeout_s, int sdp_degree,
                             double phase_timeout_s)
    : topology_(topology), timeout_s_(timeout_s) {
  if (!mpi_initialized()) throw CommError("smp: ProcessGroups needs MPI; call smp::init first");
  if (topology.world_size() != comm::world_size()) {
    throw ConfigError("smp: the topology is for " + std::to_string(topology.world_size()) +
                      " ranks but MPI started " + std::to_string(comm::world_size()));
  }
  world_rank_ = comm::world_rank();  // (the member world_rank() would hide it)
  const int faked_per_node = faked_ranks_per_node();  // (checked before any collective)
  // Every rank is here, in the same init with the same layout, before any split (on a
  // communicator of its own, so WORLD's operations are numbered from the user's first). The
  // world's first collective of an init is bounded: a rank that never arrives (crashed before
  // smp::init, or still busy in earlier work) is reported, not waited on; so is every
  // communicator made after it.
  const std::vector<int> everyone = topology.group(CommGroup::WORLD, world_rank_);
  {
    Communicator agreeing(detail::make_group(
        detail::dup_within(MPI_COMM_WORLD, "MPI_Comm_idup of the world (every rank's arrival)",
                           timeout_s),
        "WORLD", everyone, timeout_s));
    check_agreement(init_fingerprint(topology, sdp_degree), agreeing);
  }
  receives_ = std::make_shared<detail::PendingReceives>();
  std::vector<std::shared_ptr<detail::GroupState>> made;  // in the same order on every rank
  made.push_back(detail::make_group(
      detail::dup_within(MPI_COMM_WORLD, "MPI_Comm_idup for WORLD", timeout_s),
      to_string(CommGroup::WORLD), everyone, timeout_s, receives_));
  groups_[CommGroup::WORLD] = std::make_unique<Communicator>(made.back());
  detail::set_failure_channel(made.back());

  const int me = world_rank_;
  MPI_Comm node = detail::split_within(
      "MPI_Comm_split_type for the node's ranks", timeout_s, [me](MPI_Comm* out) {
        return MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, me, MPI_INFO_NULL, out);
      });
  MPI_Comm_rank(node, &local_rank_);
  MPI_Comm_size(node, &local_size_);
  MPI_Comm_free(&node);

  // One registry of pending receives for all groups: a wait in any group advances them all.
  std::shared_ptr<detail::GroupState> pipeline;  // the one with point-to-point traffic
  for (CommGroup kind : all_comm_groups()) {
    if (kind == CommGroup::WORLD) continue;
    MPI_Comm comm = split_world("MPI_Comm_split for " + std::string(to_string(kind)),
                                topology.group_index(kind, me), me, timeout_s);
    made.push_back(detail::make_group(comm, to_string(kind), topology.group(kind, me), timeout_s,
                                      receives_));
    groups_[kind] = std::make_unique<Communicator>(made.back());
    if (kind == CommGroup::PP_GROUP) pipeline = made.back();
  }
  // Sharded data parallelism's groups, by the topology's colours.
  for (bool replicas : {false, true}) {
    const std::string name = replicas ? "SDP_REPLICA_GROUP" : "SDP_GROUP";
    MPI_Comm comm = split_world("MPI_Comm_split for " + name,
                                topology.sdp_group_color(me, sdp_degree, replicas), me, timeout_s);
    std::vector<int> members = replicas ? topology.sdp_replica_group(world_rank_, sdp_degree)
                                        : topology.sdp_group(world_rank_, sdp_degree);
    made.push_back(detail::make_group(comm, name, std::move(members), timeout_s, receives_));
    (replicas ? sdp_replicas_ : sdp_) = std::make_unique<Communicator>(made.back());
  }
  make_sdp_levels(made, sdp_degree, faked_per_node);
  // More ranks on this node than cores for this rank: waits spin briefly, then sleep.
  cpu_set_t cores;
  const int usable = sched_getaffinity(0, sizeof(cores), &cores) == 0 ? CPU_COUNT(&cores) : 1;
  const auto spin = std::chrono::microseconds(local_size_ > usable ? 1000 : 50000);
  for (const auto& group : made) group->phase_timeout_s = phase_timeout_s, group->spin = spin;
  // Every device communicator now, not on first use: a lazy one would be made inside the first
  // device call, which only some ranks reach together (a pipeline's later stages wait on the
  // earlier ones), and its bootstrap would hang them all.
  detail::start_device_path(made, pipeline, local_rank_, local_size_);
}

Communicator& ProcessGroups::get(CommGroup kind) const { return *groups_.at(kind); }

// Each world rank's node index: faked (SMP_RANKS_PER_NODE), or one per host name.
std::vector<int> ProcessGroups::node_of_each_rank(int faked_per_node) {
  const int size = topology_.world_size();
  std::vector<int> node(size);
  if (faked_per_node > 0) {
    for (int r = 0; r < size; ++r) node[r] = r / faked_per_node;
    return node;
  }
  char name[MPI_MAX_PROCESSOR_NAME] = {};
  int length = 0;
  MPI_Get_processor_name(name, &length);
  const std::vector<std::string> hosts = allgather_objects(std::string(name, length), get(CommGroup::WORLD));
  std::map<std::string, int> index;
  for (int r = 0; r < size; ++r) node[r] = index.emplace(hosts[r], static_cast<int>(index.size())).first->second;
  return node;
}

// SDP_NODE_GROUP and SDP_ACROSS_GROUP (see the header); every rank takes part in both splits,
// those of a sharding group that does not qualify with MPI_UNDEFINED.
void ProcessGroups::make_sdp_levels(std::vector<std::shared_ptr<detail::GroupState>>& made,
                                    int sdp_degree, int faked_per_node) {
  // Without sharding nothing is split, and WORLD carries no collective of smp's own before the
  // user's first (the config, hence the degree, is the same on every rank).
  if (sdp_degree <= 1) return;
  const std::vector<int> node = node_of_each_rank(faked_per_node);
  const std::vector<int> members = topology_.sdp_group(world_rank_, sdp_degree);
  const int size = static_cast<int>(members.size());
  int per_node = 1;
  while (per_node < size && node[members[per_node]] == node[members[0]]) ++per_node;
  bool levels = per_node > 1 && per_node < size && size % per_node == 0;
  for (int i = 0; levels && i < size; ++i) {
    levels = node[members[i]] == node[members[i - i % per_node]] &&
             (i % per_node != 0 || i == 0 || node[members[i]] != node[members[i - 1]]);
  }
  const int place = static_cast<int>(std::find(members.begin(), members.end(), world_rank_) - members.begin());
  const int block = place / per_node;
  const int local = place % per_node;
  const int base = members[0] * topology_.world_size();  // one range of colours per sharding group
  for (bool across : {false, true}) {
    const std::string name = across ? "SDP_ACROSS_GROUP" : "SDP_NODE_GROUP";
    const int color = !levels ? MPI_UNDEFINED : base + (across ? local : block);
    MPI_Comm comm = split_world("MPI_Comm_split for " + name, color, world_rank_, timeout_s_);
    if (!levels) continue;
    std::vector<int> ranks;
    for (int i = 0; i < size; ++i) {
      if ((across ? i % per_node == local : i / per_node == block)) ranks.push_back(members[i]);
    }
    made.push_back(detail::make_group(comm, name, std::move(ranks), timeout_s_, receives_));
    (across ? sdp_across_ : sdp_node_) = std::make_unique<Communicator>(made.back());
  }
}

}  // namespace smp::comm
