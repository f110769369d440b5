// Cluster presets and their JSON form.
#include "smp/plan/cluster.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <map>

#include <nlohmann/json.hpp>

#include "smp/core/error.h"

namespace smp::plan {
namespace {

// GEMM efficiency on an A100 (cuBLAS, 16-bit, as a share of 312 TFLOP/s) by the smallest
// dimension. Fitted to the published runs of Narayanan et al. 2021 (Tables 1 and 2;
// docs/planner.md says how).
const std::vector<std::pair<double, double>> kAmpereGemm = {
    {64, 0.42}, {128, 0.55}, {256, 0.66}, {512, 0.74}, {1024, 0.79},
    {2048, 0.81}, {4096, 0.82}, {16384, 0.82}};

ClusterSpec a100(const std::string& name, double memory_gb, double hbm_gb_s) {
  ClusterSpec c;
  c.name = name, c.gpus_per_node = 8, c.memory_gb = memory_gb;
  c.peak_tflops_fp32 = 19.5, c.peak_tflops_16bit = 312;
  c.gemm_efficiency = kAmpereGemm, c.attention_efficiency = 0.55;
  c.memory_bandwidth_gb_s = 0.8 * hbm_gb_s;
  c.intra_node = {230, 8};  // NVLink 3 (600 GB/s both ways): NCCL bus bandwidth
  c.host_link_gb_s = 20, c.runtime_overhead_gb = 2.0, c.activation_memory_factor = 1.1;
  return c;
}

const std::map<std::string, ClusterSpec>& presets() {
  static const std::map<std::string, ClusterSpec> p = [] {
    std::map<std::string, ClusterSpec> m;
    ClusterSpec efa = a100("a100-efa", 40, 1555);
    efa.description = "ml.p4d.24xlarge (SMP's instance): 8 x A100 40 GB, NVLink 3, 400 Gb/s EFA per node";
    efa.inter_node = {5.0, 20};  // 50 GB/s per node over 8 GPUs, at NCCL-over-EFA efficiency
    m[efa.name] = efa;
    ClusterSpec ib = a100("a100-ib", 80, 2039);
    ib.description = "DGX A100 (Selene): 8 x A100 80 GB, NVLink 3, 8 x 200 Gb/s HDR InfiniBand per node";
    ib.inter_node = {22, 5};
    m[ib.name] = ib;
    ClusterSpec h100;
    h100.name = "h100-ib";
    h100.description = "DGX H100: 8 x H100 80 GB SXM, NVLink 4, 8 x 400 Gb/s InfiniBand per node";
    h100.gpus_per_node = 8, h100.memory_gb = 80;
    h100.peak_tflops_fp32 = 67, h100.peak_tflops_16bit = 989;
    // No published run with its layout checks H100 here: its curve is the A100's at 0.9 (large
    // bf16 GEMMs reach about 0.74 of the 989 TFLOP/s peak; an assumption, docs/planner.md).
    h100.gemm_efficiency = kAmpereGemm;
    for (auto& [d, e] : h100.gemm_efficiency) e *= 0.9;
    h100.attention_efficiency = 0.5;
    h100.memory_bandwidth_gb_s = 0.8 * 3350;
    h100.intra_node = {370, 8}, h100.inter_node = {42, 10};
    h100.host_link_gb_s = 40, h100.runtime_overhead_gb = 2.5, h100.activation_memory_factor = 1.1;
    m[h100.name] = h100;
    return m;
  }();
  return p;
}

[[noreturn]] void bad(const std::string& key, const nlohmann::json& value,
                      const std::string& allowed) {
  throw ConfigError("cluster key \"" + key + "\": got " + value.dump() + "; allowed: " + allowed);
}

double number(const std::string& key, const nlohmann::json& v, double low, bool open_low) {
  if (!v.is_number() || !std::isfinite(v.get<double>()) ||
      (open_low ? v.get<double>() <= low : v.get<double>() < low))
    bad(key, v, std::string("a number ") + (open_low ? "> " : ">= ") + std::to_string(low));
  return v.get<double>();
}

Link link_from(const std::string& key, const nlohmann::json& v) {
  const bool p2p = v.is_object() && v.contains("p2p_bandwidth_gb_s");
  if (!v.is_object() || !v.contains("bandwidth_gb_s") || !v.contains("latency_us") ||
      v.size() != (p2p ? 3u : 2u))
    bad(key, v, "{\"bandwidth_gb_s\": > 0, \"latency_us\": >= 0[, \"p2p_bandwidth_gb_s\": > 0]}");
  Link l{number(key + ".bandwidth_gb_s", v.at("bandwidth_gb_s"), 0, true),
         number(key + ".latency_us", v.at("latency_us"), 0, false)};
  if (p2p) l.p2p_bandwidth_gb_s = number(key + ".p2p_bandwidth_gb_s", v.at("p2p_bandwidth_gb_s"), 0, true);
  return l;
}

}  // namespace

double ClusterSpec::efficiency(double min_dim) const {
  const auto& t = gemm_efficiency;
  if (min_dim <= t.front().first) return t.front().second;
  if (min_dim >= t.back().first) return t.back().second;
  for (size_t i = 1; i < t.size(); ++i) {
    if (min_dim <= t[i].first) {
      const double x = std::log(min_dim / t[i - 1].first) / std::log(t[i].first / t[i - 1].first);
      return t[i - 1].second + x * (t[i].second - t[i - 1].second);
    }
  }
  return t.back().second;
}

std::vector<std::string> cluster_preset_names() {
  std::vector<std::string> names;
  for (const auto& [n, c] : presets()) names.push_back(n);
  return names;
}

ClusterSpec cluster_preset(const std::string& name) {
  const auto it = presets().find(name);
  if (it == presets().end()) {
    std::string all;
    for (const auto& n : cluster_preset_names()) all += (all.empty() ? "" : ", ") + n;
    throw ConfigError("cluster \"" + name + "\" is unknown; allowed: " + all +
                      ", or a cluster JSON file (bench/planner/machine_probe writes one)");
  }
  return it->second;
}

ClusterSpec cluster_from_json(const nlohmann::json& json) {
  if (!json.is_object()) bad("cluster", json, "a JSON object");
  ClusterSpec c;
  if (json.contains("preset")) {
    if (!json.at("preset").is_string()) bad("preset", json.at("preset"), "a preset name");
    c = cluster_preset(json.at("preset").get<std::string>());
  }
  const auto positive_int = [&](const std::string& key, const nlohmann::json& v, int low) {
    if (!v.is_number_integer() || v.get<int64_t>() < low || v.get<int64_t>() > 1 << 20)
      bad(key, v, "an integer >= " + std::to_string(low));
    return static_cast<int>(v.get<int64_t>());
  };
  const std::map<std::string, std::function<void(const nlohmann::json&)>> keys = {
      {"preset", [](const nlohmann::json&) {}},
      {"name", [&](const nlohmann::json& v) {
         if (!v.is_string()) bad("name", v, "a string");
         c.name = v.get<std::string>();
       }},
      {"description", [&](const nlohmann::json& v) {
         if (!v.is_string()) bad("description", v, "a string");
         c.description = v.get<std::string>();
       }},
      {"gpus_per_node", [&](const nlohmann::json& v) { c.gpus_per_node = positive_int("gpus_per_node", v, 1); }},
      {"compute_slots_per_node", [&](const nlohmann::json& v) {
         c.compute_slots_per_node = positive_int("compute_slots_per_node", v, 0);
       }},
      {"memory_gb", [&](const nlohmann::json& v) { c.memory_gb = number("memory_gb", v, 0, true); }},
      {"peak_tflops", [&](const nlohmann::json& v) {
         if (!v.is_object() || !v.contains("fp32")) bad("peak_tflops", v, "{\"fp32\": x, \"bf16\": y}");
         for (const auto& [k, x] : v.items()) {
           if (k == "fp32") c.peak_tflops_fp32 = number("peak_tflops.fp32", x, 0, true);
           else if (k == "bf16" || k == "fp16") c.peak_tflops_16bit = number("peak_tflops." + k, x, 0, true);
           else bad("peak_tflops." + k, x, "keys fp32, bf16, fp16");
         }
       }},
      {"gemm_efficiency", [&](const nlohmann::json& v) {
         const std::string allowed = "[[min_dim, share of peak in (0, 1]], ...] with min_dim ascending";
         if (!v.is_array() || v.empty()) bad("gemm_efficiency", v, allowed);
         c.gemm_efficiency.clear();
         for (const auto& p : v) {
           if (!p.is_array() || p.size() != 2 || !p[0].is_number() || !p[1].is_number() ||
               p[0].get<double>() <= 0 || p[1].get<double>() <= 0 || p[1].get<double>() > 1 ||
               (!c.gemm_efficiency.empty() && p[0].get<double>() <= c.gemm_efficiency.back().first))
             bad("gemm_efficiency", v, allowed);
           c.gemm_efficiency.emplace_back(p[0].get<double>(), p[1].get<double>());
         }
       }},
      {"attention_efficiency", [&](const nlohmann::json& v) {
         c.attention_efficiency = number("attention_efficiency", v, 0, true);
       }},
      {"memory_bandwidth_gb_s", [&](const nlohmann::json& v) {
         c.memory_bandwidth_gb_s = number("memory_bandwidth_gb_s", v, 0, true);
       }},
      {"softmax_bandwidth_gb_s", [&](const nlohmann::json& v) {
         c.softmax_bandwidth_gb_s = number("softmax_bandwidth_gb_s", v, 0, false);
       }},
      {"intra_node", [&](const nlohmann::json& v) { c.intra_node = link_from("intra_node", v); }},
      {"inter_node", [&](const nlohmann::json& v) { c.inter_node = link_from("inter_node", v); }},
      {"host_link_gb_s", [&](const nlohmann::json& v) { c.host_link_gb_s = number("host_link_gb_s", v, 0, true); }},
      {"runtime_overhead_gb", [&](const nlohmann::json& v) {
         c.runtime_overhead_gb = number("runtime_overhead_gb", v, 0, false);
       }},
      {"activation_memory_factor", [&](const nlohmann::json& v) {
         c.activation_memory_factor = number("activation_memory_factor", v, 0, true);
       }},
      {"step_overhead_s", [&](const nlohmann::json& v) { c.step_overhead_s = number("step_overhead_s", v, 0, false); }},
  };
  for (const auto& [key, value] : json.items()) {
    const auto it = keys.find(key);
    if (it == keys.end()) {
      std::string all;
      for (const auto& [k, f] : keys) all += (all.empty() ? "" : ", ") + k;
      bad(key, value, "the keys " + all);
    }
    it->second(value);
  }
  if (c.peak_tflops_16bit <= 0) c.peak_tflops_16bit = c.peak_tflops_fp32;
  return c;
}

nlohmann::json to_json(const ClusterSpec& c) {
  nlohmann::json gemm = nlohmann::json::array();
  for (const auto& [d, e] : c.gemm_efficiency) gemm.push_back({d, e});
  const auto link = [](const Link& l) {
    nlohmann::json j{{"bandwidth_gb_s", l.bandwidth_gb_s}, {"latency_us", l.latency_us}};
    if (l.p2p_bandwidth_gb_s > 0) j["p2p_bandwidth_gb_s"] = l.p2p_bandwidth_gb_s;
    return j;
  };
  return {{"name", c.name}, {"description", c.description}, {"gpus_per_node", c.gpus_per_node},
          {"compute_slots_per_node", c.compute_slots_per_node}, {"memory_gb", c.memory_gb},
          {"peak_tflops", {{"fp32", c.peak_tflops_fp32}, {"bf16", c.peak_tflops_16bit}}},
          {"gemm_efficiency", gemm}, {"attention_efficiency", c.attention_efficiency},
          {"memory_bandwidth_gb_s", c.memory_bandwidth_gb_s},
          {"softmax_bandwidth_gb_s", c.softmax_bandwidth_gb_s},
          {"intra_node", link(c.intra_node)}, {"inter_node", link(c.inter_node)},
          {"host_link_gb_s", c.host_link_gb_s}, {"runtime_overhead_gb", c.runtime_overhead_gb},
          {"activation_memory_factor", c.activation_memory_factor},
          {"step_overhead_s", c.step_overhead_s}};
}

}  // namespace smp::plan
