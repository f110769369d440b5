// world_groups() and world(): see multi_rank.h.
#include "testing/multi_rank.h"

#include "smp/comm/launch.h"
#include "smp/core/topology.h"

namespace smp::testing {

const comm::ProcessGroups& world_groups() {
  // Never freed: the process's static objects are destroyed after MPI_Finalize, when freeing
  // an MPI communicator is no longer allowed.
  static const comm::ProcessGroups* groups = [] {
    comm::init_mpi();
    return new comm::ProcessGroups(Topology(comm::world_size(), 1, 1, "cluster"),
                                   /*timeout_s=*/60.0);
  }();
  return *groups;
}

comm::Communicator& world() { return world_groups().get(CommGroup::WORLD); }

}  // namespace smp::testing
