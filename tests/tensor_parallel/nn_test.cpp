// SMP's smp::nn modules against plain references for tp = the world size (1, 2, 4), under
// optimize "speed" (replicated LayerNorm) and "memory" (sequence parallelism), in the
// prescaled batch flow and the non-prescaled one (TP ranks with different samples); init
// independent of tp; the vocabulary padding says nothing; bad input naming both numbers.
#include "smp/tensor_parallel/nn.h"

#include <gtest/gtest.h>

#include "tp_testing.h"

namespace smp::testing {
namespace {

constexpr int64_t kB = 2, kS = 8, kH = 16, kVocab = 49;  // padded to 64 tp

void start(const std::string& optimize, bool prescaled = true) {
  reinit("\"tensor_parallel_degree\": " + std::to_string(comm::world_size()) +
         ", \"optimize\": \"" + optimize + "\", \"prescaled_batch\": " +
         (prescaled ? "true" : "false"));
}

at::Tensor hidden_input() {
  at::manual_seed(5);
  return at::randn({kB, kS, kH});
}

nn::DistributedTransformerOptions small(bool pre, bool post) {
  return nn::DistributedTransformerOptions()
      .num_layers(2)
      .num_attention_heads(4)
      .attention_head_size(4)
      .hidden_size(kH)
      .intermediate_size(32)
      .attention_dropout_prob(0)
      .hidden_dropout_prob(0)
      .pre_layernorm(pre)
      .post_layernorm(post)
      .causal_mask_size(kS)
      .vocab_size(kVocab)
      .num_positions(kS);
}

RefLayer ref_of(bool pre, bool post) { return {4, 4, kH, "gelu", pre, post, true, 1e-5}; }

TEST(TpNn, DistributedLinearAndEmbedding) {
  start("speed");
  constexpr double kTol = 1e-5;  // fp32; the embedding is exact
  const TpGroup g = tp_group();
  auto [linear, linear_full] = build_pair<nn::DistributedLinear>(1, g, [](TpGroup group) {
    return std::make_shared<nn::DistributedLinear>(kH, 8,
                                                   nn::DistributedLinearOptions().tp_group(group));
  });
  check_against_reference(
      {"DistributedLinear", kTol}, *linear, *linear_full,
      [&](const at::Tensor& x) { return linear->forward(x); },
      [](const Params& p, const at::Tensor& x) {
        return ref_linear(x, p.at("weight"), p.at("bias"));
      },
      hidden_input(), g);
  at::manual_seed(6);
  const at::Tensor ids = at::randint(0, 10, {kB, kS}, at::kLong);
  for (bool skip : {false, true}) {
    auto [emb, emb_full] = build_pair<nn::DistributedEmbedding>(2, g, [&](TpGroup group) {
      return std::make_shared<nn::DistributedEmbedding>(
          10, 8,
          nn::DistributedEmbeddingOptions().padding_idx(0).skip_allgather(skip).tp_group(group));
    });
    EXPECT_TRUE(at::equal(emb_full->weight[0], at::zeros({8}))) << "padding_idx row";
    check_against_reference(
        {skip ? "DistributedEmbedding, skip_allgather" : "DistributedEmbedding", kTol,
         Layout::kReplicated, skip ? Layout::kLastDim : Layout::kReplicated},
        *emb, *emb_full, [&](const at::Tensor& x) { return emb->forward(x); },
        [](const Params& p, const at::Tensor& x) {
          // padding_idx: the row gets no gradient
          at::Tensor w = p.at("weight");
          return at::embedding(w, x, 0).view({kB, kS, -1});
        },
        ids, g);
  }
}

TEST(TpNn, DistributedTransformerLayerAndStack) {
  constexpr double kTol = 2e-5;  // fp32 through LayerNorms and softmax
  for (const std::string optimize : {"speed", "memory"}) {
    start(optimize);
    const TpGroup g = tp_group();
    const at::Tensor x = hidden_input();
    for (auto [pre, post] : {std::pair{false, true}, std::pair{true, false}}) {
      auto [layer, full] = build_pair<nn::DistributedTransformerLayer>(3, g, [&](TpGroup group) {
        return std::make_shared<nn::DistributedTransformerLayer>(small(pre, post).tp_group(group));
      });
      EXPECT_EQ(layer->options().sequence_parallel, optimize == "memory" && g.size() > 1);
      check_against_reference(
          {"DistributedTransformerLayer " + optimize + (pre ? " pre-LN" : " post-LN"), kTol},
          *layer, *full, [&](const at::Tensor& in) { return layer->forward(Values{in})[0]; },
          [&](const Params& p, const at::Tensor& in) {
            return ref_layer(p, "", in, {}, ref_of(pre, post));
          },
          x, g);
    }
    auto [stack, full] = build_pair<nn::DistributedTransformer>(4, g, [&](TpGroup group) {
      return std::make_shared<nn::DistributedTransformer>(small(true, true).tp_group(group));
    });
    check_against_reference(
        {"DistributedTransformer (2 layers, final norm) " + optimize, kTol}, *stack, *full,
        [&](const at::Tensor& in) { return stack->forward(Values{in})[0]; },
        [&](const Params& p, const at::Tensor& in) {
          at::Tensor h = in;
          for (int i = 0; i < 2; ++i)
            h = ref_layer(p, "seq_layers." + std::to_string(i) + ".", h, {}, ref_of(true, true));
          return ref_norm(p, "final_layernorm", h, 1e-5);
        },
        x, g);
  }
}

TEST(TpNn, DistributedTransformerLMHeadLossAndGradients) {
  constexpr double kTol = 2e-5;  // fp32; the loss goes through the vocab-parallel log-sum-exp
  for (const std::string optimize : {"speed", "memory"}) {
    start(optimize);
    const TpGroup g = tp_group();
    at::manual_seed(7);
    const at::Tensor ids = at::randint(0, kVocab, {kB, kS}, at::kLong);
    const at::Tensor labels = at::randint(0, kVocab, {kB, kS}, at::kLong);
    at::Tensor keep = at::ones({kB, kS});
    keep[1][kS - 1] = 0;
    auto [lm, full] = build_pair<nn::DistributedTransformerLMHead>(8, g, [&](TpGroup group) {
      return std::make_shared<nn::DistributedTransformerLMHead>(small(true, true).tp_group(group));
    });
    // The default generator moved the same way whatever tp: later draws agree.
    check_against_reference(
        {"DistributedTransformerLMHead " + optimize, kTol}, *lm, *full,
        [&](const at::Tensor& x) {
          return lm->forward({x, keep, {}, {}, labels})[0];
        },
        [&](const Params& p, const at::Tensor& x) {
          return ref_lm_loss(p, x, keep, labels, kVocab, 2, ref_of(true, true));
        },
        ids, g);
    {  // without labels: this rank's slice, the padding -inf (never an argmax); at tp 1, (B, S, V)
      at::NoGradGuard no_grad;
      const at::Tensor whole = full->forward({ids, keep})[0];
      ASSERT_EQ(whole.size(-1), kVocab);
      const at::Tensor gathered = tp::gather_from_tp(lm->forward({ids, keep})[0], g);
      EXPECT_TRUE(close(gathered.narrow(-1, 0, kVocab), whole, kTol)) << "logits";
      const at::Tensor padding = gathered.narrow(-1, kVocab, gathered.size(-1) - kVocab);
      EXPECT_TRUE(padding.isneginf().all().item<bool>()) << "padding logits";
    }
  }
}

// SMP's default flow: rank r holds samples [r B, (r + 1) B) of the reference's batch; every
// module gathers the group's batch and returns rank r its own rows (Layout::kBatch).
TEST(TpNn, NonPrescaledFlowMatchesOneProcessOnTheGroupsBatch) {
  constexpr double kTol = 2e-5;
  for (const std::string optimize : {"speed", "memory"}) {
    start(optimize, /*prescaled=*/false);
    const TpGroup g = tp_group();
    const int64_t t = g.size();
    at::manual_seed(21);
    const at::Tensor x = at::randn({kB * t, kS, kH});  // the group's batch
    const LayerCheck rows = {"", kTol, Layout::kBatch, Layout::kBatch};
    auto named = [&](const std::string& what) {
      LayerCheck c = rows;
      c.what = what + " " + optimize + ", not prescaled";
      return c;
    };
    auto [linear, linear_full] = build_pair<nn::DistributedLinear>(1, g, [](TpGroup group) {
      return std::make_shared<nn::DistributedLinear>(kH, 8,
                                                     nn::DistributedLinearOptions().tp_group(group));
    });
    check_against_reference(
        named("DistributedLinear"), *linear, *linear_full,
        [&](const at::Tensor& in) { return linear->forward(in); },
        [](const Params& p, const at::Tensor& in) {
          return ref_linear(in, p.at("weight"), p.at("bias"));
        },
        x, g);
    const at::Tensor ids = at::randint(0, 10, {kB * t, kS}, at::kLong);
    auto [emb, emb_full] = build_pair<nn::DistributedEmbedding>(2, g, [&](TpGroup group) {
      return std::make_shared<nn::DistributedEmbedding>(
          10, 8, nn::DistributedEmbeddingOptions().tp_group(group));
    });
    if (t > 1) {  // its own rows of its own columns would be no use to anyone
      EXPECT_THROW(nn::DistributedEmbedding(10, 8, nn::DistributedEmbeddingOptions().skip_allgather(true)),
                   ConfigError);
    }
    check_against_reference(
        named("DistributedEmbedding"), *emb, *emb_full,
        [&](const at::Tensor& in) { return emb->forward(in); },
        [](const Params& p, const at::Tensor& in) { return at::embedding(p.at("weight"), in); },
        ids, g);
    auto [stack, stack_full] = build_pair<nn::DistributedTransformer>(4, g, [&](TpGroup group) {
      return std::make_shared<nn::DistributedTransformer>(small(true, true).tp_group(group));
    });
    check_against_reference(
        named("DistributedTransformer"), *stack, *stack_full,
        [&](const at::Tensor& in) { return stack->forward(Values{in})[0]; },
        [&](const Params& p, const at::Tensor& in) {
          at::Tensor h = in;
          for (int i = 0; i < 2; ++i)
            h = ref_layer(p, "seq_layers." + std::to_string(i) + ".", h, {}, ref_of(true, true));
          return ref_norm(p, "final_layernorm", h, 1e-5);
        },
        x, g);
    // skip_scatter_and_merge: the input is the group's batch already, the output stays so.
    auto [inner, inner_full] = build_pair<nn::DistributedTransformerLayer>(3, g, [&](TpGroup group) {
      return std::make_shared<nn::DistributedTransformerLayer>(
          small(false, true).tp_group(group).skip_scatter_and_merge(true));
    });
    check_against_reference(
        {"DistributedTransformerLayer " + optimize + ", skip_scatter_and_merge", kTol}, *inner,
        *inner_full, [&](const at::Tensor& in) { return inner->forward(Values{in})[0]; },
        [&](const Params& p, const at::Tensor& in) {
          return ref_layer(p, "", in, {}, ref_of(false, true));
        },
        x, g);

    // The LM head's loss is this rank's own samples' mean; its gradients are those of the
    // group's mean loss, the reference's on the whole batch.
    SCOPED_TRACE("DistributedTransformerLMHead " + optimize + ", not prescaled");
    const at::Tensor tokens = at::randint(0, kVocab, {kB * t, kS}, at::kLong);
    const at::Tensor labels = at::randint(0, kVocab, {kB * t, kS}, at::kLong);
    const at::Tensor keep = at::ones({kB * t, kS});
    auto [lm, full] = build_pair<nn::DistributedTransformerLMHead>(8, g, [&](TpGroup group) {
      return std::make_shared<nn::DistributedTransformerLMHead>(small(true, true).tp_group(group));
    });
    Params ref = leaves_of(*full);
    ref_lm_loss(ref, tokens, keep, labels, kVocab, 2, ref_of(true, true)).backward();
    auto mine = [&](const at::Tensor& whole) { return tp::own_slice(whole, 0, g); };
    const at::Tensor own_ref = ref_lm_loss(ref, mine(tokens), mine(keep), mine(labels), kVocab, 2,
                                           ref_of(true, true));
    const at::Tensor loss = lm->forward({mine(tokens), mine(keep), {}, {}, mine(labels)})[0];
    EXPECT_TRUE(close(loss, own_ref, kTol)) << "this rank's loss";
    {  // without labels: this rank's samples' logits over the whole vocabulary
      at::NoGradGuard no_grad;
      EXPECT_TRUE(close(lm->forward({mine(tokens), mine(keep)})[0],
                        full->forward({mine(tokens), mine(keep)})[0], kTol))
          << "this rank's logits";
    }
    loss.backward();
    const auto dims = tp::tp_shard_dims(*lm);
    for (const auto& p : lm->named_parameters()) {
      const at::Tensor want =
          expected_shard(ref.at(p.key()).grad(), dims.at(p.key()), p.value(), g);
      EXPECT_TRUE(close(p.value().grad(), want, kTol)) << "grad of " << p.key();
    }
  }
}

TEST(TpNn, InitIsIndependentOfTpAndPaddingIsSilent) {
  start("speed");
  const TpGroup g = tp_group();
  // Same seed, any tp: the generator ends in the same state (shards themselves are checked
  // with torch::equal in every check_against_reference).
  at::manual_seed(11);
  auto parallel = std::make_shared<nn::DistributedTransformerLMHead>(small(true, true).tp_group(g));
  const at::Tensor after_parallel = at::randn({4});
  at::manual_seed(11);
  auto full =
      std::make_shared<nn::DistributedTransformerLMHead>(small(true, true).tp_group(TpGroup()));
  EXPECT_TRUE(at::equal(after_parallel, at::randn({4})));

  ::testing::internal::CaptureStdout();
  auto emb = std::make_shared<tp::VocabParallelEmbedding>(kVocab, 4, g);
  const std::string log = ::testing::internal::GetCapturedStdout();
  EXPECT_EQ(emb->padded_vocab_size(), tp::padded_vocab_size(kVocab, g.size()));
  EXPECT_EQ(log, "");  // padding is the rule (50257 -> 50304 at tp 1): nothing to say each run
}

TEST(TpNn, LmCommunicationEqualsTheFormula) {
  using Ops = std::map<std::string, comm::OpStats>;
  for (const std::string optimize : {"speed", "memory"}) {
    start(optimize);
    const TpGroup g = tp_group();
    const int64_t t = g.size(), layers = 2, bsh = kB * kS * kH * 4, bs = kB * kS * 4;
    SCOPED_TRACE(optimize + " tp=" + std::to_string(t));
    comm::Communicator& c = process_group(CommGroup::TP_GROUP);
    at::manual_seed(7);
    const at::Tensor ids = at::randint(0, kVocab, {kB, kS}, at::kLong);
    auto lm = std::make_shared<nn::DistributedTransformerLMHead>(small(true, true));
    c.reset_counters();
    const at::Tensor loss = lm->forward({ids, {}, {}, {}, ids})[0];
    Ops fwd, bwd;
    if (t > 1 && optimize == "speed") {
      // embedding + 2 per layer of b*s*h; cross-entropy: b*s then 2*b*s
      fwd = {{"all_reduce", {1 + 2 * layers + 2, (1 + 2 * layers) * bsh + 3 * bs}}};
      // 2 per layer, and the head's input
      bwd = {{"all_reduce", {2 * layers + 1, (2 * layers + 1) * bsh}}};
    } else if (t > 1) {
      fwd = {{"reduce_scatter", {1 + 2 * layers, (1 + 2 * layers) * bsh}},  // embedding, layers
             {"all_gather", {2 * layers + 1, (2 * layers + 1) * bsh / t}},  // layers, head
             {"all_reduce", {2, 3 * bs}}};                                  // cross-entropy
      // layers' replicated grads (6h each), final norm (2h), position table (positions * h)
      bwd = {{"reduce_scatter", {2 * layers + 1, (2 * layers + 1) * bsh}},
             {"all_gather", {2 * layers + 1, (2 * layers + 1) * bsh / t}},
             {"all_reduce", {layers + 2, (layers * 6 * kH + 2 * kH + kS * kH) * 4}}};
    }
    EXPECT_TRUE(counted(c.counters(), fwd)) << "forward";
    c.reset_counters();
    loss.backward();
    EXPECT_TRUE(counted(c.counters(), bwd)) << "backward";
  }
}

// Expects a ConfigError whose message holds every one of `parts`.
template <class F>
void expect_error(F&& f, const std::vector<std::string>& parts) {
  try {
    f();
    ADD_FAILURE() << "expected ConfigError mentioning " << parts[0];
  } catch (const ConfigError& e) {
    for (const std::string& part : parts) {
      EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
    }
  }
}

TEST(TpNn, BadInputNamesBothNumbers) {
  start("memory");
  const TpGroup g = tp_group();
  const std::string tp = "tensor_parallel_degree (" + std::to_string(g.size()) + ")";
  auto lm = std::make_shared<nn::DistributedTransformerLMHead>(small(true, true));
  expect_error(
      [&] {
        lm->forward({at::zeros({1, kS + 1}, at::kLong)});
      },
      {"sequence length " + std::to_string(kS + 1), "num_positions (" + std::to_string(kS) + ")"});
  expect_error(
      [&] {
        lm->forward(
            {at::zeros({1, kS}, at::kLong), {}, {}, {}, at::full({1, kS}, kVocab, at::kLong)});
      },
      {"label " + std::to_string(kVocab), "vocab_size is " + std::to_string(kVocab)});
  expect_error(
      [] { nn::DistributedEmbedding(10, 8, nn::DistributedEmbeddingOptions().max_norm(1.0)); },
      {"max_norm"});
  expect_error(
      [] { nn::DistributedTransformerLayer(small(true, false).add_cross_attention(true)); },
      {"add_cross_attention"});
  expect_error([] { nn::DistributedTransformerLayer(small(true, false).activation("tanh")); },
               {"activation", "tanh", "gelu"});
  if (g.size() == 1) return;
  const int t = g.size();
  expect_error(
      [&] { nn::DistributedTransformerLayer(small(true, false).num_attention_heads(2 * t + 1)); },
      {"num_attention_heads (" + std::to_string(2 * t + 1) + ")", tp});
  expect_error([&] { nn::DistributedEmbedding(10, 2 * t + 1); },
               {"embedding_dim (" + std::to_string(2 * t + 1) + ")", tp});
  expect_error([&] { nn::DistributedLinear(kH, 2 * t + 1); },
               {"out_features (" + std::to_string(2 * t + 1) + ")", tp});
  // Sequence parallelism needs the sequence to divide by tp.
  auto layer = std::make_shared<nn::DistributedTransformerLayer>(small(true, false));
  expect_error(
      [&] {
        layer->forward(Values{at::zeros({1, 2 * t + 1, kH})});
      },
      {"(" + std::to_string(2 * t + 1) + ")", tp});
}

}  // namespace
}  // namespace smp::testing
