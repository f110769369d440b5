// Hugging Face checkpoints for smp's GPT-2 and LLaMA-style models (see hf.h).
//
// One table of rules (rules()) says how each whole smp tensor becomes Hugging Face tensors;
// to_hf and from_hf both walk it, so the two directions cannot disagree.
#include "smp/models/hf.h"

#include <algorithm>
#include <cmath>
#include <set>
#include <tuple>

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <nlohmann/json.hpp>

#include "smp/checkpoint/safetensors.h"
#include "smp/core/error.h"
#include "smp/core/files.h"
#include "smp/comm/agree.h"
#include "smp/tensor_parallel/primitives.h"

namespace smp::models {
namespace {

using Shape = std::vector<int64_t>;

std::string shape_str(at::IntArrayRef shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// How one whole smp tensor maps to Hugging Face tensors.
enum class Kind {
  kSame,    // one tensor, same layout
  kConv1D,  // GPT-2's Conv1D: smp (out, in) or stacked (k, out, in) <-> (in, k * out)
  kFlat,    // a stacked bias: smp (k, out) <-> (k * out)
  kSplit,   // a stacked weight: smp (k, out, in) <-> k tensors (out, in)
};

struct Rule {
  std::string smp;
  Shape shape;  // the whole smp tensor's
  Kind kind;
  std::vector<std::string> hf;  // one name; k names for kSplit

  Shape hf_shape() const {
    int64_t numel = 1;
    for (int64_t s : shape) numel *= s;
    switch (kind) {
      case Kind::kSame: return shape;
      case Kind::kConv1D: return {shape.back(), numel / shape.back()};
      case Kind::kFlat: return {numel};
      case Kind::kSplit: return Shape(shape.begin() + 1, shape.end());
    }
    return shape;
  }
};

// Every parameter of the model, in Hugging Face's order.
std::vector<Rule> rules(const ModelConfig& c) {
  const int64_t h = c.hidden, f = c.ffn_hidden, v = c.vocab_size;
  std::vector<Rule> r;
  if (c.family == Family::kGpt2) {
    r.push_back({"embed.wte.weight", {v, h}, Kind::kSame, {"transformer.wte.weight"}});
    r.push_back({"embed.wpe", {c.max_seq_len, h}, Kind::kSame, {"transformer.wpe.weight"}});
    for (int64_t i = 0; i < c.num_layers; ++i) {
      const std::string s = "block." + std::to_string(i) + ".";
      const std::string o = "transformer.h." + std::to_string(i) + ".";
      r.push_back({s + "ln_1.weight", {h}, Kind::kSame, {o + "ln_1.weight"}});
      r.push_back({s + "ln_1.bias", {h}, Kind::kSame, {o + "ln_1.bias"}});
      r.push_back({s + "qkv.weight", {3, h, h}, Kind::kConv1D, {o + "attn.c_attn.weight"}});
      r.push_back({s + "qkv.bias", {3, h}, Kind::kFlat, {o + "attn.c_attn.bias"}});
      r.push_back({s + "proj.weight", {h, h}, Kind::kConv1D, {o + "attn.c_proj.weight"}});
      r.push_back({s + "proj.bias", {h}, Kind::kSame, {o + "attn.c_proj.bias"}});
      r.push_back({s + "ln_2.weight", {h}, Kind::kSame, {o + "ln_2.weight"}});
      r.push_back({s + "ln_2.bias", {h}, Kind::kSame, {o + "ln_2.bias"}});
      r.push_back({s + "up.weight", {f, h}, Kind::kConv1D, {o + "mlp.c_fc.weight"}});
      r.push_back({s + "up.bias", {f}, Kind::kSame, {o + "mlp.c_fc.bias"}});
      r.push_back({s + "down.weight", {h, f}, Kind::kConv1D, {o + "mlp.c_proj.weight"}});
      r.push_back({s + "down.bias", {h}, Kind::kSame, {o + "mlp.c_proj.bias"}});
    }
    r.push_back({"head.ln_f.weight", {h}, Kind::kSame, {"transformer.ln_f.weight"}});
    r.push_back({"head.ln_f.bias", {h}, Kind::kSame, {"transformer.ln_f.bias"}});
  } else {
    r.push_back({"embed.wte.weight", {v, h}, Kind::kSame, {"model.embed_tokens.weight"}});
    for (int64_t i = 0; i < c.num_layers; ++i) {
      const std::string s = "block." + std::to_string(i) + ".";
      const std::string o = "model.layers." + std::to_string(i) + ".";
      r.push_back({s + "ln_1.weight", {h}, Kind::kSame, {o + "input_layernorm.weight"}});
      r.push_back({s + "qkv.weight", {3, h, h}, Kind::kSplit,
                   {o + "self_attn.q_proj.weight", o + "self_attn.k_proj.weight",
                    o + "self_attn.v_proj.weight"}});
      r.push_back({s + "proj.weight", {h, h}, Kind::kSame, {o + "self_attn.o_proj.weight"}});
      r.push_back({s + "ln_2.weight", {h}, Kind::kSame, {o + "post_attention_layernorm.weight"}});
      r.push_back({s + "up.weight", {2, f, h}, Kind::kSplit,
                   {o + "mlp.gate_proj.weight", o + "mlp.up_proj.weight"}});
      r.push_back({s + "down.weight", {h, f}, Kind::kSame, {o + "mlp.down_proj.weight"}});
    }
    r.push_back({"head.ln_f.weight", {h}, Kind::kSame, {"model.norm.weight"}});
  }
  // A tied head is the embedding itself (Hugging Face leaves lm_head.weight out of the file).
  if (!c.tie_embeddings) r.push_back({"head.lm_head.weight", {v, h}, Kind::kSame, {"lm_head.weight"}});
  return r;
}

std::string describe(const ModelConfig& c) {
  return std::string(c.family == Family::kGpt2 ? "GPT-2" : "LLaMA") + " model with " +
         std::to_string(c.num_layers) + " layers";
}

// Rule r's whole smp tensor from its Hugging Face tensors: `hf(name, shape)` gives each.
template <typename Get>
at::Tensor to_smp(const Rule& r, Get hf) {
  const Shape shape = r.hf_shape();
  switch (r.kind) {
    case Kind::kSame: return hf(r.hf[0], shape);
    case Kind::kConv1D: return hf(r.hf[0], shape).t().reshape(r.shape);
    case Kind::kFlat: return hf(r.hf[0], shape).reshape(r.shape);
    case Kind::kSplit: {
      std::vector<at::Tensor> parts;
      for (const std::string& name : r.hf) parts.push_back(hf(name, shape));
      return at::stack(parts);
    }
  }
  return {};
}

// Buffers transformers computes, which older versions saved: not parameters.
bool computed_buffer(const std::string& name) {
  return ends_with(name, ".attn.bias") || ends_with(name, ".attn.masked_bias") ||
         ends_with(name, "rotary_emb.inv_freq");
}

// Tensors taken from a map by name, each checked against its expected shape; what is never
// taken is unexpected. `what` names the kind of tensor in messages ("Hugging Face tensor").
class Taker {
 public:
  Taker(const std::map<std::string, at::Tensor>& tensors, std::string what)
      : tensors_(tensors), what_(std::move(what)) {}

  at::Tensor take(const std::string& name, const Shape& shape) {
    const auto it = tensors_.find(name);
    if (it == tensors_.end()) {
      throw ConfigError(what_ + " \"" + name + "\" is missing (expected shape " + shape_str(shape) + ")");
    }
    if (it->second.sizes() != at::IntArrayRef(shape)) {
      throw ConfigError(what_ + " \"" + name + "\": shape " + shape_str(it->second.sizes()) +
                        " found; expected " + shape_str(shape));
    }
    taken_.insert(name);
    return it->second;
  }

  // Throws naming every tensor neither taken nor `ignored`.
  template <typename Ignored>
  void finish(const ModelConfig& c, Ignored ignored) const {
    std::string extra;
    for (const auto& [name, t] : tensors_) {
      if (taken_.count(name) || ignored(name, t)) continue;
      extra += (extra.empty() ? "\"" : ", \"") + name + "\" " + shape_str(t.sizes());
    }
    if (!extra.empty()) {
      throw ConfigError(what_ + "s unexpected for a " + describe(c) + ": " + extra);
    }
  }

 private:
  const std::map<std::string, at::Tensor>& tensors_;
  std::string what_;
  std::set<std::string> taken_;
};

// ---- config.json -----------------------------------------------------------------------------

[[noreturn]] void bad_key(const std::string& key, const nlohmann::json& value,
                          const std::string& allowed) {
  throw ConfigError("Hugging Face config key \"" + key + "\": got " + value.dump() +
                    "; allowed: " + allowed);
}

// A positive integer; `fallback` (when >= 1) stands in for an absent or null key.
int64_t get_int(const nlohmann::json& j, const std::string& key, int64_t fallback = 0) {
  if (!j.contains(key) || j.at(key).is_null()) {
    if (fallback >= 1) return fallback;
    throw ConfigError("Hugging Face config key \"" + key + "\" is missing; allowed: an integer >= 1");
  }
  const nlohmann::json& v = j.at(key);
  if (!v.is_number_integer() || v.get<int64_t>() < 1) bad_key(key, v, "an integer >= 1");
  return v.get<int64_t>();
}

double get_real(const nlohmann::json& j, const std::string& key, double fallback) {
  if (!j.contains(key) || j.at(key).is_null()) return fallback;
  const nlohmann::json& v = j.at(key);
  if (!v.is_number() || v.get<double>() <= 0) bad_key(key, v, "a number > 0");
  return v.get<double>();
}

bool get_bool(const nlohmann::json& j, const std::string& key, bool fallback) {
  if (!j.contains(key) || j.at(key).is_null()) return fallback;
  if (!j.at(key).is_boolean()) bad_key(key, j.at(key), "true or false");
  return j.at(key).get<bool>();
}

// A key smp cannot honour unless it has one of `allowed` values (absent or null means the
// default, which must be among them).
void require(const nlohmann::json& j, const std::string& key, const std::vector<nlohmann::json>& allowed,
             const std::string& why) {
  if (!j.contains(key)) return;
  for (const auto& a : allowed) {
    if (j.at(key) == a) return;
  }
  std::string list;
  for (const auto& a : allowed) list += (list.empty() ? "" : " or ") + a.dump();
  bad_key(key, j.at(key), list + " (" + why + ")");
}

bool near(double a, double b) { return std::abs(a - b) <= 1e-12 * std::max(std::abs(a), std::abs(b)); }

// Every field where the file's config and the model's differ, "" when none.
std::string config_differences(const ModelConfig& file, const ModelConfig& model) {
  std::string out;
  auto add = [&](const std::string& field, const std::string& in_file, const std::string& in_model) {
    out += (out.empty() ? "" : "; ") + field + " " + in_file + " in the file, " + in_model +
           " in the model";
  };
  auto family = [](Family f) { return std::string(f == Family::kGpt2 ? "gpt2" : "llama"); };
  if (file.family != model.family) {
    add("family (model_type)", family(file.family), family(model.family));
    return out;  // the other fields mean different things
  }
  const bool gpt2 = model.family == Family::kGpt2;
  const std::vector<std::tuple<std::string, int64_t, int64_t>> ints = {
      {"vocab_size", file.vocab_size, model.vocab_size},
      {gpt2 ? "max_seq_len (n_positions)" : "max_seq_len (max_position_embeddings)",
       file.max_seq_len, model.max_seq_len},
      {gpt2 ? "num_layers (n_layer)" : "num_layers (num_hidden_layers)", file.num_layers,
       model.num_layers},
      {gpt2 ? "num_heads (n_head)" : "num_heads (num_attention_heads)", file.num_heads,
       model.num_heads},
      {gpt2 ? "hidden (n_embd)" : "hidden (hidden_size)", file.hidden, model.hidden},
      {gpt2 ? "ffn_hidden (n_inner)" : "ffn_hidden (intermediate_size)", file.ffn_hidden,
       model.ffn_hidden}};
  for (const auto& [field, a, b] : ints) {
    if (a != b) add(field, std::to_string(a), std::to_string(b));
  }
  auto real = [](double x) { return nlohmann::json(x).dump(); };
  if (!near(file.norm_eps, model.norm_eps)) {
    add(gpt2 ? "norm_eps (layer_norm_epsilon)" : "norm_eps (rms_norm_eps)", real(file.norm_eps),
        real(model.norm_eps));
  }
  if (!gpt2 && !near(file.rope_theta, model.rope_theta)) {
    add("rope_theta", real(file.rope_theta), real(model.rope_theta));
  }
  if (file.tie_embeddings != model.tie_embeddings) {
    add("tie_embeddings (tie_word_embeddings)", file.tie_embeddings ? "true" : "false",
        model.tie_embeddings ? "true" : "false");
  }
  return out;
}

// The identity of a parameter tensor (two layers listing one tensor share it).
const void* identity(const at::Tensor& t) { return t.unsafeGetTensorImpl(); }

ShardSpec shard_of(const Layer& layer, size_t j) {
  return layer.tp_shards.empty() ? ShardSpec{} : layer.tp_shards[j];
}

// The whole tensor's shape of a parameter: the sharded dimension at its whole size.
Shape whole_shape(const at::Tensor& param, const ShardSpec& shard) {
  Shape shape = param.sizes().vec();
  if (shard.sharded()) shape[shard.dim] = shard.size;
  return shape;
}

// Copies whole tensor `source` into `param`: TP rank `tp_rank`'s rows [r n, (r + 1) n) of a
// sharded one, those past the whole tensor's size (padding) zeroed.
void copy_slice(const at::Tensor& param, const ShardSpec& shard, const at::Tensor& source, int tp_rank) {
  at::NoGradGuard no_grad;
  if (!shard.sharded()) {
    param.copy_(source);
    return;
  }
  const int64_t dim = shard.dim, n = param.size(dim), start = tp_rank * n;
  const int64_t rows = std::clamp<int64_t>(shard.size - start, 0, n);
  if (rows > 0) param.narrow(dim, 0, rows).copy_(source.narrow(dim, start, rows));
  if (rows < n) param.narrow(dim, rows, n - rows).zero_();
}

// The separate copy of a tied head (pipeline stages apart) is named so; it takes the embedding.
constexpr const char* kTiedHeadCopy = "head.weight";

}  // namespace

// ---- tensors ---------------------------------------------------------------------------------

std::vector<std::pair<std::string, at::Tensor>> to_hf(const ModelConfig& config,
                                                      const std::map<std::string, at::Tensor>& whole) {
  Taker in(whole, "smp tensor");
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (const Rule& r : rules(config)) {
    const at::Tensor t = in.take(r.smp, r.shape);
    switch (r.kind) {
      case Kind::kSame: out.emplace_back(r.hf[0], t); break;
      case Kind::kConv1D: out.emplace_back(r.hf[0], t.reshape({-1, r.shape.back()}).t()); break;
      case Kind::kFlat: out.emplace_back(r.hf[0], t.reshape({-1})); break;
      case Kind::kSplit:
        for (size_t k = 0; k < r.hf.size(); ++k) out.emplace_back(r.hf[k], t.select(0, k));
        break;
    }
  }
  // A tied head's separate copy (pipeline stages apart) is the embedding again.
  in.finish(config, [](const std::string& name, const at::Tensor&) { return name == "head.weight"; });
  return out;
}

std::map<std::string, at::Tensor> from_hf(const ModelConfig& config,
                                          const std::map<std::string, at::Tensor>& hf) {
  Taker in(hf, "Hugging Face tensor");
  std::map<std::string, at::Tensor> out;
  for (const Rule& r : rules(config)) {
    out[r.smp] = to_smp(r, [&](const std::string& name, const Shape& shape) { return in.take(name, shape); });
  }
  const at::Tensor& embedding = out.at("embed.wte.weight");
  in.finish(config, [&](const std::string& name, const at::Tensor& t) {
    // A tied head equal to the embedding: some writers keep it.
    return computed_buffer(name) || (config.tie_embeddings && name == "lm_head.weight" &&
                                     t.sizes() == embedding.sizes() &&
                                     at::equal(t, embedding.to(t.scalar_type())));
  });
  return out;
}

// ---- config ----------------------------------------------------------------------------------

nlohmann::json hf_config(const ModelConfig& c) {
  nlohmann::json j;
  if (c.family == Family::kGpt2) {
    j = {{"architectures", nlohmann::json::array({"GPT2LMHeadModel"})},
         {"model_type", "gpt2"},
         {"vocab_size", c.vocab_size},
         {"n_positions", c.max_seq_len},
         {"n_embd", c.hidden},
         {"n_layer", c.num_layers},
         {"n_head", c.num_heads},
         {"n_inner", c.ffn_hidden},
         {"activation_function", "gelu_new"},
         {"layer_norm_epsilon", c.norm_eps},
         {"initializer_range", c.init_std},
         {"resid_pdrop", 0.0},
         {"embd_pdrop", 0.0},
         {"attn_pdrop", 0.0},
         {"scale_attn_weights", true},
         {"scale_attn_by_inverse_layer_idx", false},
         {"reorder_and_upcast_attn", false},
         {"tie_word_embeddings", c.tie_embeddings}};
  } else {
    j = {{"architectures", nlohmann::json::array({"LlamaForCausalLM"})},
         {"model_type", "llama"},
         {"vocab_size", c.vocab_size},
         {"max_position_embeddings", c.max_seq_len},
         {"hidden_size", c.hidden},
         {"intermediate_size", c.ffn_hidden},
         {"num_hidden_layers", c.num_layers},
         {"num_attention_heads", c.num_heads},
         {"num_key_value_heads", c.num_heads},
         {"head_dim", c.head_dim()},
         {"hidden_act", "silu"},
         {"rms_norm_eps", c.norm_eps},
         {"rope_theta", c.rope_theta},
         {"rope_scaling", nullptr},
         {"initializer_range", c.init_std},
         {"attention_bias", false},
         {"attention_dropout", 0.0},
         {"mlp_bias", false},
         {"pretraining_tp", 1},
         {"tie_word_embeddings", c.tie_embeddings}};
  }
  j["torch_dtype"] = "float32";
  j["use_cache"] = true;
  return j;
}

ModelConfig model_config_from_hf(const nlohmann::json& j) {
  if (!j.is_object()) bad_key("(config)", j, "an object (a config.json)");
  if (!j.contains("model_type")) {
    throw ConfigError("Hugging Face config key \"model_type\" is missing; allowed: \"gpt2\", \"llama\"");
  }
  const nlohmann::json& type = j.at("model_type");
  ModelConfig c;
  if (type == "gpt2") {
    c.family = Family::kGpt2;
    c.name = "hf-gpt2";
    c.vocab_size = get_int(j, "vocab_size");
    c.max_seq_len = get_int(j, "n_positions");
    c.hidden = get_int(j, "n_embd");
    c.num_layers = get_int(j, "n_layer");
    c.num_heads = get_int(j, "n_head");
    c.ffn_hidden = get_int(j, "n_inner", 4 * c.hidden);
    c.norm_eps = get_real(j, "layer_norm_epsilon", 1e-5);
    c.init_std = get_real(j, "initializer_range", 0.02);
    c.tie_embeddings = get_bool(j, "tie_word_embeddings", true);
    require(j, "activation_function", {"gelu_new", "gelu_pytorch_tanh"}, "smp's GPT-2 uses tanh GELU");
    require(j, "scale_attn_weights", {true}, "smp scales attention by 1/sqrt(head_dim)");
    require(j, "scale_attn_by_inverse_layer_idx", {false}, "smp does not scale by layer");
  } else if (type == "llama") {
    c.family = Family::kLlama;
    c.name = "hf-llama";
    c.vocab_size = get_int(j, "vocab_size");
    c.max_seq_len = get_int(j, "max_position_embeddings", 2048);
    c.hidden = get_int(j, "hidden_size");
    c.ffn_hidden = get_int(j, "intermediate_size");
    c.num_layers = get_int(j, "num_hidden_layers");
    c.num_heads = get_int(j, "num_attention_heads");
    c.norm_eps = get_real(j, "rms_norm_eps", 1e-6);
    c.rope_theta = get_real(j, "rope_theta", 10000.0);
    c.init_std = get_real(j, "initializer_range", 0.02);
    c.tie_embeddings = get_bool(j, "tie_word_embeddings", false);
    if (j.contains("num_key_value_heads") && !j.at("num_key_value_heads").is_null() &&
        j.at("num_key_value_heads") != c.num_heads) {
      bad_key("num_key_value_heads", j.at("num_key_value_heads"),
              std::to_string(c.num_heads) + ", num_attention_heads (smp has no grouped-query attention)");
    }
    if (j.contains("head_dim") && !j.at("head_dim").is_null() &&
        j.at("head_dim") != c.hidden / c.num_heads) {
      bad_key("head_dim", j.at("head_dim"),
              std::to_string(c.hidden / c.num_heads) + ", hidden_size / num_attention_heads");
    }
    require(j, "hidden_act", {"silu"}, "smp's LLaMA uses SwiGLU");
    require(j, "rope_scaling", {nullptr}, "smp's RoPE has no scaling");
    require(j, "attention_bias", {false}, "smp's LLaMA has no biases");
    require(j, "mlp_bias", {false}, "smp's LLaMA has no biases");
  } else {
    bad_key("model_type", type, "\"gpt2\", \"llama\"");
  }
  if (c.hidden % c.num_heads != 0) {
    throw ConfigError("Hugging Face config: hidden size (" + std::to_string(c.hidden) +
                      ") must divide by the number of heads (" + std::to_string(c.num_heads) + ")");
  }
  return c;
}

// ---- a built model ---------------------------------------------------------------------------

std::map<std::string, at::Tensor> whole_parameters(const Model& model) {
  at::NoGradGuard no_grad;
  std::map<std::string, at::Tensor> out;
  std::set<const void*> seen;
  for (const auto& layer : model.layers) {
    for (size_t j = 0; j < layer.parameters.size(); ++j) {
      const at::Tensor& p = layer.parameters[j];
      if (!seen.insert(identity(p)).second) continue;
      const ShardSpec shard = shard_of(layer, j);
      at::Tensor whole = p.detach();
      if (shard.sharded()) {
        whole = tp::all_gather_along(whole, shard.dim, model.tp).narrow(shard.dim, 0, shard.size);
      }
      out[layer.name + "." + layer.parameter_names[j]] = whole.clone(at::MemoryFormat::Contiguous);
    }
  }
  return out;
}

void load_whole_parameters(Model& model, const std::map<std::string, at::Tensor>& whole) {
  const std::map<std::string, std::string>& copy_of = model.tied_copies;  // copy -> original
  struct Load {
    at::Tensor param;
    ShardSpec shard;
    at::Tensor source;
  };
  // Everything is checked before anything is copied: a bad input leaves the model as it was.
  std::vector<Load> loads;
  std::set<const void*> seen;
  std::set<std::string> used;
  for (const auto& layer : model.layers) {
    for (size_t j = 0; j < layer.parameters.size(); ++j) {
      const at::Tensor& p = layer.parameters[j];
      if (!seen.insert(identity(p)).second) continue;
      const std::string name = layer.name + "." + layer.parameter_names[j];
      const ShardSpec shard = shard_of(layer, j);
      const Shape shape = whole_shape(p, shard);
      std::string source = name;
      if (!whole.count(source) && copy_of.count(name)) source = copy_of.at(name);
      const auto it = whole.find(source);
      if (it == whole.end()) {
        throw ConfigError("load_whole_parameters: tensor \"" + name + "\" is missing (expected shape " +
                          shape_str(shape) + ")");
      }
      if (it->second.sizes() != at::IntArrayRef(shape)) {
        throw ConfigError("load_whole_parameters: tensor \"" + source + "\": shape " +
                          shape_str(it->second.sizes()) + " found; expected " + shape_str(shape));
      }
      used.insert(source);
      loads.push_back({p, shard, it->second});
    }
  }
  std::string extra;
  for (const auto& [name, t] : whole) {
    if (!used.count(name)) extra += (extra.empty() ? "\"" : ", \"") + name + "\"";
  }
  if (!extra.empty()) {
    throw ConfigError("load_whole_parameters: tensors that name no parameter of the " +
                      describe(model.config) + ": " + extra);
  }

  for (const Load& l : loads) copy_slice(l.param, l.shard, l.source, model.tp.rank());
}

// ---- directories -----------------------------------------------------------------------------

void save_hf(const std::string& dir, const Model& model) {
  const std::map<std::string, at::Tensor> whole = whole_parameters(model);  // collective
  const auto write = [&] {  // by TP rank 0
    if (model.tp.rank() != 0) return;
    files::make_dirs(dir);
    checkpoint::save_safetensors(dir + "/model.safetensors", to_hf(model.config, whole),
                                 {{"format", "pt"}});
    files::write_file_atomic(dir + "/config.json", hf_config(model.config).dump(2) + "\n",
                             /*durable=*/true);
  };
  if (model.tp.size() == 1) {
    write();
  } else {  // every rank of the group returns or throws together
    comm::on_every_rank("save_hf " + dir, write, model.tp.comm());
  }
}

HfWeights::HfWeights(const std::string& dir, const ModelConfig& config)
    : config_(config), weights_path_(dir + "/model.safetensors") {
  const std::string config_path = dir + "/config.json";
  nlohmann::json json;
  try {
    json = nlohmann::json::parse(files::read_file(config_path));
  } catch (const nlohmann::json::exception& e) {
    throw ConfigError(config_path + ": not valid JSON: " + e.what());
  }
  ModelConfig file_config;
  try {
    file_config = model_config_from_hf(json);
  } catch (const ConfigError& e) {
    throw ConfigError(config_path + ": " + e.what());
  }
  const std::string differences = config_differences(file_config, config);
  if (!differences.empty()) {
    throw ConfigError(config_path + " does not match the model: " + differences);
  }
  // Every tensor the rules name is in the file with its shape; nothing else is, but buffers
  // and a tied head equal to the embedding (read, to compare: the one time two are in hand).
  const checkpoint::SafetensorsHeader header = checkpoint::read_safetensors_header(weights_path_);
  const auto bad = [&](const std::string& message) { return ConfigError(weights_path_ + ": " + message); };
  const std::vector<Rule> all = rules(config);
  std::set<std::string> named;
  for (size_t i = 0; i < all.size(); ++i) {
    const Shape shape = all[i].hf_shape();
    for (const std::string& name : all[i].hf) {
      if (!header.contains(name)) {
        throw bad("Hugging Face tensor \"" + name + "\" is missing (expected shape " + shape_str(shape) + ")");
      }
      if (header.at(name).shape != shape) {
        throw bad("Hugging Face tensor \"" + name + "\": shape " + shape_str(header.at(name).shape) +
                  " found; expected " + shape_str(shape));
      }
      named.insert(name);
    }
    rule_of_[all[i].smp] = i;
  }
  const auto tied_copy_in_file = [&](const checkpoint::SafetensorsTensorInfo& t) {
    const std::string embedding = all[rule_of_.at("embed.wte.weight")].hf[0];
    if (!config.tie_embeddings || t.name != "lm_head.weight" || t.shape != header.at(embedding).shape) return false;
    const at::Tensor head = checkpoint::load_safetensors_tensor(weights_path_, t.name);
    return at::equal(head, checkpoint::load_safetensors_tensor(weights_path_, embedding).to(head.scalar_type()));
  };
  std::string extra;
  for (const checkpoint::SafetensorsTensorInfo& t : header.tensors) {
    if (named.count(t.name) || computed_buffer(t.name) || tied_copy_in_file(t)) continue;
    extra += (extra.empty() ? "\"" : ", \"") + t.name + "\" " + shape_str(t.shape);
  }
  if (!extra.empty()) throw bad("Hugging Face tensors unexpected for a " + describe(config) + ": " + extra);
}

void HfWeights::load(Layer& layer, int tp_rank) {
  const std::vector<Rule> all = rules(config_);
  for (size_t j = 0; j < layer.parameters.size(); ++j) {
    const at::Tensor& p = layer.parameters[j];
    if (std::find(loaded_.begin(), loaded_.end(), identity(p)) != loaded_.end()) continue;
    const std::string name = layer.name + "." + layer.parameter_names[j];
    auto it = rule_of_.find(config_.tie_embeddings && name == kTiedHeadCopy ? "embed.wte.weight" : name);
    if (it == rule_of_.end()) {
      throw ConfigError(weights_path_ + ": no Hugging Face tensor for parameter \"" + name + "\" of the " +
                        describe(config_));
    }
    const Rule& r = all[it->second];
    const ShardSpec shard = shard_of(layer, j);
    if (whole_shape(p, shard) != r.shape) {
      throw ConfigError(weights_path_ + ": parameter \"" + name + "\" has whole shape " +
                        shape_str(whole_shape(p, shard)) + "; the file's tensor is " + shape_str(r.shape));
    }
    const at::Tensor whole = to_smp(r, [&](const std::string& hf, const Shape&) {
      return checkpoint::load_safetensors_tensor(weights_path_, hf);
    });
    copy_slice(p, shard, whole, tp_rank);
    loaded_.push_back(identity(p));
  }
}

void load_hf(const std::string& dir, Model& model) {
  HfWeights weights(dir, model.config);
  for (Layer& layer : model.layers) weights.load(layer, model.tp.rank());
}

}  // namespace smp::models
