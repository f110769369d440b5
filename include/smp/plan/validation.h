// Checking the cost model: against published runs (their numbers and sources live in
// tests/plan/published_runs.json and docs/planner.md), and against runs measured on this
// machine, after fitting the machine's constants to them.
//
// Pure (no torch): the measured runs come in as JSON lines that bench/planner/measure.sh
// writes from smp-train's metrics.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "smp/plan/cost_model.h"

namespace smp::plan {

// One figure a published run reports, and what the planner predicts for it.
struct Check {
  std::string name;      // "Narayanan 2021 T1 megatron-1t"
  std::string metric;    // "tflops_per_gpu", "mfu", "model_state_gb", "activation_reduction",
                         // "step_s", "peak_gb"
  double published = 0;  // or measured
  double predicted = 0;
  std::string layout;    // the layout the planner chose within the run's fixed degrees
  double rel_err() const;  // |predicted - published| / published
};

// Each run of a published-runs file (a JSON array; docs/planner.md describes its keys).
// Throughput runs fix pp, tp and dp (and whatever else the paper states) and let the planner
// choose the rest, as the authors tuned theirs. Throws smp::ConfigError naming the entry and
// key that is bad.
std::vector<Check> check_published(const nlohmann::json& runs);

// A run of smp-train on this machine (one JSON line of bench/planner/measure.sh).
struct MeasuredRun {
  std::string name;
  ModelSpec model;
  Workload workload;
  Layout layout;
  double step_s = 0;
  double peak_gb = 0;
};
MeasuredRun measured_run_from_json(const nlohmann::json& line);

// The cluster with the constants the measurements pin down: the compute throughput's scale,
// the fixed time per step, the runtime's memory and the activations' allocator factor
// (least squares on relative errors).
ClusterSpec fit_cluster(const ClusterSpec& cluster, const Software& software,
                        const std::vector<MeasuredRun>& runs);

// Leave-one-out: each run predicted by a cluster fitted to the others; two checks per run
// (step_s, peak_gb).
std::vector<Check> check_measured(const ClusterSpec& cluster, const Software& software,
                                  const std::vector<MeasuredRun>& runs);

double median_rel_err(const std::vector<Check>& checks);
std::string checks_table(const std::vector<Check>& checks);

}  // namespace smp::plan
