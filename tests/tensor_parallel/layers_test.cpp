// Megatron-style parallel layers against their plain references, for tp = the world size
// (1, 2, 4): each shard is the slice of the tp=1 parameter, and forward output, input grad and
// every weight grad match (check_against_reference), with and without sequence parallelism.
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>

#include <algorithm>

#include "smp/tensor_parallel/transformer.h"
#include "tp_testing.h"

namespace smp::testing {
namespace {

constexpr int64_t kB = 2, kS = 4;  // S divides by every tp tested

void start() { reinit("\"tensor_parallel_degree\": " + std::to_string(comm::world_size())); }

at::Tensor input(int64_t features) {
  at::manual_seed(5);
  return at::randn({kB, kS, features});
}

TEST(TpLayers, ColumnParallelLinear) {
  start();
  constexpr double kTol = 1e-5;  // fp32: the input-grad all-reduce reorders sums
  const TpGroup g = tp_group();
  struct Variant {
    std::string name;
    tp::LinearOptions options;
    Layout in, out;
  };
  std::vector<Variant> variants(5);
  variants[0] = {"plain", {}, Layout::kReplicated, Layout::kLastDim};
  variants[1] = {"gather_output", {}, Layout::kReplicated, Layout::kReplicated};
  variants[1].options.gather_output = true;
  variants[2] = {"sequence_parallel", {}, Layout::kSequence, Layout::kLastDim};
  variants[2].options.sequence_parallel = true;
  variants[3] = {"stacked qkv", {}, Layout::kReplicated, Layout::kLastDim};
  variants[3].options.stack = 3;
  // An LM head: 8 outputs padded to 64 tp, the padding rows zero, their grads 0 (the reference
  // is padded to 64), the gathered output unpadded.
  variants[4] = {"vocab head", {}, Layout::kReplicated, Layout::kReplicated};
  variants[4].options.pad_vocab = variants[4].options.gather_output = true;
  for (const Variant& v : variants) {
    auto [par, full] = build_pair<tp::ColumnParallelLinear>(1, g, [&](TpGroup group) {
      return std::make_shared<tp::ColumnParallelLinear>(6, 8, group, v.options);
    });
    LayerCheck check{"column " + v.name, kTol, v.in, v.out, v.options.stack};
    check_against_reference(
        check, *par, *full, [&](const at::Tensor& x) { return par->forward(x); },
        [&](const Params& p, const at::Tensor& x) {
          const int64_t stack = v.options.stack;
          return ref_linear(x, p.at("weight").reshape({-1, 6}), p.at("bias").reshape(-1))
              .narrow(-1, 0, stack * 8);
        },
        input(6), g);
  }
}

TEST(TpLayers, RowParallelLinear) {
  start();
  constexpr double kTol = 1e-5;  // fp32: the output all-reduce reorders sums
  const TpGroup g = tp_group();
  for (int variant = 0; variant < 3; ++variant) {
    tp::LinearOptions o;
    o.sequence_parallel = variant == 1;
    o.input_is_parallel = variant != 2;
    auto [par, full] = build_pair<tp::RowParallelLinear>(2, g, [&](TpGroup group) {
      return std::make_shared<tp::RowParallelLinear>(8, 6, group, o);
    });
    const char* names[] = {"input_is_parallel", "sequence_parallel", "scattered input"};
    LayerCheck check{std::string("row ") + names[variant], kTol,
                     o.input_is_parallel ? Layout::kLastDim : Layout::kReplicated,
                     o.sequence_parallel ? Layout::kSequence : Layout::kReplicated};
    check_against_reference(
        check, *par, *full, [&](const at::Tensor& x) { return par->forward(x); },
        [](const Params& p, const at::Tensor& x) {
          return ref_linear(x, p.at("weight"), p.at("bias"));
        },
        input(8), g);
  }
}

// Pure: a multiple of 64 tp (tensor-core tiles), never less than the vocabulary.
TEST(TpLayers, PaddedVocabSize) {
  struct Case {
    int64_t vocab;
    int tp;
    int64_t padded;
  };
  for (const Case& c : {Case{50257, 1, 50304}, Case{50257, 2, 50304}, Case{50257, 4, 50432},
                        Case{50257, 8, 50688}, Case{257, 1, 320}, Case{257, 2, 384},
                        Case{257, 4, 512}, Case{64, 1, 64}, Case{64, 2, 128}, Case{1, 1, 64},
                        Case{32000, 8, 32256}, Case{128256, 8, 128512}, Case{0, 3, 0}}) {
    EXPECT_EQ(tp::padded_vocab_size(c.vocab, c.tp), c.padded) << c.vocab << " at tp " << c.tp;
  }
}

TEST(TpLayers, VocabParallelEmbeddingPadsTheVocabulary) {
  start();
  constexpr double kTol = 0;  // a lookup and a sum with zeros: exact
  const TpGroup g = tp_group();
  for (bool sp : {false, true}) {
    tp::EmbeddingOptions o;
    o.sequence_parallel = sp;
    auto [par, full] = build_pair<tp::VocabParallelEmbedding>(3, g, [&](TpGroup group) {
      return std::make_shared<tp::VocabParallelEmbedding>(10, 6, group, o);
    });
    EXPECT_EQ(par->padded_vocab_size(), 64 * g.size());
    const int64_t real = std::clamp<int64_t>(10 - par->vocab_start(), 0, 64);
    EXPECT_EQ(par->weight.size(0), 64);
    EXPECT_TRUE(at::equal(par->weight.narrow(0, real, 64 - real), at::zeros({64 - real, 6})));
    at::manual_seed(6);
    const at::Tensor ids = at::randint(0, 10, {kB, kS}, at::kLong);
    LayerCheck check{sp ? "embedding, sequence parallel" : "embedding", kTol, Layout::kReplicated,
                     sp ? Layout::kSequence : Layout::kReplicated};
    check_against_reference(
        check, *par, *full, [&](const at::Tensor& x) { return par->forward(x); },
        [](const Params& p, const at::Tensor& x) {
          return p.at("weight").index_select(0, x.reshape(-1)).view({kB, kS, -1});
        },
        ids, g);
  }
}

TEST(TpLayers, VocabParallelCrossEntropy) {
  start();
  constexpr double kTol = 1e-5;  // fp32 log-sum-exp assembled from per-rank partial sums
  const TpGroup g = tp_group();
  const int64_t vocab = 10, padded = tp::padded_vocab_size(vocab, g.size());
  at::manual_seed(7);
  at::Tensor labels = at::randint(0, vocab, {kB, kS}, at::kLong);
  labels[0][1] = -100;                                        // ignored
  const at::Tensor logits = at::randn({kB, kS, padded}) * 3;  // padding columns hold garbage
  torch::nn::Module none;
  check_against_reference(
      {"cross-entropy", kTol, Layout::kLastDim, Layout::kReplicated}, none, none,
      [&](const at::Tensor& x) { return tp::vocab_parallel_cross_entropy(x, labels, vocab, g); },
      [&](const Params&, const at::Tensor& x) {
        return at::cross_entropy_loss(x.narrow(-1, 0, vocab).reshape({-1, vocab}),
                                      labels.reshape(-1), {}, at::Reduction::None)
            .view({kB, kS});
      },
      logits, g);
  EXPECT_THROW(tp::check_labels(labels.fill_(vocab), vocab), ConfigError);
}

tp::TransformerOptions small_layer() {
  tp::TransformerOptions o;
  o.hidden_size = 16;
  o.num_attention_heads = 4;
  o.attention_head_size = 4;
  o.intermediate_size = 32;
  o.attention_dropout_prob = 0;
  o.hidden_dropout_prob = 0;
  return o;
}

RefLayer ref_of(const tp::TransformerOptions& o) {
  return {o.num_attention_heads, o.attention_head_size, o.hidden_size, o.activation,
          o.pre_layernorm,       o.post_layernorm,      o.causal,      o.layernorm_epsilon,
          o.rope ? o.rope_theta : 0.0};
}

// LLaMA's choices: RMSNorm, RoPE, SwiGLU, no biases.
void make_llama_style(tp::TransformerOptions& o) {
  o.rms_norm = true;
  o.rope = true;
  o.rope_theta = 500.0;  // a small base turns even the few positions tested noticeably
  o.activation = "swiglu";
  o.bias = false;
}

at::Tensor plus_bias(const at::Tensor& y, const at::Tensor& bias) {
  return bias.defined() ? y + bias : y;
}

at::Tensor padding_mask() {  // additive (B, 1, 1, S): the last key of sample 1 is dropped
  at::Tensor mask = at::zeros({kB, 1, 1, kS});
  mask[1][0][0][kS - 1] = -10000.0;
  return mask;
}

TEST(TpLayers, AttentionAndMlp) {
  start();
  constexpr double kTol = 1e-5;  // fp32; softmax of identical scores, sums reordered
  const TpGroup g = tp_group();
  tp::TransformerOptions o = small_layer();
  o.causal = true;
  const at::Tensor mask = padding_mask();
  tp::DropoutRng rng(g);
  for (bool rope : {false, true}) {  // with RoPE, LLaMA's bias-free projections too
    o.rope = rope;
    o.bias = !rope;
    auto [attn, attn_full] = build_pair<tp::ParallelAttention>(
        4, g, [&](TpGroup group) { return std::make_shared<tp::ParallelAttention>(o, group); });
    check_against_reference(
        {rope ? "attention (causal, padding mask, RoPE, no biases)"
              : "attention (causal, padding mask)",
         kTol},
        *attn, *attn_full,
        [&](const at::Tensor& x) {
          return plus_bias(attn->forward(x, mask, rng), attn->dense->bias);
        },
        [&](const Params& p, const at::Tensor& x) {
          return ref_attention(p, "", x, mask, ref_of(o));
        },
        input(16), g);
  }
  o.rope = false;
  for (const std::string activation : {"gelu", "gelu_tanh", "relu", "swiglu"}) {
    for (bool bias : {true, false}) {
      o.activation = activation;
      o.bias = bias;
      auto [mlp, mlp_full] = build_pair<tp::ParallelMLP>(
          5, g, [&](TpGroup group) { return std::make_shared<tp::ParallelMLP>(o, group); });
      check_against_reference(
          {"mlp " + activation + (bias ? "" : ", no biases"), kTol}, *mlp, *mlp_full,
          [&](const at::Tensor& x) { return plus_bias(mlp->forward(x), mlp->dense_4h_to_h->bias); },
          [&](const Params& p, const at::Tensor& x) { return ref_mlp(p, "", x, activation); },
          input(16), g);
    }
  }
}

TEST(TpLayers, RopeNeedsAnEvenHeadSizeAndAPositiveTheta) {
  start();
  const TpGroup g = tp_group();
  tp::TransformerOptions o = small_layer();
  make_llama_style(o);
  o.attention_head_size = 3;
  EXPECT_THROW(tp::ParallelAttention(o, g), ConfigError);
  o.attention_head_size = 4;
  o.rope_theta = 0;
  EXPECT_THROW(tp::ParallelAttention(o, g), ConfigError);
}

TEST(TpLayers, OutputProjectionsDrawFromOutputInit) {
  start();
  const TpGroup g = tp_group();
  tp::TransformerOptions o = small_layer();
  o.init = tp::Init::normal(1.0);
  o.output_init = tp::Init::normal(1e-3);
  at::manual_seed(8);
  tp::ParallelTransformerLayer layer(o, g);
  EXPECT_GT(layer.attention->qkv->weight.std().item<double>(), 0.5);
  EXPECT_GT(layer.mlp->dense_h_to_4h->weight.std().item<double>(), 0.5);
  EXPECT_LT(layer.attention->dense->weight.abs().max().item<double>(), 1e-2);
  EXPECT_LT(layer.mlp->dense_4h_to_h->weight.abs().max().item<double>(), 1e-2);
  EXPECT_EQ(layer.attention->dense->bias.abs().max().item<double>(), 0.0);  // normal: zeros
}

TEST(TpLayers, TransformerLayerEveryNormPlacementWithAndWithoutSequenceParallelism) {
  start();
  constexpr double kTol = 2e-5;  // fp32 through two LayerNorms and softmax
  const TpGroup g = tp_group();
  const at::Tensor mask = padding_mask();
  for (int norms = 0; norms < 4; ++norms) {
    for (bool sp : {false, true}) {
      tp::TransformerOptions o = small_layer();
      o.pre_layernorm = norms == 0 || norms == 3;
      o.post_layernorm = norms == 1;
      o.causal = norms != 1;
      o.activation = norms == 2 ? "swiglu" : "gelu";
      if (norms == 3) make_llama_style(o);
      o.sequence_parallel = sp;
      auto [layer, full] = build_pair<tp::ParallelTransformerLayer>(6, g, [&](TpGroup group) {
        return std::make_shared<tp::ParallelTransformerLayer>(o, group);
      });
      const char* placement[] = {"pre-LN", "post-LN", "no LN, swiglu",
                                 "pre-RMSNorm, RoPE, swiglu, no biases"};
      LayerCheck check{std::string("layer ") + placement[norms] + (sp ? ", sequence parallel" : ""),
                       kTol, sp ? Layout::kSequence : Layout::kReplicated,
                       sp ? Layout::kSequence : Layout::kReplicated};
      check_against_reference(
          check, *layer, *full, [&](const at::Tensor& x) { return layer->forward(x, mask); },
          [&](const Params& p, const at::Tensor& x) {
            return ref_layer(p, "", x, mask, ref_of(o));
          },
          input(16), g);
    }
  }
}

using Ops = std::map<std::string, comm::OpStats>;

TEST(TpLayers, CommunicationPerLayerEqualsTheFormula) {
  start();
  const TpGroup g = tp_group();
  const int t = g.size();
  comm::Communicator& c = process_group(CommGroup::TP_GROUP);
  auto when_parallel = [t](Ops ops) { return t == 1 ? Ops{} : ops; };
  // Runs f forward then backward, checking the collectives of each direction.
  auto expect = [&](const std::string& what, const std::function<at::Tensor()>& f, Ops fwd,
                    Ops bwd) {
    SCOPED_TRACE(what + " tp=" + std::to_string(t));
    c.reset_counters();
    const at::Tensor y = f();
    EXPECT_TRUE(counted(c.counters(), when_parallel(fwd))) << "forward";
    c.reset_counters();
    y.sum().backward();
    EXPECT_TRUE(counted(c.counters(), when_parallel(bwd))) << "backward";
  };
  const int64_t h = 16, bsh = kB * kS * h * 4;  // bytes of one (B, S, H) fp32 activation
  for (bool sp : {false, true}) {
    tp::TransformerOptions o = small_layer();
    o.pre_layernorm = true;
    o.post_layernorm = false;
    o.causal = true;
    o.sequence_parallel = sp;
    auto layer = std::make_shared<tp::ParallelTransformerLayer>(o, g);
    const at::Tensor x = local(input(h), sp ? Layout::kSequence : Layout::kReplicated, g)
                             .clone()
                             .requires_grad_(true);
    if (!sp) {  // two all-reduces of b*s*h each way
      expect("layer", [&] { return layer->forward(x, {}); }, {{"all_reduce", {2, 2 * bsh}}},
             {{"all_reduce", {2, 2 * bsh}}});
    } else {  // each all-reduce becomes all-gather (b*s*h/t in) + reduce-scatter (b*s*h in);
              // backward adds one all-reduce of the 6 replicated vectors (2 norms, 2 biases)
      expect("layer, sequence parallel", [&] { return layer->forward(x, {}); },
             {{"all_gather", {2, 2 * bsh / t}}, {"reduce_scatter", {2, 2 * bsh}}},
             {{"reduce_scatter", {2, 2 * bsh}},
              {"all_gather", {2, 2 * bsh / t}},
              {"all_reduce", {1, 6 * h * 4}}});
    }
  }
  {  // LLaMA-style, sequence parallel: the replicated parameters are the two RMSNorm weights
    tp::TransformerOptions o = small_layer();
    o.pre_layernorm = true;
    o.post_layernorm = false;
    o.causal = true;
    make_llama_style(o);
    o.sequence_parallel = true;
    auto layer = std::make_shared<tp::ParallelTransformerLayer>(o, g);
    const at::Tensor x = local(input(h), Layout::kSequence, g).clone().requires_grad_(true);
    expect("LLaMA-style layer, sequence parallel", [&] { return layer->forward(x, {}); },
           {{"all_gather", {2, 2 * bsh / t}}, {"reduce_scatter", {2, 2 * bsh}}},
           {{"reduce_scatter", {2, 2 * bsh}},
            {"all_gather", {2, 2 * bsh / t}},
            {"all_reduce", {1, 2 * h * 4}}});
  }
  const at::Tensor x = input(h).requires_grad_(true);
  auto column = std::make_shared<tp::ColumnParallelLinear>(h, 8, g);
  expect("column", [&] { return column->forward(x); }, {}, {{"all_reduce", {1, bsh}}});
  auto row = std::make_shared<tp::RowParallelLinear>(8 * t, h, g);
  const at::Tensor x_row = at::randn({kB, kS, 8}).requires_grad_(true);
  expect("row", [&] { return row->forward(x_row); }, {{"all_reduce", {1, bsh}}}, {});
  const at::Tensor ids = at::randint(0, 10, {kB, kS}, at::kLong);
  for (bool sp : {false, true}) {
    tp::EmbeddingOptions eo;
    eo.sequence_parallel = sp;
    auto emb = std::make_shared<tp::VocabParallelEmbedding>(10, h, g, eo);
    if (!sp) expect("embedding", [&] { return emb->forward(ids); }, {{"all_reduce", {1, bsh}}}, {});
    if (sp) {
      expect("embedding, sequence parallel", [&] { return emb->forward(ids); },
             {{"reduce_scatter", {1, bsh}}}, {{"all_gather", {1, bsh / t}}});
    }
  }
  const at::Tensor logits = at::randn({kB, kS, 4}).requires_grad_(true);
  const at::Tensor labels = at::zeros({kB, kS}, at::kLong);
  // max (b*s values), then sum-exp and target logit together (2*b*s); nothing backward
  expect("cross-entropy", [&] { return tp::vocab_parallel_cross_entropy(logits, labels, 4, g); },
         {{"all_reduce", {2, 3 * kB * kS * 4}}}, {});
}

TEST(TpLayers, DropoutFollowsTheRngRule) {
  start();
  const TpGroup g = tp_group();
  // Streams: the replicated seed is the same on every rank, the sharded ones all differ.
  at::manual_seed(9);
  tp::DropoutRng rng(g);
  const at::Tensor seeds =
      tp::all_gather_along(
          at::tensor({static_cast<int64_t>(rng.seed()), static_cast<int64_t>(rng.sharded_seed())}),
          0, g)
          .view({g.size(), 2});
  EXPECT_EQ(std::get<0>(at::_unique(seeds.select(1, 0))).numel(), 1);
  EXPECT_EQ(std::get<0>(at::_unique(seeds.select(1, 1))).numel(), g.size());
  const at::Tensor ones = at::ones({256});
  auto gathered = [&](const at::Tensor& y) {
    return tp::all_gather_along(y, 0, g).view({g.size(), -1});
  };
  const at::Tensor same = gathered(rng.dropout(ones, 0.5, /*sharded=*/false, true));
  const at::Tensor different = gathered(rng.dropout(ones, 0.5, /*sharded=*/true, true));
  for (int r = 1; r < g.size(); ++r) {
    EXPECT_TRUE(at::equal(same[r], same[0])) << "replicated stream differs on rank " << r;
    EXPECT_FALSE(at::equal(different[r], different[0])) << "sharded stream repeats on rank " << r;
  }
  // A layer with dropout and replicated activations keeps its outputs identical on the group.
  tp::TransformerOptions o = small_layer();
  o.hidden_dropout_prob = 0.5;
  o.attention_dropout_prob = 0.5;
  o.pre_layernorm = true;
  o.post_layernorm = false;
  at::manual_seed(10);
  auto layer = std::make_shared<tp::ParallelTransformerLayer>(o, g);
  const at::Tensor y = layer->forward(input(16), {});
  const at::Tensor all = gathered(y.reshape(-1));
  for (int r = 1; r < g.size(); ++r) EXPECT_TRUE(at::equal(all[r], all[0])) << "rank " << r;
  layer->eval();
  EXPECT_FALSE(at::allclose(y, layer->forward(input(16), {}))) << "dropout did nothing";
}

// A kernel that draws from the default generator only (SDPA's dropout on a GPU) draws from the
// module's stream through with_stream: each call advances the stream, the default generator is
// left as it was, and the stream's saved state replays the same mask (activation
// checkpointing's recompute). Shown here with at::dropout on the host.
TEST(TpLayers, WithStreamLendsTheStreamToTheDefaultGenerator) {
  start();
  const TpGroup g = tp_group();
  at::manual_seed(5);
  tp::DropoutRng rng(g);
  const at::Tensor ones = at::ones({512});
  const auto draw = [&] { return at::dropout(ones, 0.5, /*train=*/true); };
  const at::Tensor default_before = at::detail::getDefaultCPUGenerator().get_state();
  const auto saved = rng.state();
  const at::Tensor first = rng.with_stream(/*sharded=*/true, at::kCPU, draw);
  const at::Tensor second = rng.with_stream(/*sharded=*/true, at::kCPU, draw);
  EXPECT_TRUE(at::equal(at::detail::getDefaultCPUGenerator().get_state(), default_before));
  EXPECT_FALSE(at::equal(first, second)) << "the stream did not advance";
  EXPECT_FALSE(at::equal(first, draw())) << "the default generator drew the stream's numbers";
  rng.load_state(saved);
  EXPECT_TRUE(at::equal(rng.with_stream(/*sharded=*/true, at::kCPU, draw), first));
  // The sharded stream differs on every rank of the group.
  const at::Tensor all = tp::all_gather_along(first, 0, g).view({g.size(), -1});
  for (int r = 1; r < g.size(); ++r) EXPECT_FALSE(at::equal(all[r], all[0])) << "rank " << r;
}

}  // namespace
}  // namespace smp::testing
