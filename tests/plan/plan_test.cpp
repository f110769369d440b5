// The planner: counts against the papers' formulas, the collectives' closed forms, the
// schedule simulation under the cost model, the search's rules, the configuration it writes,
// the published runs (each within 15%), and the fit of a machine's constants.
#include <cmath>
#include <fstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "smp/core/config.h"
#include "smp/core/error.h"
#include "smp/models/model_config.h"
#include "smp/plan/search.h"
#include "smp/plan/validation.h"

namespace smp::plan {
namespace {

using nlohmann::json;

// A cluster with free communication: only compute counts.
ClusterSpec free_links() {
  ClusterSpec c = cluster_preset("a100-ib");
  c.intra_node = {1e12, 0}, c.inter_node = {1e12, 0};
  return c;
}

Workload workload(int64_t batch, int64_t seq, Precision p = Precision::kBf16) {
  Workload w;
  w.global_batch = batch, w.seq = seq, w.precision = p;
  return w;
}

TEST(ModelSpec, GptParametersFollowMegatronsEquationTwo) {
  // Narayanan et al. 2021, Table 1: P = 12 l h^2 (1 + 13/12h + (V + s)/12lh), plus the final
  // LayerNorm; the table lists 1.7B ... 1008.0B.
  const std::pair<const char*, double> table[] = {{"megatron-1.7b", 1.7e9}, {"megatron-145.6b", 145.6e9},
                                                  {"megatron-530b", 529.6e9}, {"megatron-1t", 1008.0e9}};
  for (const auto& [name, published] : table) {
    const ModelSpec m = named_model_spec(name);
    const double l = m.layers, h = m.hidden, v = m.vocab, s = 2048;
    const double eq2 = 12 * l * h * h * (1 + 13 / (12 * h) + (v + s) / (12 * l * h)) + 2 * h;
    EXPECT_NEAR(static_cast<double>(m.parameters(2048)) / eq2, 1.0, 1e-12) << name;
    EXPECT_NEAR(static_cast<double>(m.parameters(2048)) / published, 1.0, 0.03) << name;
  }
}

TEST(ModelSpec, GptFlopsAreKorthikantisModelFlops) {
  for (const char* name : {"megatron-22b", "gpt3-175b", "gpt2-124m"}) {
    const ModelSpec m = named_model_spec(name);
    const double l = m.layers, h = m.hidden, v = m.vocab, s = 1024;
    EXPECT_NEAR(m.model_flops_per_sequence(1024) / (72 * s * l * h * h * (1 + s / (6 * h) + v / (12 * l * h))),
                1.0, 1e-12) << name;
  }
}

TEST(ModelSpec, SmpsNamedSizesCountAsSmpBuildsThem) {
  for (const char* name : {"gpt2-124m", "gpt2-350m", "llama-125m", "llama-1b"}) {
    const models::ModelConfig c = models::named_model(name);
    EXPECT_EQ(named_model_spec(name).parameters(c.max_seq_len), c.num_parameters()) << name;
  }
}

TEST(ModelSpec, ReadsHuggingFaceConfigs) {
  const ModelSpec llama = model_spec_from_hf(json{{"model_type", "llama"}, {"num_hidden_layers", 80},
      {"hidden_size", 8192}, {"num_attention_heads", 64}, {"num_key_value_heads", 8},
      {"intermediate_size", 28672}, {"vocab_size", 32000}, {"hidden_act", "silu"}});
  EXPECT_EQ(llama.kv_heads, 8);
  EXPECT_TRUE(llama.gated_mlp);
  EXPECT_FALSE(llama.tied_head);
  EXPECT_NEAR(static_cast<double>(llama.parameters(4096)) / 68.98e9, 1.0, 0.01);  // Llama-2-70B
  const ModelSpec gpt2 = model_spec_from_hf(json{{"model_type", "gpt2"}, {"n_layer", 12}, {"n_embd", 768},
      {"n_head", 12}, {"vocab_size", 50257}, {"activation_function", "gelu_new"}});
  EXPECT_EQ(gpt2.parameters(1024), named_model_spec("gpt2-124m").parameters(1024));
  try {
    model_spec_from_hf(json{{"n_layer", 12}, {"n_head", 12}, {"vocab_size", 5}});
    FAIL() << "no hidden size";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("hidden_size or n_embd or d_model"), std::string::npos) << e.what();
  }
  EXPECT_THROW(model_spec_from_json(json{{"hidden", 100}, {"heads", 3}}), ConfigError);
  EXPECT_THROW(model_spec_from_json(json{{"layers", 0}}), ConfigError);
  EXPECT_THROW(model_spec_from_json(json{{"width", 4}}), ConfigError);
  EXPECT_THROW(named_model_spec("gpt5"), ConfigError);
}

TEST(Cluster, EfficiencyInterpolatesInLogSpaceAndClamps) {
  ClusterSpec c;
  c.gemm_efficiency = {{64, 0.4}, {256, 0.8}};
  EXPECT_DOUBLE_EQ(c.efficiency(16), 0.4);
  EXPECT_DOUBLE_EQ(c.efficiency(128), 0.6);
  EXPECT_DOUBLE_EQ(c.efficiency(4096), 0.8);
}

TEST(Cluster, JsonRoundTripsAndNamesBadKeys) {
  for (const auto& name : cluster_preset_names()) {
    const ClusterSpec c = cluster_preset(name);
    EXPECT_EQ(to_json(cluster_from_json(to_json(c))), to_json(c)) << name;
  }
  const auto message = [](const json& j) {
    try {
      cluster_from_json(j);
    } catch (const ConfigError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(message({{"gpus", 8}}).find("\"gpus\""), std::string::npos);
  EXPECT_NE(message({{"gemm_efficiency", {{256, 0.5}, {64, 0.9}}}}).find("ascending"), std::string::npos);
  EXPECT_NE(message({{"intra_node", {{"bandwidth_gb_s", 0}, {"latency_us", 1}}}}).find("intra_node.bandwidth_gb_s"),
            std::string::npos);
  EXPECT_NE(message({{"preset", "tpu"}}).find("a100-efa"), std::string::npos);
  EXPECT_EQ(cluster_from_json({{"preset", "h100-ib"}, {"memory_gb", 141}}).memory_gb, 141);
}

TEST(Collectives, RingWithinANodeThenAcrossNodes) {
  ClusterSpec c;
  c.intra_node = {100, 2}, c.inter_node = {10, 5};
  const double bytes = 1e9;
  EXPECT_EQ(all_reduce_s(c, bytes, 1, 1), 0);
  EXPECT_NEAR(all_reduce_s(c, bytes, 4, 8), 2 * 0.75 * bytes / 100e9 + 6 * 2e-6, 1e-12);
  // 16 ranks, 8 per node: within the node, then each member's eighth across the 2 nodes.
  const double expected = 2 * 7.0 / 8 * bytes / 100e9 + 14 * 2e-6 + 2 * 0.5 * bytes / 8 / 10e9 + 2 * 5e-6;
  EXPECT_NEAR(all_reduce_s(c, bytes, 16, 8), expected, 1e-12);
  EXPECT_NEAR(all_gather_s(c, bytes, 16, 8), expected / 2, 1e-12);
  EXPECT_NEAR(flat_all_gather_s(c, bytes, 16, 8), 15.0 / 16 * bytes / 10e9 + 15 * 5e-6, 1e-12);
  // 1024 nodes of one: a small message takes the tree (2 log2 n latencies, not 2 (n - 1)).
  EXPECT_NEAR(all_reduce_s(c, 8, 1024, 1), 2 * 8 / 10e9 + 20 * 5e-6, 1e-12);
}

TEST(CostModel, PipelineTimeIsTheSimulatedScheduleOfTheStageCosts) {
  const ModelSpec m = named_model_spec("megatron-22b");  // 48 layers
  Software sw = software_preset("megatron-2021");
  for (auto [kind, microbatches] : {std::pair{pipeline::ScheduleKind::kOneFOneB, 8},
                                    std::pair{pipeline::ScheduleKind::kSimple, 16}}) {
    Layout l;
    l.pp = 4, l.dp = 1, l.microbatch_size = 1, l.schedule = kind;
    const Estimate e = estimate(m, free_links(), sw, workload(microbatches, 2048), l);
    ASSERT_TRUE(e.valid) << e.why_invalid;
    EXPECT_EQ(e.microbatches, microbatches);
    // Uniform stages (the slowest one's costs): (m + p - 1) (F + B), bubble (p - 1)/(m + p - 1).
    EXPECT_NEAR(e.pipeline_s / ((microbatches + 3) * (e.forward_s + e.backward_s)), 1.0, 1e-9);
    EXPECT_NEAR(e.bubble, 3.0 / (microbatches + 3), 1e-9);
    EXPECT_EQ(e.in_flight, kind == pipeline::ScheduleKind::kSimple ? microbatches : 4);
  }
}

TEST(CostModel, ModelStatesFollowZerosFormulas) {
  const ModelSpec m = named_model_spec("megatron-7.5b");
  const double psi = static_cast<double>(m.parameters(2048)) / 1e9;
  const auto states = [&](Sharding s, const std::string& software = "smp") {
    Layout l;
    l.dp = 64, l.sharding = s, l.sdp = s == Sharding::kSdp ? 64 : 1;
    const Estimate e = estimate(m, free_links(), software_preset(software), workload(64, 2048), l);
    EXPECT_TRUE(e.valid) << e.why_invalid;
    return e.weights_gb + e.grads_gb + e.optimizer_gb;
  };
  // smp keeps fp32 gradients under bf16 (docs/data_parallel.md): 2 bytes per parameter over
  // ZeRO's 16-bit-gradient formulas, and ZeRO-1's reduced slice a buffer of its own.
  EXPECT_NEAR(states(Sharding::kNone), 18 * psi, 1e-6);
  EXPECT_NEAR(states(Sharding::kZero1), 6 * psi + 16 * psi / 64, 1e-6);
  EXPECT_NEAR(states(Sharding::kSdp), 18 * psi / 64, 1e-6);
  // ZeRO's own (Rajbhandari et al., 16-bit gradients): 16Ψ, 4Ψ + 12Ψ/N_d, 16Ψ/N_d.
  EXPECT_NEAR(states(Sharding::kNone, "deepspeed-2021"), 16 * psi, 1e-6);
  EXPECT_NEAR(states(Sharding::kZero1, "deepspeed-2021"), 4 * psi + 12 * psi / 64, 1e-6);
  EXPECT_NEAR(states(Sharding::kSdp, "deepspeed-2021"), 16 * psi / 64, 1e-6);
}

TEST(CostModel, ActivationsFollowKorthikantisTableTwo) {
  const ModelSpec m = named_model_spec("megatron-530b");
  const double s = 2048, b = 1, h = m.hidden, a = m.heads, t = 8;
  Layout l;
  l.tp = 8, l.dp = 1;
  ClusterSpec c = free_links();
  c.activation_memory_factor = 1, c.memory_gb = 1e9;
  const auto per_layer = [&](const Software& sw, Recompute r) {
    l.recompute = r;
    const Estimate e = estimate(m, c, sw, workload(1, 2048, Precision::kFp16), l);
    EXPECT_TRUE(e.valid) << e.why_invalid;
    return e.activations_gb * 1e9 / static_cast<double>(m.layers);
  };
  // Tensor parallelism alone: sbh (10 + 24/t + 5as/ht).
  EXPECT_NEAR(per_layer(software_preset("megatron-2021"), Recompute::kNone),
              s * b * h * (10 + 24 / t + 5 * a * s / (h * t)), 1.0);
  // Sequence parallelism and selective recomputation: 34 sbh / t.
  EXPECT_NEAR(per_layer(software_preset("megatron-2022"), Recompute::kSelective), 34 * s * b * h / t, 1.0);
  // Full recomputation: each layer's input, 2sbh (/t sequence-parallel), and one layer whole.
  EXPECT_NEAR(per_layer(software_preset("megatron-2021"), Recompute::kFull),
              2 * s * b * h + s * b * h * (10 + 24 / t + 5 * a * s / (h * t)) / static_cast<double>(m.layers), 1.0);
}

TEST(CostModel, MoreMicrobatchesShrinkTheBubbleAndRecomputationTradesTimeForMemory) {
  const ModelSpec m = named_model_spec("gpt2-1.5b");
  const ClusterSpec c = cluster_preset("h100-ib");
  const Software sw = software_preset("smp");
  Layout l;
  l.pp = 4, l.dp = 2;
  const Estimate few = estimate(m, c, sw, workload(16, 1024), l);
  const Estimate many = estimate(m, c, sw, workload(128, 1024), l);
  EXPECT_GT(few.bubble, many.bubble);
  l.recompute = Recompute::kFull;
  const Estimate recomputed = estimate(m, c, sw, workload(128, 1024), l);
  EXPECT_GT(recomputed.step_s, many.step_s);
  EXPECT_LT(recomputed.activations_gb, many.activations_gb);
  l.schedule = pipeline::ScheduleKind::kZeroBubble;
  EXPECT_LT(estimate(m, c, sw, workload(128, 1024), l).bubble, recomputed.bubble);
}

TEST(CostModel, BrokenRulesAreNamed) {
  const ModelSpec m = named_model_spec("gpt2-124m");  // 12 heads, 12 layers
  const auto why = [&](Layout l, int64_t batch = 16) {
    return estimate(m, cluster_preset("h100-ib"), software_preset("smp"), workload(batch, 1024), l).why_invalid;
  };
  Layout l;
  l.tp = 8;
  EXPECT_NE(why(l).find("heads 12 do not divide by tp 8"), std::string::npos);
  l = {}, l.pp = 2, l.dp = 2, l.sharding = Sharding::kSdp, l.sdp = 2;
  EXPECT_NE(why(l).find("does not combine sharded data parallelism"), std::string::npos);
  l = {}, l.dp = 3;
  EXPECT_NE(why(l).find("global batch 16 does not divide"), std::string::npos);
  l = {}, l.pp = 4, l.schedule = pipeline::ScheduleKind::kInterleavedVirtual, l.chunks = 2;
  EXPECT_NE(why(l, 6).find("microbatches 6 to divide by pp 4"), std::string::npos);
  l = {}, l.recompute = Recompute::kSelective;
  EXPECT_NE(why(l).find("no selective"), std::string::npos);
}

TEST(Layout, TextRoundTripsAndNamesBadParts) {
  for (const char* text : {"pp4.tp8.dp2.mb1.1f1b.full.DPT", "pp1.tp2.dp4.sdp4.mb2.1f1b.norc.PDT",
                           "pp8.tp8.dp1.zero1.mb1.int2.sel.DPT", "pp2.tp1.dp1.mb4.zb.full.offload.TPD"})
    EXPECT_EQ(parse_layout(text).to_string(), text);
  EXPECT_THROW(parse_layout("pp4.tp0"), ConfigError);
  EXPECT_THROW(parse_layout("pp4.fast"), ConfigError);
}

TEST(Search, EveryLayoutKeepsTheRulesAndTheBestIsARunnableSmpConfig) {
  const ModelSpec m = named_model_spec("gpt2-1.5b");  // 25 heads
  const Workload w = workload(64, 1024);
  SearchOptions o;
  o.gpus = 16;
  const auto found = search(m, cluster_preset("a100-efa"), software_preset("smp"), w, o);
  ASSERT_FALSE(found.empty());
  for (size_t i = 0; i < found.size(); ++i) {
    const Layout& l = found[i].layout;
    EXPECT_EQ(l.world(), 16);
    EXPECT_EQ(m.heads % l.tp, 0) << l.to_string();
    EXPECT_FALSE(l.sharding == Sharding::kSdp && l.pp > 1) << l.to_string();
    EXPECT_FALSE(l.offload && l.recompute != Recompute::kFull) << l.to_string();
    EXPECT_NE(l.recompute, Recompute::kSelective) << l.to_string();
    if (i > 0 && found[i].estimate.fits)
      EXPECT_GE(found[i - 1].estimate.tokens_per_s, found[i].estimate.tokens_per_s);
  }
  ASSERT_TRUE(found.front().estimate.fits);
  const json config = smp_config(m, w, found.front());
  const Config c = Config::from_json(config.at("smp"));
  EXPECT_NO_THROW(c.validate_world(16));
  EXPECT_EQ(c.pipeline_parallel_degree, found.front().layout.pp);
  EXPECT_EQ(config.at("training").at("global_batch"), 64);
  EXPECT_THROW(search(m, cluster_preset("a100-efa"), software_preset("smp"), w, SearchOptions{0}), ConfigError);
}

TEST(Published, EveryRunWithinFifteenPercentAndTheMedianWithinTen) {
  std::ifstream in(SMP_SOURCE_DIR "/tests/plan/published_runs.json");
  ASSERT_TRUE(in.good());
  const auto checks = check_published(json::parse(in));
  EXPECT_GE(checks.size(), 25u);
  for (const auto& c : checks) EXPECT_LE(c.rel_err(), 0.15) << c.name << ": " << c.predicted << " vs " << c.published;
  EXPECT_LE(median_rel_err(checks), 0.10) << checks_table(checks);
  EXPECT_THROW(check_published(json::array({{{"name", "x"}, {"metric", "speed"}}})), ConfigError);
}

TEST(Fit, RecoversTheConstantsThatMadeTheRuns) {
  // Runs "measured" on a cluster whose compute is 2x slower than the probe said, with 50 ms
  // per step, 0.4 GB of runtime and 1.3x allocator slack: the fit finds those constants.
  ClusterSpec probe = cluster_preset("a100-ib");
  probe.gpus_per_node = 4, probe.step_overhead_s = 0, probe.runtime_overhead_gb = 0;
  ClusterSpec truth = probe;
  for (auto& [d, e] : truth.gemm_efficiency) e /= 2;
  truth.attention_efficiency /= 2, truth.memory_bandwidth_gb_s /= 2, truth.softmax_bandwidth_gb_s /= 2;
  truth.step_overhead_s = 0.05, truth.runtime_overhead_gb = 0.4, truth.activation_memory_factor = 1.3;
  const Software sw = software_preset("smp");
  std::vector<MeasuredRun> runs;
  for (const char* layout : {"pp1.tp1.dp1.mb16.1f1b.norc.DPT", "pp2.tp1.dp1.mb4.1f1b.norc.DPT",
                             "pp1.tp2.dp2.mb4.1f1b.full.DPT", "pp1.tp1.dp4.sdp4.mb4.1f1b.norc.DPT"}) {
    MeasuredRun r;
    r.name = layout, r.model = named_model_spec("gpt2-124m"), r.workload = workload(16, 1024);
    r.layout = parse_layout(layout);
    const Estimate e = estimate(r.model, truth, sw, r.workload, r.layout);
    ASSERT_TRUE(e.valid) << e.why_invalid;
    r.step_s = e.step_s, r.peak_gb = e.memory_gb;
    runs.push_back(r);
  }
  const ClusterSpec fitted = fit_cluster(probe, sw, runs);
  EXPECT_NEAR(fitted.step_overhead_s, 0.05, 0.01);
  EXPECT_NEAR(fitted.runtime_overhead_gb, 0.4, 0.01);
  EXPECT_NEAR(fitted.activation_memory_factor, 1.3, 0.01);
  for (const auto& c : check_measured(probe, sw, runs)) EXPECT_LT(c.rel_err(), 0.05) << c.name << " " << c.metric;
}

}  // namespace
}  // namespace smp::plan
