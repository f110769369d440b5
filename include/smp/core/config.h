// Config: every SMP v1 model-parallel parameter as a typed field with SMP's default,
// parsed and validated once, then passed downward (house rule 8).
//
// The keys, defaults and rules are SMP's (reference/smp-v1.md §2); docs/config.md is the
// reference table, including which features smp implements yet. Deviations from SMP:
//   - pipeline_parallel_degree (alias "partitions") defaults to 1; SMP requires it.
//   - auto_partition=false does not require default_partition (it defaults to 0).
//   - bf16 is allowed without sharded data parallelism.
// smp extension keys (not in SMP): comm_timeout_s, phase_timeout_s, offload_optimizer_state.
//
// Every problem throws smp::ConfigError whose message names the key, the value given (as
// JSON) and what is allowed. Nothing here blocks, talks to other ranks or keeps global state;
// only from_env() reads the process environment.
#pragma once

#include <cstdint>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace smp {

// `pipeline`: the microbatch schedule.
enum class PipelineMode {
  kInterleaved,  // "interleaved": 1F1B-like, backward prioritised (SMP's default)
  kSimple,       // "simple": all forwards, then all backwards (GPipe-like)
  kOnlyForward,  // "_only_forward": SMP's undocumented forward-only mode
  kZeroBubble,   // "zero_bubble" (smp extension): ZB-H1, split backwards filling the bubbles
};
// `optimize`: partitioner objective and TP layer-distribution strategy.
enum class OptimizeFor { kMemory, kSpeed };
// `ddp_dist_backend`.
enum class DdpBackend { kAuto, kNccl };

// The SMP spellings ("interleaved", "speed", "nccl", ...).
const char* to_string(PipelineMode mode);
const char* to_string(OptimizeFor goal);
const char* to_string(DdpBackend backend);

// The environment variable SageMaker sets to the JSON object of parameters.
inline constexpr const char* kMpParametersEnv = "SM_HP_MP_PARAMETERS";

struct Config {
  // ---- pipeline parallelism and partitioning ----
  int pipeline_parallel_degree = 1;  // alias "partitions"; >= 1
  int microbatches = 1;              // >= 1; the batch must divide by it
  PipelineMode pipeline = PipelineMode::kInterleaved;
  OptimizeFor optimize = OptimizeFor::kMemory;
  // "cluster", "spread" or a permutation of D, P, T (letters case-insensitive), as given;
  // placement_letters() is the normalised form.
  std::string placement_strategy = "cluster";
  bool auto_partition = true;
  int default_partition = 0;   // 0 <= default_partition < pipeline_parallel_degree
  double memory_weight = 0.8;  // [0, 1]; derived: 0.2 when optimize=speed and not given
  int active_microbatches = 3;  // >= 1; derived: pipeline_parallel_degree + 2 when not given
  bool deterministic_server = false;
  bool skip_tracing = false;
  bool load_partition = false;
  std::string partition_file;

  // ---- data and tensor parallelism ----
  bool ddp = false;
  std::optional<int> ddp_port;  // 1..65535; unset by default; requires ddp
  DdpBackend ddp_dist_backend = DdpBackend::kAuto;  // "nccl" requires ddp
  int tensor_parallel_degree = 1;  // >= 1; > 1 requires ddp (SMP rule)
  bool prescaled_batch = false;

  // ---- memory features ----
  bool shard_optimizer_state = false;  // incompatible with sharded_data_parallel_degree > 1
  bool offload_activations = false;
  int activation_loading_horizon = 4;  // > 0
  bool delayed_parameter_initialization = false;

