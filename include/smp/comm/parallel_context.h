// ParallelContext: what every parallel component needs (the validated config, the topology
// and this rank's communicators), built once and handed down.
//
// smp::init builds the one a program uses and the SMP-API facades (smp::step, smp::nn's
// defaults, DistributedModel's convenience constructor) read it from the runtime; everything
// below them takes it as an argument and never looks it up. Tests build their own. A component
// keeps a reference: the context must outlive it.
#pragma once

#include <memory>

#include "smp/comm/process_groups.h"
#include "smp/core/config.h"

namespace smp {

class ParallelContext {
 public:
  // Collective over the world. MPI must be started (comm::init_mpi). Checks the config
  // against the world size (smp::ConfigError) and makes every group, sharded data
  // parallelism's included.
  explicit ParallelContext(const Config& config);
  ParallelContext(const ParallelContext&) = delete;
  ParallelContext& operator=(const ParallelContext&) = delete;

  const Config& config() const { return config_; }
  const Topology& topology() const { return groups_->topology(); }
  comm::ProcessGroups& groups() const { return *groups_; }
  // This rank's communicator of that kind.
  comm::Communicator& group(CommGroup kind) const { return groups_->get(kind); }
  // Sharded data parallelism's sharding group (s ranks holding one copy between them) and its
  // replica group (the ranks holding the same slice); see Topology::sdp_group.
  comm::Communicator& sdp_group() const { return groups_->sdp(false); }
  comm::Communicator& sdp_replica_group() const { return groups_->sdp(true); }

  int rank() const { return groups_->world_rank(); }
  int size() const { return topology().world_size(); }
  int pp_rank() const { return group(CommGroup::PP_GROUP).rank(); }
  int pp_size() const { return topology().pp_size(); }
  int tp_rank() const { return group(CommGroup::TP_GROUP).rank(); }
  int tp_size() const { return topology().tp_size(); }
  int dp_rank() const { return group(CommGroup::DP_GROUP).rank(); }
  int dp_size() const { return topology().dp_size(); }
  int rdp_rank() const { return group(CommGroup::RDP_GROUP).rank(); }
  int rdp_size() const { return topology().rdp_size(); }
  // sharded_data_parallel_degree; 1 without sharded data parallelism.
  int sdp_degree() const { return config_.sharded_data_parallel_degree; }

 private:
  Config config_;
  std::unique_ptr<comm::ProcessGroups> groups_;
};

}  // namespace smp
