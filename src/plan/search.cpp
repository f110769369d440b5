// The search over layouts, its table, one layout explained, the best one as smp configuration.
#include "smp/plan/search.h"

#include <algorithm>
#include <cstdio>
#include <sstream>

#include <nlohmann/json.hpp>

#include "smp/core/error.h"

namespace smp::plan {
namespace {

using pipeline::ScheduleKind;

std::vector<int> divisors(int n) {
  std::vector<int> d;
  for (int k = 1; k <= n; ++k)
    if (n % k == 0) d.push_back(k);
  return d;
}

std::string format(const char* fmt, double a, double b = 0, double c = 0) {
  char buf[160];
  std::snprintf(buf, sizeof buf, fmt, a, b, c);
  return buf;
}

// Every (schedule, chunks) the pipeline degree allows.
std::vector<std::pair<ScheduleKind, int>> schedules(const Software& sw, int pp) {
  if (pp == 1) return {{ScheduleKind::kOneFOneB, 1}};
  std::vector<std::pair<ScheduleKind, int>> s = {{ScheduleKind::kSimple, 1}, {ScheduleKind::kOneFOneB, 1},
                                                 {ScheduleKind::kInterleavedVirtual, 2},
                                                 {ScheduleKind::kInterleavedVirtual, 4}};
  if (sw.zero_bubble) s.emplace_back(ScheduleKind::kZeroBubble, 1);
  return s;
}

}  // namespace

std::vector<Candidate> search(const ModelSpec& model, const ClusterSpec& cluster,
                              const Software& sw, const Workload& workload,
                              const SearchOptions& o) {
  if (o.gpus < 1) throw ConfigError("gpus " + std::to_string(o.gpus) + ": allowed: >= 1");
  std::vector<Recompute> recomputes = {Recompute::kNone, Recompute::kFull};
  if (sw.selective_recompute) recomputes.push_back(Recompute::kSelective);
  std::vector<Candidate> all;
  std::string first_reason;
  for (int tp : divisors(o.gpus)) {
    if (o.fixed_tp && tp != o.fixed_tp) continue;
    for (int pp : divisors(o.gpus / tp)) {
      if (o.fixed_pp && pp != o.fixed_pp) continue;
      const int dp = o.gpus / tp / pp;
      if (o.fixed_dp && dp != o.fixed_dp) continue;
      std::vector<std::pair<Sharding, int>> shardings = {{Sharding::kNone, 1}};
      if (dp > 1) shardings.emplace_back(Sharding::kZero1, 1);
      for (int s : divisors(dp))
        if (s > 1) shardings.emplace_back(Sharding::kSdp, s);
      for (int mb = 1; mb <= o.max_microbatch_size; mb *= 2) {
        for (const auto& [kind, chunks] : schedules(sw, pp)) {
          for (const auto& [sharding, sdp] : shardings) {
            for (Recompute rc : recomputes) {
              for (bool offload : {false, true}) {
                if (offload && (!sw.offload || rc != Recompute::kFull)) continue;
                for (const auto& placement : o.placements) {
                  Layout l;
                  l.pp = pp, l.tp = tp, l.dp = dp, l.sharding = sharding, l.sdp = sdp;
                  l.microbatch_size = mb, l.schedule = kind, l.chunks = chunks;
                  l.recompute = rc, l.offload = offload, l.placement = placement;
                  Estimate e = estimate(model, cluster, sw, workload, l);
                  if (e.valid) all.push_back({l, e});
                  else if (first_reason.empty()) first_reason = l.to_string() + ": " + e.why_invalid;
                }
              }
            }
          }
        }
      }
    }
  }
  if (all.empty())
    throw ConfigError("no layout of " + model.name + " on " + std::to_string(o.gpus) +
                      " devices is valid; e.g. " + first_reason);
  std::stable_sort(all.begin(), all.end(), [](const Candidate& a, const Candidate& b) {
    if (a.estimate.fits != b.estimate.fits) return a.estimate.fits;
    if (!a.estimate.fits) return a.estimate.memory_gb < b.estimate.memory_gb;
    if (a.estimate.tokens_per_s != b.estimate.tokens_per_s)
      return a.estimate.tokens_per_s > b.estimate.tokens_per_s;
    return a.estimate.memory_gb < b.estimate.memory_gb;
  });
  return all;
}

std::string table(const std::vector<Candidate>& candidates, size_t rows) {
  std::ostringstream o;
  char line[256];
  std::snprintf(line, sizeof line, "%-4s %-46s %10s %12s %6s %9s %7s %9s %s\n", "rank", "layout",
                "step_s", "tokens/s", "MFU", "mem_GB", "bubble", "comm_s", "fits");
  o << line;
  for (size_t i = 0; i < std::min(rows, candidates.size()); ++i) {
    const Estimate& e = candidates[i].estimate;
    const double comm = e.tp_comm_s + e.pp_comm_s + e.dp_exposed_s + e.sdp_exposed_s;
    std::snprintf(line, sizeof line, "%-4zu %-46s %10.4g %12.4g %5.1f%% %9.2f %6.1f%% %9.3g %s\n",
                  i + 1, candidates[i].layout.to_string().c_str(), e.step_s, e.tokens_per_s,
                  100 * e.mfu, e.memory_gb, 100 * e.bubble, comm, e.fits ? "yes" : "no");
    o << line;
  }
  return o.str();
}

std::string explain(const ModelSpec& model, const ClusterSpec& cluster, const Software& sw,
                    const Workload& workload, const Layout& layout) {
  const Estimate e = estimate(model, cluster, sw, workload, layout);
  std::ostringstream o;
  o << "layout " << layout.to_string() << " of " << model.name << " ("
    << format("%.3g", static_cast<double>(model.parameters(workload.seq)) / 1e9)
    << "B parameters) on " << layout.world() << " x " << cluster.name << ", " << sw.name
    << ", global batch " << workload.global_batch << " x " << workload.seq << " tokens, "
    << to_string(workload.precision) << "\n";
  if (!e.valid) return o.str() + "invalid: " + e.why_invalid + "\n";
  o << "step " << format("%.4g s", e.step_s) << ", " << format("%.4g tokens/s", e.tokens_per_s)
    << ", MFU " << format("%.1f%%", 100 * e.mfu) << ", "
    << format("%.1f TFLOP/s per device executed", e.hardware_tflops_per_device) << "\n"
    << "  microbatches per pipeline   " << e.microbatches << " of " << layout.microbatch_size << "\n"
    << "  one microbatch, slowest stage: forward " << format("%.4g s", e.forward_s)
    << ", backward " << format("%.4g s", e.backward_s) << " (communication included)\n"
    << "  pipeline (simulated)        " << format("%.4g s, bubble %.1f%%", e.pipeline_s, 100 * e.bubble) << "\n"
    << "  tensor-parallel comm        " << format("%.4g s (in the pipeline time)", e.tp_comm_s) << "\n"
    << "  pipeline sends              " << format("%.4g s (in the pipeline time)", e.pp_comm_s) << "\n"
    << "  data-parallel reduction     " << format("%.4g s, exposed %.4g s", e.dp_comm_s, e.dp_exposed_s) << "\n"
    << "  sharded-DP gathers          " << format("%.4g s, exposed %.4g s", e.sdp_comm_s, e.sdp_exposed_s) << "\n"
    << "  optimizer step              " << format("%.4g s", e.optimizer_s) << "\n"
    << "  fixed per step              " << format("%.4g s", cluster.step_overhead_s) << "\n"
    << "memory per device " << format("%.2f GB of %.0f GB", e.memory_gb, cluster.memory_gb)
    << (e.fits ? " (fits)" : " (does NOT fit)") << "\n"
    << "  weights " << format("%.2f GB, gradients %.2f GB, optimizer state %.2f GB", e.weights_gb, e.grads_gb, e.optimizer_gb)
    << ", gathered layers " << format("%.2f GB", e.gathered_gb) << "\n"
    << "  activations " << format("%.2f GB (%.0f microbatches held), logits %.2f GB", e.activations_gb, e.in_flight, e.logits_gb)
    << ", runtime " << format("%.2f GB", e.overhead_gb) << "\n";
  return o.str();
}

nlohmann::json smp_config(const ModelSpec& model, const Workload& workload, const Candidate& best) {
  const Layout& l = best.layout;
  const Estimate& e = best.estimate;
  nlohmann::json smp = {{"pipeline_parallel_degree", l.pp}, {"tensor_parallel_degree", l.tp},
                        {"microbatches", e.microbatches}, {"placement_strategy", l.placement}};
  if (l.dp > 1 || l.tp > 1) smp["ddp"] = true;
  if (l.pp > 1)
    smp["pipeline"] = l.schedule == ScheduleKind::kSimple ? "simple"
                      : l.schedule == ScheduleKind::kZeroBubble ? "zero_bubble" : "interleaved";
  if (l.sharding == Sharding::kZero1) smp["shard_optimizer_state"] = true;
  if (l.sharding == Sharding::kSdp) smp["sharded_data_parallel_degree"] = l.sdp;
  if (l.offload) smp["offload_activations"] = true;
  if (workload.precision == Precision::kBf16) smp["bf16"] = true;
  if (workload.precision == Precision::kFp16) smp["fp16"] = true;
  nlohmann::json training = {{"global_batch", workload.global_batch}, {"seq_len", workload.seq},
                             {"activation_checkpointing", l.recompute == Recompute::kFull ? "each" : "none"}};
  if (l.chunks > 1) training["chunks_per_rank"] = l.chunks;
  nlohmann::json plan = {{"model", model.name}, {"layout", l.to_string()},
                         {"step_s", e.step_s}, {"tokens_per_s", e.tokens_per_s}, {"mfu", e.mfu},
                         {"memory_gb_per_device", e.memory_gb}, {"bubble", e.bubble}};
  return {{"smp", smp}, {"training", training}, {"plan", plan}};
}

}  // namespace smp::plan
