// The cost model against published runs and against runs measured here.
#include "smp/plan/validation.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <sstream>

#include <nlohmann/json.hpp>

#include "smp/core/error.h"
#include "smp/plan/search.h"

namespace smp::plan {
namespace {

using nlohmann::json;

[[noreturn]] void bad(const std::string& where, const std::string& key, const json& value,
                      const std::string& allowed) {
  throw ConfigError(where + ": key \"" + key + "\": got " + value.dump() + "; allowed: " + allowed);
}

int integer(const std::string& where, const json& j, const std::string& key, int fallback) {
  if (!j.contains(key)) {
    if (fallback >= 0) return fallback;
    bad(where, key, nullptr, "an integer >= 1 (required)");
  }
  const json& v = j.at(key);
  if (!v.is_number_integer() || v.get<int64_t>() < 1 || v.get<int64_t>() > (1 << 30))
    bad(where, key, v, "an integer >= 1");
  return static_cast<int>(v.get<int64_t>());
}

std::string text(const std::string& where, const json& j, const std::string& key,
                 const std::string& fallback) {
  if (!j.contains(key)) {
    if (!fallback.empty()) return fallback;
    bad(where, key, nullptr, "a string (required)");
  }
  if (!j.at(key).is_string()) bad(where, key, j.at(key), "a string");
  return j.at(key).get<std::string>();
}

ModelSpec model_of(const std::string& where, const json& v) {
  if (v.is_string()) return named_model_spec(v.get<std::string>());
  if (v.is_object()) return model_spec_from_json(v);
  bad(where, "model", v, "a model name or an object of dimensions");
}

Recompute recompute_of(const std::string& where, const std::string& r) {
  if (r == "none") return Recompute::kNone;
  if (r == "selective") return Recompute::kSelective;
  if (r == "full") return Recompute::kFull;
  bad(where, "recompute", r, "\"none\", \"selective\", \"full\"");
}

Sharding sharding_of(const std::string& where, const std::string& s) {
  if (s == "none") return Sharding::kNone;
  if (s == "zero1") return Sharding::kZero1;
  if (s == "sdp") return Sharding::kSdp;
  bad(where, "sharding", s, "\"none\", \"zero1\", \"sdp\"");
}

ClusterSpec scaled(ClusterSpec c, double compute_scale) {
  for (auto& [d, e] : c.gemm_efficiency) e /= compute_scale;
  c.attention_efficiency /= compute_scale;
  c.memory_bandwidth_gb_s /= compute_scale;
  c.softmax_bandwidth_gb_s /= compute_scale;
  return c;
}

Estimate estimate_run(const ClusterSpec& c, const Software& sw, const MeasuredRun& r) {
  const Estimate e = estimate(r.model, c, sw, r.workload, r.layout);
  if (!e.valid) throw ConfigError("measured run \"" + r.name + "\": " + e.why_invalid);
  return e;
}

}  // namespace

double Check::rel_err() const { return std::abs(predicted - published) / std::abs(published); }

std::vector<Check> check_published(const json& runs) {
  if (!runs.is_array()) bad("published runs", "(file)", runs, "a JSON array of runs");
  std::vector<Check> checks;
  for (size_t i = 0; i < runs.size(); ++i) {
    const json& r = runs[i];
    const std::string where = "published run " + std::to_string(i);
    if (!r.is_object()) bad(where, "(entry)", r, "an object");
    Check check;
    check.name = text(where, r, "name", "");
    check.metric = text(where, r, "metric", "");
    if (!r.contains("value") || !r.at("value").is_number() || r.at("value").get<double>() <= 0)
      bad(where, "value", r.value("value", json()), "a number > 0");
    check.published = r.at("value").get<double>();
    const ModelSpec model = model_of(where, r.at("model"));
    const ClusterSpec cluster = cluster_preset(text(where, r, "cluster", ""));
    const Software sw = software_preset(text(where, r, "software", ""));
    Workload w;
    w.global_batch = integer(where, r, "global_batch", 1);
    w.seq = integer(where, r, "seq", 2048);
    w.precision = precision_from_string(text(where, r, "precision", "fp16"));
    const int gpus = integer(where, r, "gpus", -1), pp = integer(where, r, "pp", 1),
              tp = integer(where, r, "tp", 1);
    if (gpus % (pp * tp) != 0) bad(where, "gpus", gpus, "a multiple of pp x tp");
    Layout fixed;
    fixed.pp = pp, fixed.tp = tp, fixed.dp = gpus / (pp * tp);
    fixed.sharding = sharding_of(where, text(where, r, "sharding", "none"));
    fixed.sdp = fixed.sharding == Sharding::kSdp ? integer(where, r, "sdp", fixed.dp) : 1;
    fixed.microbatch_size = integer(where, r, "microbatch_size", 1);
    fixed.recompute = recompute_of(where, text(where, r, "recompute", "none"));
    if (check.metric == "model_state_gb") {
      const Estimate e = estimate(model, cluster, sw, w, fixed);
      if (!e.valid) throw ConfigError(where + ": " + e.why_invalid);
      check.predicted = e.weights_gb + e.grads_gb + e.optimizer_gb;
      check.layout = fixed.to_string();
    } else if (check.metric == "activation_reduction") {
      // Tensor parallelism alone, keeping everything, against sequence parallelism with
      // selective recomputation: the same layout under the two softwares.
      Layout full = fixed, selective = fixed;
      full.recompute = Recompute::kNone, selective.recompute = Recompute::kSelective;
      const Estimate a = estimate(model, cluster, software_preset("megatron-2021"), w, full);
      const Estimate b = estimate(model, cluster, software_preset("megatron-2022"), w, selective);
      if (!a.valid || !b.valid) throw ConfigError(where + ": " + a.why_invalid + b.why_invalid);
      check.predicted = a.activations_gb / b.activations_gb;
      check.layout = selective.to_string();
    } else if (check.metric == "tflops_per_gpu" || check.metric == "mfu") {
      SearchOptions o;
      o.gpus = gpus, o.fixed_pp = pp, o.fixed_tp = tp, o.fixed_dp = fixed.dp;
      o.placements = {text(where, r, "placement", "PDT")};
      const bool mb_given = r.contains("microbatch_size");
      const std::vector<Candidate> found = search(model, cluster, sw, w, o);
      // The fastest that fits; a published run did run, so when the memory model says none
      // fits, the fastest of all (marked).
      const Candidate* best = nullptr;
      for (const Candidate& c : found) {
        if ((best && !c.estimate.fits) || c.layout.recompute != fixed.recompute ||
            c.layout.sharding != fixed.sharding || c.layout.sdp != fixed.sdp ||
            (mb_given && c.layout.microbatch_size != fixed.microbatch_size))
          continue;
        if (!best || (c.estimate.fits && !best->estimate.fits)) best = &c;
        if (best->estimate.fits) break;
      }
      if (!best) throw ConfigError(where + " (" + check.name + "): no layout matches the run");
      check.predicted = check.metric == "mfu" ? best->estimate.mfu
                                              : best->estimate.hardware_tflops_per_device;
      check.layout = best->layout.to_string() + (best->estimate.fits ? "" : " (over memory)");
    } else {
      bad(where, "metric", check.metric, "\"tflops_per_gpu\", \"mfu\", \"model_state_gb\", \"activation_reduction\"");
    }
    checks.push_back(check);
  }
  return checks;
}

MeasuredRun measured_run_from_json(const json& line) {
  const std::string where = "measured run " + line.value("name", std::string("?"));
  if (!line.is_object()) bad(where, "(line)", line, "an object");
  MeasuredRun r;
  r.name = text(where, line, "name", "");
  const json& m = line.at("model");
  r.model.name = r.name;
  r.model.layers = integer(where, m, "layers", -1);
  r.model.hidden = integer(where, m, "hidden", -1);
  r.model.heads = r.model.kv_heads = integer(where, m, "heads", -1);
  r.model.ffn = integer(where, m, "ffn", -1);
  r.model.vocab = integer(where, m, "vocab", -1);
  r.workload.global_batch = integer(where, line, "global_batch", -1);
  r.workload.seq = integer(where, line, "seq_len", -1);
  r.workload.precision = precision_from_string(text(where, line, "dtype", "fp32"));
  const int ranks = integer(where, line, "ranks", -1);
  Layout& l = r.layout;
  l.pp = integer(where, line, "pp", 1), l.tp = integer(where, line, "tp", 1);
  if (ranks % (l.pp * l.tp) != 0) bad(where, "ranks", ranks, "a multiple of pp x tp");
  l.dp = ranks / (l.pp * l.tp);
  const int sdp = integer(where, line, "sdp", 1);
  if (sdp > 1) l.sharding = Sharding::kSdp, l.sdp = sdp;
  const int microbatches = integer(where, line, "microbatches", 1);
  if (r.workload.global_batch % (int64_t{l.dp} * microbatches) != 0)
    bad(where, "microbatches", microbatches, "a divisor of global_batch / dp");
  l.microbatch_size = static_cast<int>(r.workload.global_batch / (int64_t{l.dp} * microbatches));
  const std::string schedule = text(where, line, "schedule", "1f1b");
  l.schedule = schedule == "gpipe" ? pipeline::ScheduleKind::kSimple : pipeline::ScheduleKind::kOneFOneB;
  l.recompute = line.value("activation_checkpointing", false) ? Recompute::kFull : Recompute::kNone;
  l.placement = "DPT";
  for (const char* key : {"step_s", "peak_rss_mb"})
    if (!line.contains(key) || !line.at(key).is_number() || line.at(key).get<double>() <= 0)
      bad(where, key, line.value(key, json()), "a number > 0");
  r.step_s = line.at("step_s").get<double>();
  r.peak_gb = line.at("peak_rss_mb").get<double>() / 1000.0;
  return r;
}

ClusterSpec fit_cluster(const ClusterSpec& cluster, const Software& sw,
                        const std::vector<MeasuredRun>& runs) {
  if (runs.empty()) throw ConfigError("fit_cluster: no measured runs");
  ClusterSpec base = cluster;
  base.step_overhead_s = 0, base.runtime_overhead_gb = 0, base.activation_memory_factor = 1;
  // Time: the compute scale on a log grid; for each, the fixed time per step in closed form.
  double best_loss = INFINITY, best_k = 1, best_o = 0;
  for (int i = 0; i <= 120; ++i) {
    const double k = std::pow(10.0, -1.0 + 2.0 * i / 120);
    const ClusterSpec c = scaled(base, k);
    std::vector<double> predicted;
    for (const auto& r : runs) predicted.push_back(estimate_run(c, sw, r).step_s);
    double num = 0, den = 0;
    for (size_t j = 0; j < runs.size(); ++j) {
      const double u = 1 / runs[j].step_s;
      num += (runs[j].step_s - predicted[j]) * u * u, den += u * u;
    }
    const double o = std::max(0.0, num / den);
    double loss = 0;
    for (size_t j = 0; j < runs.size(); ++j) loss += std::pow((predicted[j] + o) / runs[j].step_s - 1, 2);
    if (loss < best_loss) best_loss = loss, best_k = k, best_o = o;
  }
  ClusterSpec fitted = scaled(base, best_k);
  fitted.step_overhead_s = best_o;
  // Memory: runtime overhead r and activation factor a, linear least squares on relative error.
  double s11 = 0, s12 = 0, s22 = 0, b1 = 0, b2 = 0;
  for (const auto& r : runs) {
    const Estimate e = estimate_run(fitted, sw, r);
    const double fixed = e.memory_gb - e.activations_gb, act = e.activations_gb, u = 1 / r.peak_gb;
    s11 += u * u, s12 += act * u * u, s22 += act * act * u * u;
    b1 += (r.peak_gb - fixed) * u * u, b2 += (r.peak_gb - fixed) * act * u * u;
  }
  const double det = s11 * s22 - s12 * s12;
  double overhead = b1 / s11, factor = 1;
  if (det > 1e-12 * s11 * s22) {
    overhead = (b1 * s22 - b2 * s12) / det;
    factor = (s11 * b2 - s12 * b1) / det;
  }
  if (factor < 0.1) factor = 0.1, overhead = (b1 - s12 * factor) / s11;
  fitted.runtime_overhead_gb = std::max(0.0, overhead);
  fitted.activation_memory_factor = factor;
  return fitted;
}

std::vector<Check> check_measured(const ClusterSpec& cluster, const Software& sw,
                                  const std::vector<MeasuredRun>& runs) {
  std::vector<Check> checks;
  for (size_t i = 0; i < runs.size(); ++i) {
    std::vector<MeasuredRun> others;
    for (size_t j = 0; j < runs.size(); ++j)
      if (j != i || runs.size() < 3) others.push_back(runs[j]);
    const ClusterSpec fitted = fit_cluster(cluster, sw, others);
    const Estimate e = estimate_run(fitted, sw, runs[i]);
    const std::string layout = runs[i].layout.to_string();
    checks.push_back({runs[i].name, "step_s", runs[i].step_s, e.step_s, layout});
    checks.push_back({runs[i].name, "peak_gb", runs[i].peak_gb, e.memory_gb, layout});
  }
  return checks;
}

double median_rel_err(const std::vector<Check>& checks) {
  if (checks.empty()) return 0;
  std::vector<double> errs;
  for (const auto& c : checks) errs.push_back(c.rel_err());
  std::sort(errs.begin(), errs.end());
  const size_t n = errs.size();
  return n % 2 ? errs[n / 2] : (errs[n / 2 - 1] + errs[n / 2]) / 2;
}

std::string checks_table(const std::vector<Check>& checks) {
  std::ostringstream o;
  char line[320];
  std::snprintf(line, sizeof line, "%-40s %-20s %11s %11s %8s  %s\n", "run", "metric", "reference",
                "predicted", "rel_err", "layout");
  o << line;
  for (const auto& c : checks) {
    std::snprintf(line, sizeof line, "%-40s %-20s %11.4g %11.4g %7.1f%%  %s\n", c.name.c_str(),
                  c.metric.c_str(), c.published, c.predicted, 100 * c.rel_err(), c.layout.c_str());
    o << line;
  }
  return o.str();
}

}  // namespace smp::plan
