// The planner's view of a model: a decoder-only transformer described by its dimensions only.
//
// Pure (no torch). Wider than what smp-train builds (smp::models::ModelConfig): grouped-query
// attention and any size are allowed, since the planner only counts parameters, FLOPs and
// bytes. Three ways in: a named size (smp's own, GPT-3's and the sizes of the published runs
// the planner is checked against), a Hugging Face config.json, or explicit dimensions.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace smp::plan {

struct ModelSpec {
  std::string name = "custom";
  int64_t layers = 12;
  int64_t hidden = 768;
  int64_t heads = 12;
  int64_t kv_heads = 12;  // < heads: grouped-query attention
  int64_t ffn = 3072;     // the MLP's inner size (SwiGLU: each of gate and up)
  int64_t vocab = 50257;
  bool gated_mlp = false;  // SwiGLU (LLaMA): three matrices in the MLP, not two
  bool tied_head = true;   // the head shares the token embedding's weights

  int64_t head_dim() const { return hidden / heads; }
  int64_t kv_dim() const { return kv_heads * head_dim(); }
  // Weights of one transformer block (norms and biases included, as GPT-2 / LLaMA have them).
  int64_t block_parameters() const;
  // The token embedding (and positions, for an ungated GPT), the final norm, the head when
  // untied: everything outside the blocks.
  int64_t outer_parameters(int64_t seq) const;
  int64_t parameters(int64_t seq) const { return layers * block_parameters() + outer_parameters(seq); }
  // Model FLOPs of one sequence of `seq` tokens, forward and backward, no recomputation: the
  // GEMMs (2 per multiply-add, backward twice the forward) including attention's two and the
  // head. For a GPT this is Korthikanti et al.'s 72 s l h^2 (1 + s/6h + V/12lh) per sequence.
  double model_flops_per_sequence(int64_t seq) const;
};

// The named sizes: smp's ("tiny", "gpt2-124m", "gpt2-350m", "llama-125m", "llama-1b"),
// "gpt2-1.5b", "gpt3-175b", "llama2-7b", "llama2-13b", "llama2-70b", "llama3-8b",
// "llama3-70b", "llama3-405b", and the GPT models of Megatron-LM's published runs
// ("megatron-1.7b" ... "megatron-1t", "megatron-22b"; vocabulary 51200). Throws
// smp::ConfigError listing the names.
ModelSpec named_model_spec(const std::string& name);
std::vector<std::string> model_spec_names();

// A Hugging Face config.json: GPT-2 (n_layer, n_embd, n_head, n_inner), LLaMA / Mistral /
// Qwen2 style (num_hidden_layers, hidden_size, num_attention_heads, num_key_value_heads,
// intermediate_size, tie_word_embeddings), GPT-NeoX, OPT and Falcon-like key spellings.
// Throws smp::ConfigError naming the missing or bad key.
ModelSpec model_spec_from_hf(const nlohmann::json& config);

// {"layers": 96, "hidden": 12288, "heads": 96, "ffn": 49152, "vocab": 51200, ...}: explicit
// dimensions (a "name" key starts from that named size). Unknown keys and values < 1 throw
// smp::ConfigError naming the key, the value and what is allowed.
ModelSpec model_spec_from_json(const nlohmann::json& json);

}  // namespace smp::plan