  // ---- sharded data parallelism (MiCS) ----
  // >= 1; must divide the reduced-DP degree; > 1 is incompatible with pipeline parallelism
  // and with shard_optimizer_state (SMP; SDP + TP is allowed as in SMP v1.15).
  int sharded_data_parallel_degree = 1;
  std::int64_t sdp_reduce_bucket_size = 500000000;         // elements, >= 1
  std::int64_t sdp_param_persistence_threshold = 1000000;  // elements, >= 0
  std::int64_t sdp_max_live_parameters = 1000000000;       // elements, >= 1
  bool sdp_hierarchical_allgather = true;
  double sdp_gradient_clipping = 1.0;  // > 0

  // ---- mixed precision ----
  bool fp16 = false;  // at most one of fp16 and bf16
  bool bf16 = false;
  bool fp16_params = false;

  // ---- undocumented SMP keys (semantics unconfirmed) ----
  bool static_mode = false;
  bool fast_mode = false;

  // ---- TensorFlow-only keys (accepted, ignored by smp) ----
  bool contiguous = true;
  bool horovod = false;  // cannot be combined with ddp (SMP rule)

  // ---- smp extensions ----
  // Seconds any communication wait may take before the ranks abort with a message. > 0.
  double comm_timeout_s = 60.0;
  // Seconds the other ranks wait for a known long phase that some ranks run alone (rank 0
  // preparing the data or partitioning, the checkpoint writers) before aborting. > 0.
  double phase_timeout_s = 3600.0;
  // DistributedOptimizer keeps its moments (Adam's exp_avg and exp_avg_sq, SGD's momentum) in a
  // file in $TMPDIR (else /tmp), updated a window at a time, instead of in memory (host
  // parameters only; as DeepSpeed's offload_optimizer to NVMe).
  bool offload_optimizer_state = false;

  // Canonical names of the keys that were given explicitly ("partitions" is recorded as
  // "pipeline_parallel_degree"). Derived defaults and not_implemented_warnings() use it.
  std::set<std::string> given;

  // ---- construction (each parses, applies derived defaults, then validate()s) ----
  // `params` must be a JSON object of SMP parameters. Throws ConfigError.
  static Config from_json(const nlohmann::json& params);
  // Throws ConfigError on invalid JSON (with the parse position) or bad parameters.
  static Config from_json_string(const std::string& text);
  // Throws ConfigError naming `path` when it cannot be read or parsed, or holds bad parameters.
  static Config from_json_file(const std::string& path);
  // SageMaker's CLI form "key=value,key=value" (--mp_parameters). Each value is parsed as a
  // JSON scalar where possible (Python's True/False/None too), else taken as a string.
  static Config from_mp_parameters_string(const std::string& text);
  // The launcher helper's entry: reads SM_HP_MP_PARAMETERS (a JSON object) from the
  // environment; unset or empty gives the defaults. The only function here that reads the
  // environment; library code below the launcher must take a Config instead.
  static Config from_env();

  // Checks every value range and cross-field rule on the fields as they are now (for code
  // that edits fields after construction). Throws ConfigError.
  void validate() const;

  // Checks the parallel degrees against the number of ranks: pipeline_parallel_degree *
  // tensor_parallel_degree must divide world_size, and sharded_data_parallel_degree must
  // divide the reduced-DP degree. Throws ConfigError showing the whole relationship.
  void validate_world(int world_size) const;
  // world_size / (pp * tp), SMP's rdp_size(). Throws as validate_world does.
  int rdp_degree(int world_size) const;

  // The placement as three upper-case letters, right-most varying fastest ("cluster" ->
  // "DPT", "spread" -> "TPD").
  std::string placement_letters() const;

  // True when `key` (canonical name) was given explicitly.
  bool is_given(const std::string& key) const { return given.count(key) > 0; }

  // One message per given TensorFlow-only key (every PyTorch key of SMP is implemented; see
  // docs/config.md). Mains print them.
  std::vector<std::string> not_implemented_warnings() const;

  // Every key (canonical names) with its effective value; from_json(to_json()) gives back
  // the same values.
  nlohmann::json to_json() const;
  // One line per key, "key = value", marking the keys left at their default.
  std::string summary() const;
};

}  // namespace smp
