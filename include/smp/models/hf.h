// Hugging Face compatibility for smp's GPT-2 and LLaMA-style models: checkpoints in the layout
// transformers' GPT2LMHeadModel and LlamaForCausalLM read and write (model.safetensors with
// their parameter names, and config.json).
//
// Three levels:
//   to_hf / from_hf                 whole smp-named tensors <-> Hugging Face names and layouts
//   whole_parameters / load_whole_  a built, tensor-parallel Model <-> whole smp-named tensors
//   save_hf / load_hf               a Model <-> a Hugging Face model directory
//
// smp names are "<layer>.<parameter>" as the model's pipeline layers list them
// ("block.0.qkv.weight"). Whole tensors are unsharded and unpadded (the embedding and the head
// have exactly vocab_size rows); their layouts are smp's: qkv.weight (3, H, H) and qkv.bias
// (3, H) stack Q, K, V; LLaMA's up.weight (2, F, H) stacks gate and up; linear weights are
// (out, in). GPT-2's Conv1D weights are (in, out) in Hugging Face's files.
#pragma once

#include <map>
#include <string>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>
#include <nlohmann/json_fwd.hpp>

#include "smp/models/gpt.h"
#include "smp/models/model_config.h"

namespace smp::models {

// Whole smp-named tensors -> Hugging Face (name, tensor) pairs in Hugging Face's order. A tied
// head is not written (Hugging Face ties it on load), nor "head.weight", a tied head's
// separate copy. Tensors may be views of `whole`'s. Throws smp::ConfigError naming the smp
// tensor when one is missing, has the wrong shape or is not part of the model.
std::vector<std::pair<std::string, at::Tensor>> to_hf(const ModelConfig& config,
                                                      const std::map<std::string, at::Tensor>& whole);

// The inverse: Hugging Face tensors -> whole smp-named tensors. A missing tensor, a wrong shape
// or an unexpected tensor throws smp::ConfigError naming the Hugging Face tensor, the shape
// found and the shape expected. Hugging Face's non-parameter buffers (attn.bias,
// attn.masked_bias, rotary_emb.inv_freq) are ignored, and so is a tied head's lm_head.weight
// when it equals the embedding.
std::map<std::string, at::Tensor> from_hf(const ModelConfig& config,
                                          const std::map<std::string, at::Tensor>& hf);

// config.json for transformers: GPT2LMHeadModel (gelu_new, n_inner, layer_norm_epsilon,
// dropouts 0) or LlamaForCausalLM (num_key_value_heads = num_attention_heads, no biases).
nlohmann::json hf_config(const ModelConfig& config);

// The inverse. Keys smp does not model are ignored; settings smp cannot run (grouped-query
// attention, rope_scaling, biases in LLaMA, another activation, ...) throw smp::ConfigError
// naming the key, the value and what is allowed. dropout is left at 0 (a training choice),
// name is "hf-gpt2" or "hf-llama".
ModelConfig model_config_from_hf(const nlohmann::json& json);

// The model's whole parameters by smp name, on the model's device. `model` is single-stage:
// every layer on this rank, sharded over model.tp (as build_model returns it). Collective over
// the TP group: shards are all-gathered along ShardSpec::dim and their padding rows dropped. A
// tensor listed twice (a head sharing the embedding tensor) appears once, under its first name.
std::map<std::string, at::Tensor> whole_parameters(const Model& model);

// Copies whole parameters into the model: each rank its own slice, padding rows zeroed. A tied
// head's separate copy ("head.weight") takes the embedding's tensor when `whole` lacks it.
// Throws smp::ConfigError naming the tensor when one is missing, has the wrong shape, or names
// no parameter of the model. Not collective.
void load_whole_parameters(Model& model, const std::map<std::string, at::Tensor>& whole);

// Writes <dir>/model.safetensors and <dir>/config.json (creating dir), from TP rank 0.
// Collective over the TP group: returns, on every rank, once both files are complete, and
// throws on every rank when TP rank 0 could not write them.
void save_hf(const std::string& dir, const Model& model);

// A Hugging Face model directory's weights, read one parameter at a time as the model's layers
// are built: a rank holds no more of the file than the tensor in hand (so a model built under
// delayed initialisation never exists whole on any rank). The constructor reads config.json and
// the weights file's header and checks both before any tensor is read: it throws
// smp::ConfigError naming every field where config.json differs from `config`, and, as from_hf
// does, each Hugging Face tensor that is missing, has the wrong shape or is unexpected.
class HfWeights {
 public:
  HfWeights(const std::string& dir, const ModelConfig& config);

  // Copies the layer's parameters from the file: each TP rank its own slice, padding rows
  // zeroed. A parameter an earlier layer listed (a tied head) is left as loaded; a tied head's
  // separate copy ("head.weight") takes the embedding's tensor. Not collective.
  void load(Layer& layer, int tp_rank);

 private:
  ModelConfig config_;
  std::string weights_path_;
  std::map<std::string, size_t> rule_of_;  // smp name -> index into rules (see hf.cpp)
  std::vector<const void*> loaded_;        // parameters already loaded (tied heads)
};

// Reads <dir>/config.json and <dir>/model.safetensors into the model, layer by layer
// (HfWeights). Every rank reads the files itself (not collective). Throws as HfWeights does,
// before any parameter is written.
void load_hf(const std::string& dir, Model& model);

}  // namespace smp::models
