// smp-plan: choose the layout for a model on a cluster before renting it.
//
//   smp-plan --model gpt3-175b --gpus 1024 --cluster h100-ib --global-batch 1536 --seq 2048
//            [--precision bf16] [--software smp] [--top 15] [--out best.json]
//            [--placements DPT,PDT] [--pp N] [--tp N] [--dp N] [--explain LAYOUT]
//   smp-plan --validate tests/plan/published_runs.json
//   smp-plan --fit measured.jsonl --cluster local.json [--out fitted.json]
//
// --model takes a named size, a Hugging Face config.json or a JSON file of dimensions;
// --cluster a preset (a100-efa, a100-ib, h100-ib) or a cluster JSON file (the one
// bench/planner/machine_probe writes is "this machine, measured"). docs/planner.md explains
// the cost model and what it was checked against.
#include <cstdio>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>

#include <nlohmann/json.hpp>

#include "smp/core/error.h"
#include "smp/plan/search.h"
#include "smp/plan/validation.h"

namespace {

using nlohmann::json;
using smp::ConfigError;

json read_json(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw ConfigError("cannot read \"" + path + "\"");
  try {
    return json::parse(in);
  } catch (const json::exception& e) {
    throw ConfigError("\"" + path + "\" is not JSON: " + e.what());
  }
}

bool is_file(const std::string& s) { return std::ifstream(s).good(); }

int integer(const std::string& flag, const std::string& value) {
  try {
    size_t used = 0;
    const long v = std::stol(value, &used);
    if (used == value.size() && v >= 1 && v <= (1L << 30)) return static_cast<int>(v);
  } catch (const std::exception&) {
  }
  throw ConfigError(flag + ": got \"" + value + "\"; allowed: an integer >= 1");
}

smp::plan::ModelSpec model_arg(const std::string& value) {
  if (!is_file(value)) return smp::plan::named_model_spec(value);
  const json j = read_json(value);
  const bool hf = j.contains("num_hidden_layers") || j.contains("n_layer") || j.contains("model_type");
  return hf ? smp::plan::model_spec_from_hf(j) : smp::plan::model_spec_from_json(j);
}

smp::plan::ClusterSpec cluster_arg(const std::string& value) {
  return is_file(value) ? smp::plan::cluster_from_json(read_json(value)) : smp::plan::cluster_preset(value);
}

void write_json(const std::string& path, const json& j) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp);
    out << j.dump(2) << "\n";
    if (!out) throw ConfigError("cannot write \"" + path + "\"");
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) throw ConfigError("cannot write \"" + path + "\"");
}

int validate(const std::string& path) {
  const auto checks = smp::plan::check_published(read_json(path));
  std::printf("%s", smp::plan::checks_table(checks).c_str());
  std::printf("published runs: %zu, median relative error %.3f\n", checks.size(),
              smp::plan::median_rel_err(checks));
  return 0;
}

int fit(const std::map<std::string, std::string>& a) {
  std::ifstream in(a.at("--fit"));
  if (!in) throw ConfigError("--fit: cannot read \"" + a.at("--fit") + "\"");
  std::vector<smp::plan::MeasuredRun> runs;
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) runs.push_back(smp::plan::measured_run_from_json(json::parse(line)));
  const auto cluster = cluster_arg(a.count("--cluster") ? a.at("--cluster") : "a100-ib");
  const auto sw = smp::plan::software_preset(a.count("--software") ? a.at("--software") : "smp");
  const auto fitted = smp::plan::fit_cluster(cluster, sw, runs);
  const auto checks = smp::plan::check_measured(cluster, sw, runs);
  std::printf("%s", smp::plan::checks_table(checks).c_str());
  std::printf("measured runs: %zu, median relative error %.3f (each run predicted by constants fitted to the others)\n",
              runs.size(), smp::plan::median_rel_err(checks));
  std::printf("fitted: compute scale in gemm_efficiency, step_overhead_s %.4g, runtime_overhead_gb %.3f, activation_memory_factor %.3f\n",
              fitted.step_overhead_s, fitted.runtime_overhead_gb, fitted.activation_memory_factor);
  if (a.count("--out")) write_json(a.at("--out"), smp::plan::to_json(fitted));
  return 0;
}

