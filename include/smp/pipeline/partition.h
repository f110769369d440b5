// Partitioning: which contiguous run of layers each pipeline stage holds.
//
// Pure: the automatic partitioner takes per-layer costs (measured by profiling, see
// profile.h) and returns the split that minimises the largest stage cost, where a layer's cost
// is memory_weight * memory + (1 - memory_weight) * time, each normalised to the whole
// model (SMP's objective). Layers that share a parameter are kept in one stage.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace smp::pipeline {

struct LayerCost {
  std::string name;
  double time_s = 0;          // forward + backward on the trial microbatch
  int64_t param_bytes = 0;
  int64_t activation_bytes = 0;  // bytes of the layer's outputs on the trial microbatch
  int64_t num_params = 0;     // elements, for the log
  // Layers with the same non-negative share_group hold a shared parameter and must land in
  // one stage. -1: shares nothing.
  int share_group = -1;
};

// stage_of_layer[i] is the stage of layer i; stages are contiguous and non-decreasing.
struct Partition {
  std::vector<int> stage_of_layer;
  int num_stages = 1;

  // first layer index of `stage` and one past its last
  int begin(int stage) const;
  int end(int stage) const;
};

// The normalised cost of each layer: memory_weight * (param + activation bytes) / total bytes
// + (1 - memory_weight) * time / total time. A model with zero total bytes or time takes that
// term as 0.
// Throws smp::ConfigError when memory_weight is outside [0, 1] or a layer's time or byte count
// is negative (or its time not finite).
std::vector<double> layer_costs(const std::vector<LayerCost>& layers, double memory_weight);

// The contiguous split into num_stages non-empty stages that minimises the largest stage cost
// (ties broken by a deterministic rule written in partition.cpp: the most balanced optimal
// split), never cutting between layers of one share_group. Optimal (dynamic programming), not
// greedy. Throws smp::ConfigError when num_stages < 1, when there are fewer
// layers than stages, when share groups leave fewer cut points than num_stages - 1, or when
// layer_costs rejects its input; the message names the numbers.
Partition auto_partition(const std::vector<LayerCost>& layers, int num_stages,
                         double memory_weight);

// From a stage index per layer (SMP's smp.partition / set_partition). Layers without an
// assignment (-1) take default_partition. Throws smp::ConfigError when an index is out of range,
// the stages are not contiguous and non-decreasing, a stage is empty, or a share group is
// split; the message names the layer and its index.
Partition manual_partition(const std::vector<int>& stage_per_layer, int num_stages,
                           int default_partition,
                           const std::vector<LayerCost>& layers = {});

// SMP's log: "Partition assignments:" then one line per stage with its layers, parameter
// count, time and memory.
std::string describe(const Partition& partition, const std::vector<LayerCost>& layers);

}  // namespace smp::pipeline
