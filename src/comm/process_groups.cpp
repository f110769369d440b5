// One MPI communicator per group kind, split from the world by the topology's group index.
#include "smp/process_groups.h"

#include <mpi.h>

#include "internal.h"
#include "smp/error.h"
#include "smp/launch.h"

namespace smp::comm {

ProcessGroups::ProcessGroups(const Topology& topology, double timeout_s)
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
  for (CommGroup kind : all_comm_groups()) {
    MPI_Comm comm;
    if (kind == CommGroup::WORLD) {
      MPI_Comm_dup(MPI_COMM_WORLD, &comm);
    } else {
      MPI_Comm_split(MPI_COMM_WORLD, topology.group_index(kind, world_rank_), world_rank_, &comm);
    }
    groups_[kind] = std::make_unique<Communicator>(
        detail::make_group(comm, to_string(kind), topology.group(kind, world_rank_), timeout_s,
                           receives_));
  }
}

Communicator& ProcessGroups::get(CommGroup kind) const { return *groups_.at(kind); }

Communicator& ProcessGroups::split(int color, const std::string& name) const {
  auto it = splits_.find(name);
  if (it != splits_.end()) return *it->second;
  const int world = comm::world_size();
  std::vector<int> colors(world);
  MPI_Allgather(&color, 1, MPI_INT, colors.data(), 1, MPI_INT, MPI_COMM_WORLD);
  std::vector<int> members;
  for (int r = 0; r < world; ++r) {
    if (colors[r] == color) members.push_back(r);
  }
  MPI_Comm comm;
  MPI_Comm_split(MPI_COMM_WORLD, color, world_rank_, &comm);
  auto made = std::make_unique<Communicator>(
      detail::make_group(comm, name, std::move(members), timeout_s_, receives_));
  return *splits_.emplace(name, std::move(made)).first->second;
}

}  // namespace smp::comm
