// Model configurations: the GPT-2 and LLaMA-style families with their named sizes.
#pragma once

#include <cstdint>
#include <string>

#include <nlohmann/json_fwd.hpp>

namespace smp::models {

enum class Family { kGpt2, kLlama };

struct ModelConfig {
  Family family = Family::kGpt2;
  int64_t vocab_size = 50257;
  int64_t max_seq_len = 1024;  // GPT-2's n_positions; LLaMA's RoPE works at any length up to it
  int64_t num_layers = 12;
  int64_t num_heads = 12;
  int64_t hidden = 768;
  int64_t ffn_hidden = 3072;       // 4 h for GPT-2; SwiGLU's inner size for LLaMA
  double dropout = 0.0;
  double init_std = 0.02;          // N(0, init_std) weights, zero biases (GPT-2 / LLaMA)
  double norm_eps = 1e-5;
  double rope_theta = 10000.0;     // LLaMA
  bool tie_embeddings = true;      // GPT-2 ties the head to the token embedding; LLaMA does not
  std::string name = "gpt2-124m";

  int64_t head_dim() const { return hidden / num_heads; }
  // Parameters of the whole model (the tied head counted once).
  int64_t num_parameters() const;
  // Training FLOPs per token: 6 N + 12 L h s (the MFU convention, anchors.md).
  double flops_per_token(int64_t seq_len) const;
};

// "tiny" (tests), "gpt2-124m", "gpt2-350m", "llama-125m", "llama-1b"; "gpt2-*" and "tiny" are
// GPT-2, "llama-*" LLaMA-style. Throws smp::ConfigError listing the names.
ModelConfig named_model(const std::string& name);

// {"name": "gpt2-124m", "num_layers": 6, ...}: a named size with any field overridden.
// Unknown keys and bad values throw smp::ConfigError naming the key, the value and what is
// allowed; hidden must divide by num_heads.
ModelConfig model_config_from_json(const nlohmann::json& json);

}  // namespace smp::models
