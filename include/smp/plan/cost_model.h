// The cost model: one layout of one model on one cluster -> step time, memory per device, MFU.
//
// Pure (no torch, no processes). What it counts, per pipeline stage and microbatch:
//   compute   each GEMM's FLOPs at the cluster's efficiency for its shape class, attention
//             (fused, or two batched GEMMs and a softmax that streams the S x S scores),
//             element-wise kernels at memory bandwidth; backward twice the GEMMs; recomputation
//   comm      alpha-beta collectives (ring within a node, then across nodes, over the node's
//             members of the group as the placement puts them): tensor parallel all-reduces
//             per layer, pipeline sends per microbatch, the data-parallel gradient reduction
//             (overlapped with the last backward where the software does), sharded data
//             parallelism's gathers and reduce-scatters
//   pipeline  the step's makespan from smp's own schedule (pipeline::make_schedule, run by
//             pipeline::simulate with these per-stage costs), not a bubble formula
//   memory    weights, gradients and optimizer state per sharding mode; activations per layer
//             after Korthikanti et al. 2022 (tensor and sequence parallelism, selective or full
//             recomputation, fused attention) times the microbatches the simulated schedule
//             holds at once; the logits; the runtime's own overhead
// docs/planner.md derives every term and lists the published runs it is checked against.
#pragma once

#include <cstdint>
#include <string>

#include "smp/pipeline/schedule.h"
#include "smp/plan/cluster.h"
#include "smp/plan/model_spec.h"

namespace smp::plan {

enum class Precision { kFp32, kBf16, kFp16 };
enum class Recompute { kNone, kSelective, kFull };  // selective: the attention core only
enum class Sharding { kNone, kZero1, kSdp };        // optimizer state over dp / sharded DP

const char* to_string(Precision p);
const char* to_string(Recompute r);
Precision precision_from_string(const std::string& text);  // "fp32", "bf16", "fp16"

// What is trained: global batch (sequences per step) of `seq` tokens.
struct Workload {
  int64_t global_batch = 8;
  int64_t seq = 1024;
  Precision precision = Precision::kBf16;
};

// How the training software behaves, where implementations differ. software_preset("smp") is
// smp today; the others are the systems of the published runs.
struct Software {
  std::string name = "smp";
  bool flash_attention = true;     // fused attention: no S x S scores kept or streamed
  bool sequence_parallel = false;  // TP shards the activations outside the GEMMs
  bool overlap_dp = true;          // gradient reduction overlaps the last microbatch's backward
  double sdp_overlap = 0;          // share of a microbatch's compute that sharded DP's prefetched
                                   // gathers hide behind (0: no prefetch, every gather waited for)
  bool sdp_hierarchical = false;   // sharded DP's gathers go within the node, then across
  int sdp_gathers_per_block = 1;   // sharded DP's collectives per block and pass (1: the block
                                   // at once; DeepSpeed: one per module)
  bool balanced_partition = true;  // stages balanced by cost (SMP's auto-partition), not by layers
  bool dropout = false;            // dropout masks kept for backward
  bool sdp_with_pipeline = false;  // sharded DP combines with pp > 1 (SMP: no)
  bool zero_bubble = true;         // the split-backward schedule is available
  bool selective_recompute = false;  // recomputing only the attention core is available
  bool offload = true;             // activation offloading is available
  int grad_bytes_16bit = 4;        // gradient bytes per element (buffer and wire) under bf16/fp16
                                   // (smp: fp32 buffers, Megatron's main_grad; ZeRO's papers: 2)
  bool zero1_reduced_slice = true;  // ZeRO-1 reduce-scatters into a slice of its own beside the
                                    // whole buffer (smp under bf16/fp16)
};
// "smp", "megatron-2021" (Narayanan et al.), "megatron-2022" (Korthikanti et al.: sequence
// parallelism), "deepspeed-2021" (ZeRO-3 with prefetch). Throws smp::ConfigError listing them.
Software software_preset(const std::string& name);

struct Layout {
  int pp = 1, tp = 1, dp = 1;   // world = pp * tp * dp
  Sharding sharding = Sharding::kNone;
  int sdp = 1;                  // sharded-DP degree (divides dp) when sharding == kSdp
  int microbatch_size = 1;      // sequences per microbatch and data-parallel rank
  pipeline::ScheduleKind schedule = pipeline::ScheduleKind::kOneFOneB;
  int chunks = 1;               // virtual stages per rank (kInterleavedVirtual)
  Recompute recompute = Recompute::kNone;
  bool offload = false;         // recomputed layers' inputs wait in host memory
  std::string placement = "DPT";  // SMP's placement letters, right-most varying fastest

  int world() const { return pp * tp * dp; }
  // "pp4.tp8.dp2.mb1.1f1b.full", "pp1.tp2.dp4.sdp4.mb2.none", "pp8.tp8.dp1.mb1.int2.sel.zero1"
  std::string to_string() const;
};
// The inverse of Layout::to_string (fields in any order; omitted ones keep their defaults).
// Throws smp::ConfigError naming the part it cannot read.
Layout parse_layout(const std::string& text);

struct Estimate {
  bool valid = false;
  std::string why_invalid;        // a rule the layout breaks, when !valid
  int microbatches = 0;           // per pipeline, per step
  double step_s = 0;
  double tokens_per_s = 0;
  double mfu = 0;                 // model FLOPs (no recomputation) / (step * world * peak)
  double hardware_tflops_per_device = 0;  // FLOPs executed, recomputation included
  // The step's parts on the slowest stage (seconds).
  double forward_s = 0, backward_s = 0;    // one microbatch on the slowest stage, comm included
  double pipeline_s = 0;                   // the simulated makespan
  double bubble = 0;                       // idle share of the makespan on the slowest rank
  double tp_comm_s = 0, pp_comm_s = 0;     // per step, on the critical path
  double dp_comm_s = 0, dp_exposed_s = 0;  // gradient reduction (and ZeRO-1 gather)
  double sdp_comm_s = 0, sdp_exposed_s = 0;
  double optimizer_s = 0;
  // Memory per device (GB) on the stage that holds the most.
  // gathered: the layers sharded data parallelism holds whole at once (weights and gradients).
  double weights_gb = 0, grads_gb = 0, optimizer_gb = 0, gathered_gb = 0, activations_gb = 0,
         logits_gb = 0, overhead_gb = 0, memory_gb = 0;
  int in_flight = 0;              // microbatches held at once (whole-microbatch units)
  bool fits = false;              // memory_gb <= the device's memory
};

// Throws nothing for a layout that breaks a rule: returns !valid with the reason (heads or
// batch not divisible, a schedule the counts cannot make, ...).
Estimate estimate(const ModelSpec& model, const ClusterSpec& cluster, const Software& software,
                  const Workload& workload, const Layout& layout);

// Collective times (seconds) over a group of `size` devices of which `per_node` share a node:
// hierarchical (a ring within each node, the node's members each taking their share across
// the nodes by ring or tree, whichever is faster), or one flat ring whose slowest hop is the
// inter-node link when it spans nodes.
double all_reduce_s(const ClusterSpec& cluster, double bytes, int size, int per_node);
double all_gather_s(const ClusterSpec& cluster, double bytes, int size, int per_node);
double flat_all_gather_s(const ClusterSpec& cluster, double bytes, int size, int per_node);

}  // namespace smp::plan