int plan(const std::map<std::string, std::string>& a) {
  for (const char* required : {"--model", "--gpus", "--global-batch", "--seq"})
    if (!a.count(required)) throw ConfigError(std::string(required) + " is required (see --help)");
  const auto model = model_arg(a.at("--model"));
  const auto cluster = cluster_arg(a.count("--cluster") ? a.at("--cluster") : "h100-ib");
  const auto sw = smp::plan::software_preset(a.count("--software") ? a.at("--software") : "smp");
  smp::plan::Workload w;
  w.global_batch = integer("--global-batch", a.at("--global-batch"));
  w.seq = integer("--seq", a.at("--seq"));
  w.precision = smp::plan::precision_from_string(a.count("--precision") ? a.at("--precision") : "bf16");
  smp::plan::SearchOptions o;
  o.gpus = integer("--gpus", a.at("--gpus"));
  if (a.count("--pp")) o.fixed_pp = integer("--pp", a.at("--pp"));
  if (a.count("--tp")) o.fixed_tp = integer("--tp", a.at("--tp"));
  if (a.count("--dp")) o.fixed_dp = integer("--dp", a.at("--dp"));
  if (a.count("--placements")) {
    o.placements.clear();
    std::stringstream in(a.at("--placements"));
    for (std::string p; std::getline(in, p, ',');) o.placements.push_back(p);
  }
  if (a.count("--explain")) {
    std::printf("%s", smp::plan::explain(model, cluster, sw, w, smp::plan::parse_layout(a.at("--explain"))).c_str());
    return 0;
  }
  const auto found = smp::plan::search(model, cluster, sw, w, o);
  std::printf("%s (%.3gB parameters) on %d x %s, %s, global batch %lld x %lld tokens, %s: %zu layouts\n",
              model.name.c_str(), static_cast<double>(model.parameters(w.seq)) / 1e9, o.gpus,
              cluster.name.c_str(), sw.name.c_str(), static_cast<long long>(w.global_batch),
              static_cast<long long>(w.seq), smp::plan::to_string(w.precision), found.size());
  const size_t top = a.count("--top") ? integer("--top", a.at("--top")) : 15;
  std::printf("%s", smp::plan::table(found, top).c_str());
  if (!found.front().estimate.fits) std::printf("no layout fits the devices' memory: add devices\n");
  std::printf("\n%s", smp::plan::explain(model, cluster, sw, w, found.front().layout).c_str());
  if (a.count("--out")) {
    write_json(a.at("--out"), smp::plan::smp_config(model, w, found.front()));
    std::printf("wrote %s\n", a.at("--out").c_str());
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const std::set<std::string> flags = {"--model", "--gpus", "--cluster", "--global-batch", "--seq",
                                       "--precision", "--software", "--top", "--out", "--placements",
                                       "--pp", "--tp", "--dp", "--explain", "--validate", "--fit"};
  std::map<std::string, std::string> args;
  try {
    for (int i = 1; i < argc; ++i) {
      const std::string flag = argv[i];
      if (flag == "--help" || flag == "-h") {
        std::printf("usage: smp-plan --model M --gpus N --global-batch B --seq S [--cluster C] "
                    "[--precision bf16] [--software smp] [--top 15] [--out best.json] "
                    "[--placements DPT,PDT] [--pp N] [--tp N] [--dp N] [--explain LAYOUT]\n"
                    "       smp-plan --validate published_runs.json\n"
                    "       smp-plan --fit measured.jsonl --cluster local.json [--out fitted.json]\n");
        return 0;
      }
      if (!flags.count(flag)) throw ConfigError("unknown argument \"" + flag + "\" (see --help)");
      if (i + 1 >= argc) throw ConfigError(flag + " needs a value");
      args[flag] = argv[++i];
    }
    if (args.count("--validate")) return validate(args.at("--validate"));
    if (args.count("--fit")) return fit(args);
    return plan(args);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "smp-plan: %s\n", e.what());
    return 1;
  }
}
