// smp-train's JSON configuration and learning-rate schedule (see train_config.h).
#include "smp/train/train_config.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <functional>
#include <map>
#include <sstream>

#include <nlohmann/json.hpp>

#include "smp/distributed_model.h"
#include "smp/core/error.h"
#include "smp/core/files.h"
#include "smp/models/hf.h"
#include "smp/core/suggest.h"

namespace smp::train {
namespace {

using nlohmann::json;

[[noreturn]] void bad(const std::string& where, const json& value, const std::string& allowed) {
  throw ConfigError("run config " + where + ": got " + value.dump() + "; allowed: " + allowed);
}

// One section: each key a setter that checks its value; unknown keys get a suggestion.
using Setters = std::map<std::string, std::function<void(const json&)>>;

void apply(const std::string& section, const json& values, const Setters& setters) {
  if (!values.is_object()) bad("\"" + section + "\"", values, "an object");
  std::vector<std::string> names;
  for (const auto& [name, setter] : setters) names.push_back(name);
  for (const auto& [key, value] : values.items()) {
    const auto it = setters.find(key);
    if (it == setters.end()) {
      throw ConfigError("run config: unknown key \"" + section + "." + key + "\"" +
                        suggestion(key, names));
    }
    it->second(value);
  }
}

std::function<void(const json&)> string_into(const std::string& where, std::string* out) {
  return [where, out](const json& v) {
    if (!v.is_string()) bad(where, v, "a string");
    *out = v.get<std::string>();
  };
}

std::function<void(const json&)> int_into(const std::string& where, int64_t* out, int64_t min) {
  return [where, out, min](const json& v) {
    if (!v.is_number_integer() || v.get<int64_t>() < min) {
      bad(where, v, "an integer >= " + std::to_string(min));
    }
    *out = v.get<int64_t>();
  };
}

std::function<void(const json&)> real_into(const std::string& where, double* out, double min,
                                           double max) {
  return [where, out, min, max](const json& v) {
    if (!v.is_number() || v.get<double>() < min || v.get<double>() > max) {
      bad(where, v, "a number in [" + std::to_string(min) + ", " + std::to_string(max) + "]");
    }
    *out = v.get<double>();
  };
}

Setters data_setters(DataConfig& d) {
  return {{"text", string_into("data.text", &d.text)},
          {"shards_dir", string_into("data.shards_dir", &d.shards_dir)},
          {"vocab_json", string_into("data.vocab_json", &d.vocab_json)},
          {"merges_txt", string_into("data.merges_txt", &d.merges_txt)},
          {"val_fraction", real_into("data.val_fraction", &d.val_fraction, 0, 0.5)}};
}

// "block", "block.<i>" or "block.<i>-<j>" (i <= j): the group's first and last block.
CheckpointedBlocks block_group(const std::string& name, const std::string& strategy) {
  const std::string where = "training.activation_checkpointing key";
  const std::string allowed = "\"block\", \"block.<i>\" or \"block.<i>-<j>\" (i <= j)";
  if (name == "block") return {name, 0, -1, strategy};
  const std::string digits = "0123456789";
  const size_t dash = name.find('-');
  const std::string a = name.rfind("block.", 0) == 0 ? name.substr(6, dash == std::string::npos ? dash : dash - 6) : "";
  const std::string b = dash == std::string::npos ? a : name.substr(dash + 1);
  const bool numbers = !a.empty() && !b.empty() && a.size() < 10 && b.size() < 10 &&
                       a.find_first_not_of(digits) == std::string::npos &&
                       b.find_first_not_of(digits) == std::string::npos;
  if (!numbers || std::stoll(a) > std::stoll(b)) bad(where, name, allowed);
  return {name, std::stoll(a), std::stoll(b), strategy};
}

// training.activation_checkpointing: a strategy for every block ("none": no checkpointing), or
// an object from block group to strategy; groups must not overlap.
std::vector<CheckpointedBlocks> checkpointed_blocks(const json& v) {
  const std::string key = "training.activation_checkpointing";
  const std::string strategies = "\"none\", \"each\", \"contiguous\", \"group_<N>\"";
  const auto strategy_of = [&](const std::string& where, const json& s) {
    if (!s.is_string()) bad(where, s, strategies);
    const std::string strategy = s.get<std::string>();
    if (strategy != "none") ActivationCheckpointing{strategy}.max_run_length("run config " + where);
    return strategy;
  };
  std::vector<CheckpointedBlocks> groups;
  if (!v.is_object()) {
    const std::string strategy = strategy_of(key, v);
    if (strategy != "none") groups.push_back({"block", 0, -1, strategy});
    return groups;
  }
  for (const auto& [name, s] : v.items()) {
    const CheckpointedBlocks group = block_group(name, strategy_of(key + ".\"" + name + "\"", s));
    for (const CheckpointedBlocks& other : groups) {
      const bool apart = (other.last >= 0 && other.last < group.first) || (group.last >= 0 && group.last < other.first);
      if (!apart) bad(key, v, "block groups apart; \"" + other.name + "\" and \"" + name + "\" overlap");
    }
    groups.push_back(group);
  }
  const auto none = [](const CheckpointedBlocks& g) { return g.strategy == "none"; };  // left alone
  groups.erase(std::remove_if(groups.begin(), groups.end(), none), groups.end());
  return groups;
}

Setters training_setters(TrainingConfig& t) {
  return {
      {"steps", int_into("training.steps", &t.steps, 1)},
      {"global_batch", int_into("training.global_batch", &t.global_batch, 1)},
      {"seq_len", int_into("training.seq_len", &t.seq_len, 1)},
      {"lr", real_into("training.lr", &t.lr, 0, 10)},
      {"min_lr", real_into("training.min_lr", &t.min_lr, 0, 10)},
      {"warmup_steps", int_into("training.warmup_steps", &t.warmup_steps, 0)},
      {"optimizer",
       [&t](const json& v) {
         if (!v.is_string() || (v != "adamw" && v != "sgd")) bad("training.optimizer", v, "\"adamw\", \"sgd\"");
         t.optimizer = v.get<std::string>();
       }},
      {"weight_decay", real_into("training.weight_decay", &t.weight_decay, 0, 10)},
      {"beta1", real_into("training.beta1", &t.beta1, 0, 0.999999)},
      {"beta2", real_into("training.beta2", &t.beta2, 0, 0.999999)},
      {"momentum", real_into("training.momentum", &t.momentum, 0, 0.999999)},
      {"grad_clip", real_into("training.grad_clip", &t.grad_clip, 0, 1e9)},
      {"max_nonfinite_steps", int_into("training.max_nonfinite_steps", &t.max_nonfinite_steps, 0)},
      {"precision",
       [&t](const json& v) {
         if (!v.is_string() || (v != "fp32" && v != "bf16" && v != "fp16")) {
           bad("training.precision", v, "\"fp32\", \"bf16\", \"fp16\"");
         }
         t.precision = v.get<std::string>();
       }},
      {"seed",
       [&t](const json& v) {
         if (!v.is_number_integer() || v.get<int64_t>() < 0) bad("training.seed", v, "an integer >= 0");
         t.seed = v.get<uint64_t>();
       }},
      {"val_every", int_into("training.val_every", &t.val_every, 0)},
      {"val_batches", int_into("training.val_batches", &t.val_batches, 1)},
      {"device",
       [&t](const json& v) {
         if (!v.is_string() || (v != "cpu" && v != "cuda")) bad("training.device", v, "\"cpu\", \"cuda\"");
         t.device = v.get<std::string>();
       }},
      {"peak_tflops", real_into("training.peak_tflops", &t.peak_tflops, 0, 1e6)},
      {"tf32",
       [&t](const json& v) {
         if (!v.is_boolean()) bad("training.tf32", v, "true, false");
         t.tf32 = v.get<bool>();
       }},
      {"cuda_graphs",
       [&t](const json& v) {
         if (!v.is_boolean()) bad("training.cuda_graphs", v, "true, false");
         t.cuda_graphs = v.get<bool>();
       }},
      {"chunks_per_rank", int_into("training.chunks_per_rank", &t.chunks_per_rank, 1)},
      {"activation_checkpointing", [&t](const json& v) { t.activation_checkpointing = checkpointed_blocks(v); }},
      {"prompt", string_into("training.prompt", &t.prompt)},
      {"sample_tokens", int_into("training.sample_tokens", &t.sample_tokens, 0)},
      {"temperature", real_into("training.temperature", &t.temperature, 0, 100)},
  };
}

Setters checkpoint_setters(CheckpointConfig& k) {
  return {{"dir", string_into("checkpoint.dir", &k.dir)},
          {"every", int_into("checkpoint.every", &k.every, 0)},
          {"keep", int_into("checkpoint.keep", &k.keep, 0)},
          {"full_at_end",
           [&k](const json& v) {
             if (!v.is_boolean()) bad("checkpoint.full_at_end", v, "true or false");
             k.full_at_end = v.get<bool>();
           }},
          {"resume", string_into("checkpoint.resume", &k.resume)},
          {"test_kill_rank", int_into("checkpoint.test_kill_rank", &k.test_kill_rank, -1)}};
}

// {"name": ..., overrides} or {"from_hf": folder[, "dropout": p]}.
void model_section(const json& v, TrainConfig& c) {
  if (!v.is_object() || !v.contains("from_hf")) {
    c.model = models::model_config_from_json(v);
    return;
  }
  for (const auto& [key, value] : v.items()) {
    if (key != "from_hf" && key != "dropout") {
      bad("model." + key, value, "only \"dropout\" beside \"from_hf\" (the folder's config.json "
                                 "gives the architecture)");
    }
  }
  if (!v["from_hf"].is_string()) bad("model.from_hf", v["from_hf"], "a folder path");
  c.init_from_hf = v["from_hf"].get<std::string>();
  const std::string path = c.init_from_hf + "/config.json";
  json hf;
  try {
    hf = json::parse(files::read_file(path));
  } catch (const Error& e) {
    throw ConfigError(std::string("model.from_hf: ") + e.what());
  } catch (const json::exception& e) {
    throw ConfigError("model.from_hf: " + path + " is not valid JSON: " + e.what());
  }
  c.model = models::model_config_from_hf(hf);
  if (v.contains("dropout")) {
    if (!v["dropout"].is_number() || v["dropout"].get<double>() < 0 || v["dropout"].get<double>() >= 1) {
      bad("model.dropout", v["dropout"], "0 <= dropout < 1");
    }
    c.model.dropout = v["dropout"].get<double>();
  }
}

}  // namespace

TrainConfig TrainConfig::from_json_string(const std::string& text) {
  json root;
  try {
    root = json::parse(text);
  } catch (const json::exception& e) {  // parse_error, or out_of_range for a number past double
    throw ConfigError(std::string("run config: invalid JSON: ") + e.what());
  }
  TrainConfig c;
  json smp_section = json::object();
  apply("", root,
        {{"model", [&](const json& v) { model_section(v, c); }},
         {"data", [&](const json& v) { apply("data", v, data_setters(c.data)); }},
         {"training", [&](const json& v) { apply("training", v, training_setters(c.training)); }},
         {"checkpoint", [&](const json& v) { apply("checkpoint", v, checkpoint_setters(c.checkpoint)); }},
         {"smp", [&](const json& v) { smp_section = v; }},
         {"run_dir", string_into("run_dir", &c.run_dir)}});
  // The precision sets SMP's keys, unless the smp section already says otherwise.
  if (c.training.precision != "fp32" && smp_section.is_object()) {
    const std::string key = c.training.precision;  // "bf16" or "fp16"
    if (smp_section.contains(key) && smp_section[key] != true) {
      bad("smp." + key, smp_section[key], "true, as training.precision is \"" + key + "\"");
    }
    smp_section[key] = true;
  }
  // smp-train averages its data-parallel replicas: "ddp" is true unless the section says
  // otherwise (SMP's default is false; SMP's scripts set it; false with replicas is refused).
  if (smp_section.is_null()) smp_section = json::object();
  if (smp_section.is_object() && !smp_section.contains("ddp") && !smp_section.contains("horovod")) {
    smp_section["ddp"] = true;
  }
  c.smp = Config::from_json(smp_section);
  if (c.checkpoint.dir.empty()) c.checkpoint.dir = c.run_dir + "/checkpoints";
  if (c.data.text.empty() == c.data.shards_dir.empty()) {
    throw ConfigError("run config data: give exactly one of \"text\" (a text file) and "
                      "\"shards_dir\" (a folder of token shards)");
  }
  if (c.training.seq_len > c.model.max_seq_len) {
    throw ConfigError("run config training.seq_len (" + std::to_string(c.training.seq_len) +
                      ") is longer than the model's max_seq_len (" +
                      std::to_string(c.model.max_seq_len) + ")");
  }
  if (c.training.chunks_per_rank > 1 &&
      (c.smp.pipeline_parallel_degree < 2 || c.smp.pipeline != PipelineMode::kInterleaved)) {
    bad("training.chunks_per_rank", c.training.chunks_per_rank,
        "1, or more with smp.pipeline_parallel_degree > 1 and smp.pipeline \"interleaved\" (the "
        "schedule that runs virtual stages); here pipeline_parallel_degree is " +
            std::to_string(c.smp.pipeline_parallel_degree) + " and pipeline \"" + to_string(c.smp.pipeline) + "\"");
  }
  if (c.training.chunks_per_rank > 1 && c.smp.microbatches % c.smp.pipeline_parallel_degree != 0) {
    bad("training.chunks_per_rank", c.training.chunks_per_rank,
        "1 when smp.microbatches (" + std::to_string(c.smp.microbatches) + ") is not a multiple of "
        "smp.pipeline_parallel_degree (" + std::to_string(c.smp.pipeline_parallel_degree) +
        "), as the interleaved schedule needs");
  }
  if (c.training.cuda_graphs && c.training.device != "cuda") {
    bad("training.cuda_graphs", true, "false with training.device \"" + c.training.device +
                                          "\" (CUDA graphs need \"cuda\")");
  }
  if (c.training.cuda_graphs && c.smp.pipeline_parallel_degree != 1) {
    bad("training.cuda_graphs", true,
        "false with smp.pipeline_parallel_degree " + std::to_string(c.smp.pipeline_parallel_degree) +
            " (a captured step is one stage's: pipeline_parallel_degree 1 only)");
  }
  if (c.training.min_lr > c.training.lr) {
    throw ConfigError("run config training.min_lr (" + std::to_string(c.training.min_lr) +
                      ") is above training.lr (" + std::to_string(c.training.lr) + ")");
  }
  return c;
}

void TrainConfig::validate(int world_size) const {
  // Ranks with different samples: the data-parallel replicas, and in SMP's non-prescaled flow
  // each rank of a TP group too.
  const int rdp = smp.rdp_degree(world_size);  // throws when the layout does not fit
  const bool own_samples = !smp.prescaled_batch && smp.tensor_parallel_degree > 1;
  const int replicas = own_samples ? rdp * smp.tensor_parallel_degree : rdp;
  const std::string who =
      own_samples ? "data-parallel ranks (" + std::to_string(replicas) + " on " +
                        std::to_string(world_size) + " ranks: rdp " + std::to_string(rdp) + " x tp " +
                        std::to_string(smp.tensor_parallel_degree) + ", smp.prescaled_batch false)"
                  : "data-parallel replicas (" + std::to_string(replicas) + " on " +
                        std::to_string(world_size) + " ranks)";
  const int64_t batch = training.global_batch;
  if (batch % replicas != 0) {
    throw ConfigError("run config training.global_batch: got " + std::to_string(batch) +
                      "; allowed: a multiple of the " + who);
  }
  const int64_t per_replica = batch / replicas;
  const int64_t microbatches = smp.microbatches;
  if (per_replica % microbatches != 0) {
    throw ConfigError("run config training.global_batch: got " + std::to_string(batch) + ", " +
                      std::to_string(per_replica) + " per rank of the " + who +
                      ", which smp.microbatches (" + std::to_string(microbatches) +
                      ") does not divide; allowed: a multiple of " +
                      std::to_string(replicas * microbatches) + " (replicas x microbatches)");
  }
  if (training.cuda_graphs && world_size != 1) {
    bad("training.cuda_graphs", true,
        "false on " + std::to_string(world_size) + " ranks (smp's collectives wait on the host, "
        "which a captured graph cannot: one rank only)");
  }
  for (const CheckpointedBlocks& group : training.activation_checkpointing) {
    if (group.last >= model.num_layers) {
      bad("training.activation_checkpointing key", group.name,
          "blocks of the model, block.0 to block." + std::to_string(model.num_layers - 1));
    }
  }
}

TrainConfig TrainConfig::from_json_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw ConfigError("run config: cannot read " + path);
  std::ostringstream text;
  text << in.rdbuf();
  try {
    return from_json_string(text.str());
  } catch (const ConfigError& e) {
    throw ConfigError(path + ": " + e.what());
  }
}

double learning_rate(const TrainingConfig& t, int64_t step) {
  if (step < t.warmup_steps) return t.lr * static_cast<double>(step + 1) / t.warmup_steps;
  const int64_t decay_steps = std::max<int64_t>(1, t.steps - 1 - t.warmup_steps);
  const double progress = std::min(1.0, static_cast<double>(step - t.warmup_steps) / decay_steps);
  return t.min_lr + 0.5 * (t.lr - t.min_lr) * (1 + std::cos(M_PI * progress));
}

}  // namespace smp::train
