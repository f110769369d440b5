// Hugging Face compatibility on 1 and 2 ranks (tp = world size): smp's GPT-2 and LLaMA load a
// random-init GPT2LMHeadModel / LlamaForCausalLM that transformers saved (hf_reference.py, on
// CPU) and reproduce its logits within 1e-4; what smp saves loads back into transformers with
// the same logits; bad checkpoints and configs are clear errors.
#include <gtest/gtest.h>

#include <stdlib.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <stdexcept>

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <nlohmann/json.hpp>

#include "smp/checkpoint/safetensors.h"
#include "smp/core/error.h"
#include "smp/core/files.h"
#include "smp/models/hf.h"
#include "smp/smp.h"
#include "testing/temp_dir.h"

namespace smp::models {
namespace {

constexpr double kRelTol = 1e-4;  // fp32, different kernels (transformers' eager attention)

void init_tp() {
  init(Config::from_json_string("{\"tensor_parallel_degree\": " +
                                std::to_string(comm::world_size()) + ", \"ddp\": true}"));
}

tp::TpGroup tp_group() { return tp::TpGroup(process_group(CommGroup::TP_GROUP)); }

// A fresh directory every rank shares, removed at scope exit. Over smp::testing::world(), as
// the tests shut smp down before it goes.
smp::testing::TempDir shared_temp_dir() {
  return smp::testing::TempDir("smp_hf_parity", smp::testing::world());
}

::testing::AssertionResult close(const at::Tensor& got, const at::Tensor& want, double tol) {
  if (got.sizes() != want.sizes()) {
    return ::testing::AssertionFailure() << "shape " << got.sizes() << ", expected " << want.sizes();
  }
  const double err = (got - want).abs().max().item<double>();
  const double scale = want.abs().max().item<double>();
  if (err <= tol * scale) return ::testing::AssertionSuccess() << "max abs error " << err;
  return ::testing::AssertionFailure() << "max abs error " << err << " > " << tol << " * " << scale;
}

at::Tensor full_logits(Model& model, const at::Tensor& tokens) {
  at::NoGradGuard no_grad;
  model.set_training(false);
  Values x = {tokens};
  for (auto& layer : model.layers) x = layer.forward(x);
  return model.full_logits(x[0]);
}

// Every sharded parameter's rows past its whole size (vocabulary padding) are zero here.
void expect_padding_zero(const Model& model) {
  for (const auto& layer : model.layers) {
    for (size_t j = 0; j < layer.tp_shards.size(); ++j) {
      const smp::ShardSpec& s = layer.tp_shards[j];
      if (!s.sharded()) continue;
      const at::Tensor& p = layer.parameters[j];
      const int64_t n = p.size(s.dim), start = model.tp.rank() * n;
      const int64_t rows = std::clamp<int64_t>(s.size - start, 0, n);
      if (rows < n) {
        EXPECT_EQ(p.narrow(s.dim, rows, n - rows).abs().max().item<double>(), 0.0)
            << layer.name << "." << layer.parameter_names[j] << " padding";
      }
    }
  }
}

ModelConfig tiny(Family family) {
  ModelConfig c = named_model("tiny");
  c.family = family;
  c.num_heads = 4;
  c.num_layers = 2;
  c.vocab_size = 51;  // odd: the vocabulary pads on tp = 2
  if (family == Family::kLlama) c.tie_embeddings = false, c.ffn_hidden = 48, c.norm_eps = 1e-6;
  return c;
}

#ifdef SMP_TEST_PYTHON
// hf_reference.py with `args` on rank 0 (inside on_rank0); throws naming the command.
std::string python(const std::string& args) {
  const std::string cmd = std::string(SMP_TEST_PYTHON) + " " + SMP_HF_REFERENCE + " " + args;
  const int rc = std::system(cmd.c_str());
  if (rc != 0) throw std::runtime_error("exit status " + std::to_string(rc) + ": " + cmd);
  return "";
}

void check_family(const std::string& family) {
  init_tp();
  const smp::testing::TempDir tmp = shared_temp_dir();
  const std::string& dir = tmp.path();
  on_rank0("hf_reference.py make", [&] { return python("make " + dir + " " + family); });
  const std::string hf_dir = dir + "/hf";
  const ModelConfig config =
      model_config_from_hf(nlohmann::json::parse(files::read_file(hf_dir + "/config.json")));

  // transformers' weights, in smp's model on tp = world size: its logits.
  at::manual_seed(5);  // any init: load_hf replaces every parameter
  Model model = build_model(config, tp_group(), false);
  load_hf(hf_dir, model);
  expect_padding_zero(model);
  const auto reference = checkpoint::load_safetensors(dir + "/reference.safetensors");
  const at::Tensor& tokens = reference.at("tokens");
  const at::Tensor logits = full_logits(model, tokens);
  EXPECT_TRUE(close(logits, reference.at("logits"), kRelTol)) << family;
  if (rank() == 0) {
    std::printf("%s on tp=%d: smp vs transformers, max abs error %.3g, max abs logit %.3g\n",
                family.c_str(), tp_size(), (logits - reference.at("logits")).abs().max().item<double>(),
                reference.at("logits").abs().max().item<double>());
  }

  // Gathered back, the whole parameters are exactly the file's.
  const auto whole = whole_parameters(model);
  const auto from_file =
      from_hf(config, checkpoint::load_safetensors(hf_dir + "/model.safetensors"));
  EXPECT_EQ(whole.size(), from_file.size());
  for (const auto& [name, t] : from_file) {
    EXPECT_TRUE(whole.count(name) && at::equal(whole.at(name), t)) << name;
  }

  // A tied head kept as a separate copy (pipeline stages apart) loads the embedding too.
  if (config.tie_embeddings) {
    Model separate = build_model(config, tp_group(), true);
    load_hf(hf_dir, separate);
    EXPECT_TRUE(close(full_logits(separate, tokens), reference.at("logits"), kRelTol))
        << family << " with a separate tied head";
  }

  // smp's save: transformers loads it (strictly) and reproduces its own logits; smp reads it
  // back to the same parameters.
  const std::string smp_dir = dir + "/smp";
  save_hf(smp_dir, model);
  EXPECT_NO_THROW(on_rank0("hf_reference.py check", [&] {
    return python("check " + smp_dir + " " + dir + "/reference.safetensors");
  }));
  at::manual_seed(6);
  Model again = build_model(config, tp_group(), false);
  load_hf(smp_dir, again);
  for (size_t i = 0; i < model.layers.size(); ++i) {
    for (size_t j = 0; j < model.layers[i].parameters.size(); ++j) {
      EXPECT_TRUE(at::equal(model.layers[i].parameters[j], again.layers[i].parameters[j]))
          << model.layers[i].name << "." << model.layers[i].parameter_names[j];
    }
  }
  shutdown();
}

TEST(HfParity, Gpt2MatchesTransformers) { check_family("gpt2"); }
TEST(HfParity, LlamaMatchesTransformers) { check_family("llama"); }
#else
TEST(HfParity, NeedsPython) { GTEST_SKIP() << "configured without Python3_EXECUTABLE"; }
#endif

// The file is checked whole before any parameter is written: on every rank a tensor of the
// wrong shape (with the shape found and the one expected), a missing tensor, an unexpected one
// and a tied head's lm_head.weight that differs from the embedding are each named, and the
// model keeps its values; an lm_head.weight equal to the embedding (some writers keep it) loads.
TEST(HfParity, FileIsCheckedBeforeAnyParameterIsWritten) {
  init_tp();
  const smp::testing::TempDir tmp = shared_temp_dir();
  const std::string& dir = tmp.path();
  const ModelConfig config = tiny(Family::kGpt2);
  Model model = build_model(config, tp_group(), false);
  save_hf(dir, model);
  const std::string path = dir + "/model.safetensors";
  const auto saved = checkpoint::load_safetensors(path);
  // Rewrites the file from `saved` with `edit` applied (rank 0; every rank then reads it).
  const auto rewrite = [&](const std::function<void(std::map<std::string, at::Tensor>&)>& edit) {
    on_rank0("rewrite", [&] {
      auto tensors = saved;
      edit(tensors);
      std::vector<std::pair<std::string, at::Tensor>> out(tensors.begin(), tensors.end());
      checkpoint::save_safetensors(path, out, {{"format", "pt"}});
      return "";
    });
  };
  at::manual_seed(9);
  Model other = build_model(config, tp_group(), false);
  const auto before = whole_parameters(other);
  const auto expect_refused = [&](const std::string& what, const std::string& needle) {
    try {
      load_hf(dir, other);
      ADD_FAILURE() << what << ": expected ConfigError";
    } catch (const ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << what << ": " << e.what();
    }
    for (const auto& [name, t] : whole_parameters(other)) {
      EXPECT_TRUE(at::equal(t, before.at(name))) << what << ": " << name << " was written";
    }
  };
  const std::string qkv = "transformer.h.1.attn.c_attn.weight";
  rewrite([&](auto& t) { t[qkv] = t.at(qkv).t().contiguous(); });
  expect_refused("wrong shape", "\"" + qkv + "\": shape [96, 32] found; expected [32, 96]");
  const std::string last = "transformer.h.1.mlp.c_proj.bias";  // the last block's, read late
  rewrite([&](auto& t) { t.erase(last); });
  expect_refused("missing", "\"" + last + "\" is missing (expected shape [32])");
  rewrite([&](auto& t) { t["transformer.h.2.ln_1.weight"] = at::ones({config.hidden}); });
  expect_refused("stray", "unexpected for a GPT-2 model with 2 layers: \"transformer.h.2.ln_1.weight\" [32]");
  rewrite([&](auto& t) { t["lm_head.weight"] = t.at("transformer.wte.weight") + 1; });
  expect_refused("unequal tied head", "\"lm_head.weight\"");
  rewrite([&](auto& t) { t["lm_head.weight"] = t.at("transformer.wte.weight").clone(); });
  load_hf(dir, other);
  const auto loaded = whole_parameters(other);
  for (const auto& [name, t] : whole_parameters(model)) {
    EXPECT_TRUE(at::equal(loaded.at(name), t)) << name;
  }
  shutdown();
}

// A config.json that differs from the model names every differing field.
TEST(HfParity, ConfigMismatchNamesTheFields) {
  init_tp();
  const smp::testing::TempDir tmp = shared_temp_dir();
  const std::string& dir = tmp.path();
  ModelConfig config = tiny(Family::kLlama);
  Model model = build_model(config, tp_group(), false);
  save_hf(dir, model);
  config.num_layers = 3;
  config.rope_theta = 500000.0;
  Model other = build_model(config, tp_group(), false);
  try {
    load_hf(dir, other);
    ADD_FAILURE() << "expected ConfigError";
  } catch (const ConfigError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("num_layers (num_hidden_layers) 2 in the file, 3 in the model"),
              std::string::npos) << what;
    EXPECT_NE(what.find("rope_theta 10000.0 in the file, 500000.0 in the model"), std::string::npos)
        << what;
  }
  shutdown();
}

// from_hf: missing and unexpected tensors are named; transformers' buffers are ignored.
TEST(HfMapping, MissingAndUnexpectedTensors) {
  for (Family family : {Family::kGpt2, Family::kLlama}) {
    const ModelConfig config = tiny(family);
    at::manual_seed(2);
    const Model model = build_model(config, tp::TpGroup{}, false);
    std::map<std::string, at::Tensor> hf;
    for (auto& [name, t] : to_hf(config, whole_parameters(model))) hf[name] = t;
    const auto round_trip = from_hf(config, hf);
    const auto whole = whole_parameters(model);
    EXPECT_EQ(round_trip.size(), whole.size());
    for (const auto& [name, t] : whole) EXPECT_TRUE(at::equal(round_trip.at(name), t)) << name;

    const bool gpt2 = family == Family::kGpt2;
    auto buffers = hf;
    if (gpt2) {
      buffers["transformer.h.0.attn.bias"] = at::ones({1, 1, 64, 64}, at::kBool);
      buffers["transformer.h.0.attn.masked_bias"] = at::scalar_tensor(-1e4);
      buffers["lm_head.weight"] = hf.at("transformer.wte.weight").clone();  // tied: equal
    } else {
      buffers["model.layers.0.self_attn.rotary_emb.inv_freq"] = at::ones({4});
    }
    EXPECT_NO_THROW(from_hf(config, buffers));

    const std::string victim = gpt2 ? "transformer.h.0.mlp.c_proj.weight" : "model.layers.1.mlp.up_proj.weight";
    auto missing = hf;
    missing.erase(victim);
    try {
      from_hf(config, missing);
      ADD_FAILURE() << "expected ConfigError";
    } catch (const ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find("\"" + victim + "\" is missing"), std::string::npos)
          << e.what();
    }

    auto extra = hf;
    const std::string stray = gpt2 ? "transformer.h.2.ln_1.weight" : "model.layers.2.input_layernorm.weight";
    extra[stray] = at::ones({config.hidden});
    try {
      from_hf(config, extra);
      ADD_FAILURE() << "expected ConfigError";
    } catch (const ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find("\"" + stray + "\" [32]"), std::string::npos) << e.what();
    }
  }
}

