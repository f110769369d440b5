// One MPI communicator per group kind, split from the world by the topology's group index.
#include "smp/comm/process_groups.h"

#include <mpi.h>

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
  for (const auto& group : made) group->phase_timeout_s = phase_timeout_s;
  // Every device communicator now, not on first use: a lazy one would be made inside the first
  // device call, which only some ranks reach together (a pipeline's later stages wait on the
  // earlier ones), and its bootstrap would hang them all.
  detail::start_device_path(made, pipeline, local_rank_, local_size_);
}

Communicator& ProcessGroups::get(CommGroup kind) const { return *groups_.at(kind); }

}  // namespace smp::comm
