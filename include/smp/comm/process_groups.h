// ProcessGroups: this rank's communicator for WORLD and for each group kind of the topology.
//
// Built once, with the ParallelContext that holds it (collective over the world: every rank
// constructs it together); nothing else in smp makes communicators.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "smp/comm/communicator.h"
#include "smp/core/topology.h"

namespace smp::comm {

namespace detail {
class PendingReceives;
}

class ProcessGroups {
 public:
  // Collective over MPI_COMM_WORLD. MPI must be initialised (init_mpi) and the topology's
  // world size must equal MPI's. Every group is made here, sharded data parallelism's sharding
  // and replica groups for `sdp_degree` (Topology::sdp_group) included. `timeout_s` bounds every
  // wait on communication, `phase_timeout_s` the waits on a long phase (agree.h).
  ProcessGroups(const Topology& topology, double timeout_s, int sdp_degree = 1,
                double phase_timeout_s = 3600.0);

  Communicator& get(CommGroup kind) const;
  // Sharded data parallelism's groups: SDP_GROUP (this rank's sharding group) and, with
  // `replicas`, SDP_REPLICA_GROUP. With sdp_degree 1 they are this rank alone and its RDP group.
  Communicator& sdp(bool replicas) const { return replicas ? *sdp_replicas_ : *sdp_; }
  // The sharding group's two levels for a hierarchical all-gather: its ranks on this rank's
  // node (SDP_NODE_GROUP), and its ranks at the same place on the other nodes
  // (SDP_ACROSS_GROUP). Null unless the sharding group spans several nodes with more than one
  // of its ranks on each, in blocks of equal size in its order (a node: the ranks on one host, or as
  // SMP_RANKS_PER_NODE fakes them, comm::faked_ranks_per_node).
  Communicator* sdp_node() const { return sdp_node_.get(); }
  Communicator* sdp_across() const { return sdp_across_.get(); }
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
  std::unique_ptr<Communicator> sdp_;
  std::unique_ptr<Communicator> sdp_replicas_;
  std::unique_ptr<Communicator> sdp_node_;
  std::unique_ptr<Communicator> sdp_across_;

  std::vector<int> node_of_each_rank(int faked_per_node);
  void make_sdp_levels(std::vector<std::shared_ptr<detail::GroupState>>& made, int sdp_degree,
                       int faked_per_node);
};

}  // namespace smp::comm
