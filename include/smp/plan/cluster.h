// The planner's view of a cluster: what one device computes and holds, and what its links
// carry. Pure (no torch).
//
// Presets (cluster_preset): "a100-efa" (SMP's ml.p4d.24xlarge: 8 x A100 40 GB per node,
// 400 Gb/s EFA per node), "a100-ib" (NVIDIA Selene, where Megatron-LM's published runs were
// measured: 8 x A100 80 GB, 8 x 200 Gb/s HDR InfiniBand per node), "h100-ib" (8 x H100 80 GB
// SXM, NVLink 4, 8 x 400 Gb/s InfiniBand). "This machine, measured" is a JSON file that
// bench/planner/machine_probe writes; cluster_from_json reads it (and any other cluster).
#pragma once

#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace smp::plan {

// One kind of link: a collective over it moves bytes at bandwidth (per device, one
// direction, as NCCL's "bus bandwidth") and pays latency per step.
struct Link {
  double bandwidth_gb_s = 0;
  double latency_us = 0;
  double p2p_bandwidth_gb_s = 0;  // a point-to-point send's; 0 = bandwidth_gb_s
  double p2p() const { return p2p_bandwidth_gb_s > 0 ? p2p_bandwidth_gb_s : bandwidth_gb_s; }
};

struct ClusterSpec {
  std::string name = "custom";
  std::string description;
  int gpus_per_node = 8;            // devices that share the intra-node link
  int compute_slots_per_node = 0;   // devices' worth of compute per node; 0 = gpus_per_node
                                    // (a CPU "cluster" running more ranks than cores: fewer)
  double memory_gb = 80;            // per device
  double peak_tflops_fp32 = 19.5;   // dense, per device
  double peak_tflops_16bit = 312;   // bf16 / fp16 dense, per device
  // A GEMM's share of peak by its smallest dimension (ascending; interpolated in log space,
  // clamped at the ends): the measured efficiency per GEMM shape class.
  std::vector<std::pair<double, double>> gemm_efficiency = {{64, 0.3}, {1024, 0.8}};
  double attention_efficiency = 0.6;  // a fused (flash) attention kernel's share of peak
  double memory_bandwidth_gb_s = 2000;  // what element-wise kernels stream at
  double softmax_bandwidth_gb_s = 0;    // unfused softmax over (S, S) scores; 0 = memory bw
  Link intra_node{230, 5};
  Link inter_node{22, 10};
  double host_link_gb_s = 25;         // device <-> host (activation offloading)
  double runtime_overhead_gb = 1.5;   // per process before the model (CUDA context, NCCL)
  double activation_memory_factor = 1.0;  // allocator slack over the counted activations
  double step_overhead_s = 0;             // per step (host work the model does not count)

  int slots() const { return compute_slots_per_node > 0 ? compute_slots_per_node : gpus_per_node; }
  // Share of peak of a GEMM whose smallest dimension is min_dim.
  double efficiency(double min_dim) const;
};

// "a100-efa", "a100-ib", "h100-ib". Throws smp::ConfigError listing the names.
ClusterSpec cluster_preset(const std::string& name);
std::vector<std::string> cluster_preset_names();

// The keys of to_json (a "preset" key starts from that preset). Unknown keys and values out of
// range throw smp::ConfigError naming the key, the value and what is allowed.
ClusterSpec cluster_from_json(const nlohmann::json& json);
nlohmann::json to_json(const ClusterSpec& cluster);

}  // namespace smp::plan
