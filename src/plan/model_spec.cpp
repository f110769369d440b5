// The planner's model: parameter and FLOP counts, named sizes, Hugging Face config.json.
#include "smp/plan/model_spec.h"

#include <map>

#include <nlohmann/json.hpp>

#include "smp/core/error.h"
#include "smp/models/model_config.h"

namespace smp::plan {
namespace {

ModelSpec gpt(const std::string& name, int64_t layers, int64_t heads, int64_t hidden,
              int64_t vocab) {
  ModelSpec m;
  m.name = name, m.layers = layers, m.heads = heads, m.kv_heads = heads, m.hidden = hidden;
  m.ffn = 4 * hidden, m.vocab = vocab;
  return m;
}

ModelSpec llama(const std::string& name, int64_t layers, int64_t heads, int64_t kv_heads,
                int64_t hidden, int64_t ffn, int64_t vocab) {
  ModelSpec m = gpt(name, layers, heads, hidden, vocab);
  m.kv_heads = kv_heads, m.ffn = ffn, m.gated_mlp = true, m.tied_head = false;
  return m;
}

ModelSpec from_smp(const models::ModelConfig& c) {
  ModelSpec m;
  m.name = c.name, m.layers = c.num_layers, m.hidden = c.hidden, m.heads = c.num_heads;
  m.kv_heads = c.num_heads, m.ffn = c.ffn_hidden, m.vocab = c.vocab_size;
  m.gated_mlp = c.family == models::Family::kLlama, m.tied_head = c.tie_embeddings;
  return m;
}

const std::map<std::string, ModelSpec>& named() {
  static const std::map<std::string, ModelSpec> specs = [] {
    std::map<std::string, ModelSpec> m;
    for (const char* n : {"tiny", "gpt2-124m", "gpt2-350m", "llama-125m", "llama-1b"})
      m[n] = from_smp(models::named_model(n));
    m["gpt2-1.5b"] = gpt("gpt2-1.5b", 48, 25, 1600, 50257);
    m["gpt3-175b"] = gpt("gpt3-175b", 96, 96, 12288, 50257);
    m["llama2-7b"] = llama("llama2-7b", 32, 32, 32, 4096, 11008, 32000);
    m["llama2-13b"] = llama("llama2-13b", 40, 40, 40, 5120, 13824, 32000);
    m["llama2-70b"] = llama("llama2-70b", 80, 64, 8, 8192, 28672, 32000);
    m["llama3-8b"] = llama("llama3-8b", 32, 32, 8, 4096, 14336, 128256);
    m["llama3-70b"] = llama("llama3-70b", 80, 64, 8, 8192, 28672, 128256);
    m["llama3-405b"] = llama("llama3-405b", 126, 128, 8, 16384, 53248, 128256);
    // Narayanan et al. 2021, Table 1 and 2; Korthikanti et al. 2022, Table 3 (V = 51200).
    const struct { const char* name; int64_t heads, hidden, layers; } megatron[] = {
        {"megatron-1.7b", 24, 2304, 24},    {"megatron-3.6b", 32, 3072, 30},
        {"megatron-7.5b", 32, 4096, 36},    {"megatron-18.4b", 48, 6144, 40},
        {"megatron-22b", 64, 6144, 48},     {"megatron-39.1b", 64, 8192, 48},
        {"megatron-76.1b", 80, 10240, 60},  {"megatron-145.6b", 96, 12288, 80},
        {"megatron-175b", 96, 12288, 96},   {"megatron-310.1b", 128, 16384, 96},
        {"megatron-530b", 128, 20480, 105}, {"megatron-1t", 160, 25600, 128}};
    for (const auto& g : megatron) m[g.name] = gpt(g.name, g.layers, g.heads, g.hidden, 51200);
    return m;
  }();
  return specs;
}

[[noreturn]] void bad(const std::string& key, const nlohmann::json& value,
                      const std::string& allowed) {
  throw ConfigError("model key \"" + key + "\": got " + value.dump() + "; allowed: " + allowed);
}

int64_t positive(const nlohmann::json& json, const std::string& key) {
  const auto& v = json.at(key);
  if (!v.is_number_integer() || v.get<int64_t>() < 1) bad(key, v, "an integer >= 1");
  return v.get<int64_t>();
}

void check_heads(const ModelSpec& m) {
  if (m.hidden % m.heads != 0)
    throw ConfigError("model \"" + m.name + "\": hidden " + std::to_string(m.hidden) +
                      " does not divide by heads " + std::to_string(m.heads));
  if (m.kv_heads > m.heads || m.heads % m.kv_heads != 0)
    throw ConfigError("model \"" + m.name + "\": kv_heads " + std::to_string(m.kv_heads) +
                      " must divide heads " + std::to_string(m.heads));
}

}  // namespace

int64_t ModelSpec::block_parameters() const {
  const int64_t h = hidden, f = ffn, qkv = h + 2 * kv_dim();
  if (gated_mlp) return 2 * h + h * qkv + h * h + 3 * h * f;  // RMSNorms, q k v o, gate up down
  return 4 * h + h * qkv + qkv + h * h + h + h * f + f + f * h + h;  // LayerNorms and biases
}

int64_t ModelSpec::outer_parameters(int64_t seq) const {
  int64_t n = vocab * hidden + (gated_mlp ? hidden : seq * hidden + 2 * hidden);
  if (!tied_head) n += vocab * hidden;
  return n;
}

double ModelSpec::model_flops_per_sequence(int64_t seq) const {
  const double s = static_cast<double>(seq), h = static_cast<double>(hidden);
  const double forward_block = 2 * s * h * static_cast<double>(h + 2 * kv_dim())  // qkv
                               + 4 * s * s * h                                    // QK^T, AV
                               + 2 * s * h * h                                    // out proj
                               + (gated_mlp ? 3 : 2) * 2 * s * h * static_cast<double>(ffn);
  const double forward_head = 2 * s * h * static_cast<double>(vocab);
  return 3 * (static_cast<double>(layers) * forward_block + forward_head);
}

std::vector<std::string> model_spec_names() {
  std::vector<std::string> names;
  for (const auto& [n, spec] : named()) names.push_back(n);
  return names;
}

ModelSpec named_model_spec(const std::string& name) {
  const auto it = named().find(name);
  if (it == named().end()) {
    std::string all;
    for (const auto& n : model_spec_names()) all += (all.empty() ? "" : ", ") + n;
    throw ConfigError("model name \"" + name + "\" is unknown; allowed: " + all +
                      ", a Hugging Face config.json, or explicit dimensions");
  }
  return it->second;
}

ModelSpec model_spec_from_hf(const nlohmann::json& config) {
  if (!config.is_object()) bad("config.json", config, "a JSON object");
  // Each field under the spellings transformers' configs use for it.
  const auto find = [&](std::initializer_list<const char*> keys, bool required) -> int64_t {
    for (const char* k : keys)
      if (config.contains(k) && !config.at(k).is_null()) return positive(config, k);
    if (required) {
      std::string names;
      for (const char* k : keys) names += (names.empty() ? "" : " or ") + std::string(k);
      throw ConfigError("config.json has no " + names + " (needed to plan)");
    }
    return 0;
  };
  ModelSpec m;
  m.name = config.value("model_type", std::string("hf"));
  m.layers = find({"num_hidden_layers", "n_layer", "num_layers"}, true);
  m.hidden = find({"hidden_size", "n_embd", "d_model"}, true);
  m.heads = find({"num_attention_heads", "n_head"}, true);
  m.kv_heads = find({"num_key_value_heads", "num_kv_heads"}, false);
  if (m.kv_heads == 0) m.kv_heads = config.value("multi_query", false) ? 1 : m.heads;
  m.vocab = find({"vocab_size"}, true);
  const std::string act = config.value("hidden_act", config.value("activation_function", ""));
  m.gated_mlp = act == "silu" || act == "swiglu" || config.contains("num_key_value_heads");
  m.ffn = find({"intermediate_size", "n_inner", "ffn_dim", "ffn_hidden_size"}, false);
  if (m.ffn == 0) m.ffn = 4 * m.hidden;
  m.tied_head = config.value("tie_word_embeddings", !m.gated_mlp);
  check_heads(m);
  return m;
}

ModelSpec model_spec_from_json(const nlohmann::json& json) {
  if (!json.is_object()) bad("model", json, "an object such as {\"name\": \"gpt3-175b\"}");
  ModelSpec m;
  if (json.contains("name")) {
    if (!json.at("name").is_string()) bad("name", json.at("name"), "a model name string");
    m = named_model_spec(json.at("name").get<std::string>());
  }
  const std::map<std::string, int64_t*> ints = {
      {"layers", &m.layers}, {"hidden", &m.hidden}, {"heads", &m.heads},
      {"kv_heads", &m.kv_heads}, {"ffn", &m.ffn}, {"vocab", &m.vocab}};
  const bool heads_given = json.contains("heads"), kv_given = json.contains("kv_heads");
  const bool ffn_given = json.contains("ffn");
  for (const auto& [key, value] : json.items()) {
    if (key == "name") continue;
    if (ints.count(key)) {
      *ints.at(key) = positive(json, key);
    } else if (key == "gated_mlp" || key == "tied_head") {
      if (!value.is_boolean()) bad(key, value, "true or false");
      (key == "gated_mlp" ? m.gated_mlp : m.tied_head) = value.get<bool>();
    } else {
      bad(key, value, "keys name, layers, hidden, heads, kv_heads, ffn, vocab, gated_mlp, tied_head");
    }
  }
  if (heads_given && !kv_given) m.kv_heads = m.heads;
  if (!ffn_given && !json.contains("name")) m.ffn = 4 * m.hidden;
  if (!json.contains("name")) m.name = "custom";
  check_heads(m);
  return m;
}

}  // namespace smp::plan
