// ProcessGroups: this rank's communicator for WORLD and for each group kind of the topology.
//
// Built once by smp::init (collective over the world: every rank constructs it together) and
// reached through smp::process_groups(); nothing else in smp holds communicators.
#pragma once

#include <map>
#include <memory>
#include <string>

#include "smp/communicator.h"
#include "smp/topology.h"

namespace smp::comm {

namespace detail {
class PendingReceives;
}

class ProcessGroups {
 public:
  // Collective over MPI_COMM_WORLD. MPI must be initialised (init_mpi) and the topology's
  // world size must equal MPI's.
  ProcessGroups(const Topology& topology, double timeout_s);

  Communicator& get(CommGroup kind) const;
  // A group beside the topology's kinds (sharded data parallelism's sharding and replica
  // groups): the ranks that pass the same `color` form it, ranked by world rank. Collective over
  // the world on the first call with a given `name` (every rank calls it, in the same order);
  // later calls with that name return the same communicator.
  Communicator& split(int color, const std::string& name) const;
  const Topology& topology() const { return topology_; }
  int world_rank() const { return world_rank_; }
  int local_rank() const { return local_rank_; }
  int local_size() const { return local_size_; }

 private:
  Topology topology_;
  int world_rank_ = 0;
  int local_rank_ = 0;
  int local_size_ = 1;
  double timeout_s_ = 60.0;
  std::shared_ptr<detail::PendingReceives> receives_;
  std::map<CommGroup, std::unique_ptr<Communicator>> groups_;
  mutable std::map<std::string, std::unique_ptr<Communicator>> splits_;
};

}  // namespace smp::comm
