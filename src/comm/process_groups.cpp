// One MPI communicator per group kind, split from the world by the topology's group index.
#include "smp/process_groups.h"

#include <mpi.h>

#include "internal.h"
#include "smp/error.h"
#include "smp/launch.h"

namespace smp::comm {

ProcessGroups::ProcessGroups(const Topology& topology, double timeout_s) : topology_(topology) {
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
  auto receives = std::make_shared<detail::PendingReceives>();
  for (CommGroup kind : all_comm_groups()) {
    MPI_Comm comm;
    if (kind == CommGroup::WORLD) {
      MPI_Comm_dup(MPI_COMM_WORLD, &comm);
    } else {
      MPI_Comm_split(MPI_COMM_WORLD, topology.group_index(kind, world_rank_), world_rank_, &comm);
    }
    groups_[kind] = std::make_unique<Communicator>(
        detail::make_group(comm, to_string(kind), topology.group(kind, world_rank_), timeout_s,
                           receives));
  }
}

Communicator& ProcessGroups::get(CommGroup kind) const { return *groups_.at(kind); }

}  // namespace smp::comm
