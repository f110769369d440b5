// The search: every layout of a model on a number of devices that the rules allow, estimated
// by the cost model and ranked; the best one as a ready smp configuration.
//
// Pure (no torch). The space: tp (dividing the heads, within a node) x pp x dp, sharding
// (none, ZeRO-1, sharded DP at every degree dividing dp), microbatch size, schedule (GPipe,
// 1F1B, interleaved with 2 or 4 virtual stages, zero bubble), recomputation (none, selective,
// full) and offloading, as far as the software offers each, and the placements asked for.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "smp/plan/cost_model.h"

namespace smp::plan {

struct SearchOptions {
  int gpus = 8;
  int max_microbatch_size = 16;
  std::vector<std::string> placements = {"DPT"};
  // Restrict a degree to one value (0: search it).
  int fixed_pp = 0, fixed_tp = 0, fixed_dp = 0;
};

struct Candidate {
  Layout layout;
  Estimate estimate;
};

// All valid layouts, best first: those that fit by tokens/s (ties: less memory), then those
// that do not fit by memory. Throws smp::ConfigError when gpus < 1 or no layout is valid (the
// message says why the simplest one is not).
std::vector<Candidate> search(const ModelSpec& model, const ClusterSpec& cluster,
                              const Software& software, const Workload& workload,
                              const SearchOptions& options);

// The ranked table: layout, step time, tokens/s, MFU, memory per device, bubble, exposed
// communication; the first `rows` candidates.
std::string table(const std::vector<Candidate>& candidates, size_t rows);

// One layout broken down: the step's parts, memory's parts, the rules it meets.
std::string explain(const ModelSpec& model, const ClusterSpec& cluster, const Software& software,
                    const Workload& workload, const Layout& layout);

// {"smp": SMP parameters (smp::Config::from_json accepts them), "training": global_batch,
//  seq_len, activation_checkpointing, "plan": the layout and what was predicted}.
nlohmann::json smp_config(const ModelSpec& model, const Workload& workload, const Candidate& best);

}  // namespace smp::plan
