// One MPI communicator per group kind, split from the world by the topology's group index.
#include "smp/comm/process_groups.h"

#include <mpi.h>

#include "internal.h"
#include "nccl.h"
#include "smp/core/error.h"
#include "smp/comm/launch.h"

namespace smp::comm {

ProcessGroups::ProcessGroups(const Topology& topology, double timeout_s, int sdp_degree)
    : topology_(topology), timeout_s_(timeout_s) {
  if (!mpi_initialized()) throw CommError("smp: ProcessGroups needs MPI; call smp::init first");
  if (topology.world_size() != comm::world_size()) {
    throw ConfigError("smp: the topology is for " + std::to_string(topology.world_size()) +
                      " ranks but MPI started " + std::to_string(comm::world_size()));
  }
  world_rank_ = comm::world_rank();  // (the member world_rank() would hide it)
  MPI_Comm node;
  MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, world_rank_, MPI_INFO_NULL, &node);
  MPI_Comm_rank(node, &local_rank_);
  MPI_Comm_size(node, &local_size_);
  MPI_Comm_free(&node);

  // One registry of pending receives for all groups: a wait in any group advances them all.
  receives_ = std::make_shared<detail::PendingReceives>();
  std::vector<std::shared_ptr<detail::GroupState>> made;  // in the same order on every rank
  std::shared_ptr<detail::GroupState> pipeline;           // the one with point-to-point traffic
  for (CommGroup kind : all_comm_groups()) {
    MPI_Comm comm;
    if (kind == CommGroup::WORLD) {
      MPI_Comm_dup(MPI_COMM_WORLD, &comm);
    } else {
      MPI_Comm_split(MPI_COMM_WORLD, topology.group_index(kind, world_rank_), world_rank_, &comm);
    }
    made.push_back(detail::make_group(comm, to_string(kind), topology.group(kind, world_rank_),
                                      timeout_s, receives_));
    groups_[kind] = std::make_unique<Communicator>(made.back());
    if (kind == CommGroup::PP_GROUP) pipeline = made.back();
  }
  // Sharded data parallelism's groups, by the topology's colours.
  for (bool replicas : {false, true}) {
    MPI_Comm comm;
    MPI_Comm_split(MPI_COMM_WORLD, topology.sdp_group_color(world_rank_, sdp_degree, replicas),
                   world_rank_, &comm);
    std::vector<int> members = replicas ? topology.sdp_replica_group(world_rank_, sdp_degree)
                                        : topology.sdp_group(world_rank_, sdp_degree);
    made.push_back(detail::make_group(comm, replicas ? "SDP_REPLICA_GROUP" : "SDP_GROUP",
                                      std::move(members), timeout_s, receives_));
    (replicas ? sdp_replicas_ : sdp_) = std::make_unique<Communicator>(made.back());
  }
  // Every device communicator now, not on first use: a lazy one would be made inside the first
  // device call, which only some ranks reach together (a pipeline's later stages wait on the
  // earlier ones), and its bootstrap would hang them all.
  detail::start_device_path(made, pipeline, local_rank_, local_size_);
}

Communicator& ProcessGroups::get(CommGroup kind) const { return *groups_.at(kind); }

}  // namespace smp::comm
