// Named model sizes and their JSON form (see model_config.h).
#include "smp/models/model_config.h"

#include <map>

#include <nlohmann/json.hpp>

#include "smp/core/error.h"

namespace smp::models {
namespace {

ModelConfig gpt2(const std::string& name, int64_t layers, int64_t heads, int64_t hidden) {
  ModelConfig c;
  c.name = name;
  c.family = Family::kGpt2;
  c.num_layers = layers, c.num_heads = heads, c.hidden = hidden, c.ffn_hidden = 4 * hidden;
  return c;
}

ModelConfig llama(const std::string& name, int64_t layers, int64_t heads, int64_t hidden,
                  int64_t ffn) {
  ModelConfig c;
  c.name = name;
  c.family = Family::kLlama;
  c.num_layers = layers, c.num_heads = heads, c.hidden = hidden, c.ffn_hidden = ffn;
  c.vocab_size = 32000;
  c.max_seq_len = 2048;
  c.tie_embeddings = false;
  c.norm_eps = 1e-6;
  return c;
}

const std::map<std::string, ModelConfig>& named_models() {
  static const std::map<std::string, ModelConfig> models = [] {
    std::map<std::string, ModelConfig> m;
    ModelConfig tiny = gpt2("tiny", 2, 2, 32);
    tiny.vocab_size = 257;
    tiny.max_seq_len = 64;
    m["tiny"] = tiny;
    m["gpt2-124m"] = gpt2("gpt2-124m", 12, 12, 768);
    m["gpt2-350m"] = gpt2("gpt2-350m", 24, 16, 1024);
    m["llama-125m"] = llama("llama-125m", 12, 12, 768, 2048);
    m["llama-1b"] = llama("llama-1b", 16, 32, 2048, 8192);
    return m;
  }();
  return models;
}

[[noreturn]] void bad(const std::string& key, const nlohmann::json& value, const std::string& allowed) {
  throw ConfigError("model key \"" + key + "\": got " + value.dump() + "; allowed: " + allowed);
}

}  // namespace

int64_t ModelConfig::num_parameters() const {
  const int64_t h = hidden, f = ffn_hidden;
  int64_t per_layer = 0;
  int64_t n = vocab_size * h;  // token embedding
  if (family == Family::kGpt2) {
    per_layer = 4 * h                     // two LayerNorms
                + 3 * h * h + 3 * h       // qkv
                + h * h + h               // proj
                + h * f + f + f * h + h;  // mlp
    n += max_seq_len * h + 2 * h;         // positions, final LayerNorm
  } else {
    per_layer = 2 * h + 4 * h * h + 3 * h * f;  // two RMSNorms, q k v o, gate up down
    n += h;                                     // final RMSNorm
  }
  n += num_layers * per_layer;
  if (!tie_embeddings) n += vocab_size * h;  // the head
  return n;
}

double ModelConfig::flops_per_token(int64_t seq_len) const {
  return 6.0 * static_cast<double>(num_parameters()) +
         12.0 * static_cast<double>(num_layers * hidden * seq_len);
}

ModelConfig named_model(const std::string& name) {
  const auto& models = named_models();
  const auto it = models.find(name);
  if (it == models.end()) {
    std::string names;
    for (const auto& [n, c] : models) names += (names.empty() ? "\"" : ", \"") + n + "\"";
    throw ConfigError("model name \"" + name + "\" is unknown; allowed: " + names);
  }
  return it->second;
}

ModelConfig model_config_from_json(const nlohmann::json& json) {
  if (!json.is_object()) bad("model", json, "an object such as {\"name\": \"gpt2-124m\"}");
  if (json.contains("name") && !json.at("name").is_string()) bad("name", json.at("name"), "a model name string");
  ModelConfig c = named_model(json.value("name", std::string("gpt2-124m")));
  const std::map<std::string, int64_t*> ints = {
      {"vocab_size", &c.vocab_size}, {"max_seq_len", &c.max_seq_len},
      {"num_layers", &c.num_layers}, {"num_heads", &c.num_heads},
      {"hidden", &c.hidden},         {"ffn_hidden", &c.ffn_hidden}};
  const std::map<std::string, double*> reals = {{"dropout", &c.dropout},
                                                {"init_std", &c.init_std},
                                                {"norm_eps", &c.norm_eps},
                                                {"rope_theta", &c.rope_theta}};
  for (const auto& [key, value] : json.items()) {
    if (key == "name") {
      if (!value.is_string()) bad(key, value, "a model name string");
    } else if (ints.count(key)) {
      if (!value.is_number_integer() || value.get<int64_t>() < 1) bad(key, value, "an integer >= 1");
      *ints.at(key) = value.get<int64_t>();
    } else if (reals.count(key)) {
      if (!value.is_number() || value.get<double>() < 0) bad(key, value, "a number >= 0");
      *reals.at(key) = value.get<double>();
    } else if (key == "tie_embeddings") {
      if (!value.is_boolean()) bad(key, value, "true or false");
      c.tie_embeddings = value.get<bool>();
    } else {
      bad(key, value,
          "keys name, vocab_size, max_seq_len, num_layers, num_heads, hidden, ffn_hidden, "
          "dropout, init_std, norm_eps, rope_theta, tie_embeddings");
    }
  }
  if (c.dropout >= 1) bad("dropout", c.dropout, "0 <= dropout < 1");
  if (c.hidden % c.num_heads != 0) {
    throw ConfigError("model: hidden (" + std::to_string(c.hidden) + ") must divide by num_heads (" +
                      std::to_string(c.num_heads) + ")");
  }
  return c;
}

}  // namespace smp::models
