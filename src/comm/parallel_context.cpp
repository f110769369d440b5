// ParallelContext: the config checked against the world, the topology, every group.
#include "smp/comm/parallel_context.h"

#include "smp/comm/launch.h"

namespace smp {

ParallelContext::ParallelContext(const Config& config) : config_(config) {
  config_.validate_world(comm::world_size());
  const Topology topology(comm::world_size(), config_.pipeline_parallel_degree,
                          config_.tensor_parallel_degree, config_.placement_letters());
  groups_ = std::make_unique<comm::ProcessGroups>(topology, config_.comm_timeout_s,
                                                  config_.sharded_data_parallel_degree,
                                                  config_.phase_timeout_s);
}

}  // namespace smp