// hf_config and model_config_from_hf: a round trip keeps every field that matters; settings smp
// cannot run are named.
TEST(HfMapping, ConfigRoundTripAndRefusals) {
  for (Family family : {Family::kGpt2, Family::kLlama}) {
    const ModelConfig c = tiny(family);
    const ModelConfig back = model_config_from_hf(hf_config(c));
    EXPECT_EQ(back.family, c.family);
    EXPECT_EQ(back.vocab_size, c.vocab_size);
    EXPECT_EQ(back.max_seq_len, c.max_seq_len);
    EXPECT_EQ(back.num_layers, c.num_layers);
    EXPECT_EQ(back.num_heads, c.num_heads);
    EXPECT_EQ(back.hidden, c.hidden);
    EXPECT_EQ(back.ffn_hidden, c.ffn_hidden);
    EXPECT_EQ(back.norm_eps, c.norm_eps);
    EXPECT_EQ(back.rope_theta, c.rope_theta);
    EXPECT_EQ(back.tie_embeddings, c.tie_embeddings);
  }
  auto refused = [](nlohmann::json j, const std::string& key, const nlohmann::json& value) {
    j[key] = value;
    try {
      model_config_from_hf(j);
      ADD_FAILURE() << key << " = " << value.dump() << ": expected ConfigError";
    } catch (const ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find("\"" + key + "\": got " + value.dump()), std::string::npos)
          << e.what();
    }
  };
  const nlohmann::json llama = hf_config(tiny(Family::kLlama));
  const nlohmann::json gpt2 = hf_config(tiny(Family::kGpt2));
  refused(llama, "num_key_value_heads", 2);
  refused(llama, "rope_scaling", {{"rope_type", "linear"}, {"factor", 2.0}});
  refused(llama, "attention_bias", true);
  refused(llama, "model_type", "mistral");
  refused(gpt2, "activation_function", "relu");
  refused(gpt2, "n_layer", 0);
}

}  // namespace
}  // namespace smp::models
