// Direct gradient tests of the layouts whose gradient paths differ most from plain data
// parallelism (runs on 2 and 4 ranks): smp's tiny GPT trained 3 steps with plain SGD under each
// layout moves every parameter, per parameter and per TP shard, as a one-process run of the
// same model on the whole batch with torch::optim::SGD does. SGD without momentum, weight decay
// or clipping moves each parameter by -lr times the sum of its gradients, so comparing the
// moves compares the gradients: one scaled by a constant, reduced over the wrong group, landing
// on the wrong shard or missing a microbatch shows (Adam's normalisation and clipping would hide
// a constant factor; the loss curves of loss_parity_test would hide a wrong shard).
//   2 ranks: sdp2 with delayed parameter initialisation.
//   4 ranks: tp2 x sdp2, tp2 x sdp2 with delayed initialisation, and pp2 x dp2 with ZeRO-1
//            under the 1F1B and the zero-bubble schedules; with pp2 the GPT's head holds a tied
//            copy of the embedding on the last stage, whose gradient must meet the embedding's.
// Tensor parallelism runs SMP's default (not prescaled) batch flow, as smp-train does: each rank
// of the data-parallel group its own rows, the model gathering the TP group's.
#include <gtest/gtest.h>
#include <torch/optim/sgd.h>

#include <set>

#include "data_parallel/harness.h"
#include "smp/models/gpt.h"
#include "smp/models/model_config.h"
#include "smp/tensor_parallel/init.h"

namespace smp {
namespace {

using smp::testing::close;

constexpr int kSteps = 3;
// Large for SGD, so that the parameters that move least, the norms' weights (about 1), move
// 3.4e-4 in 3 steps: far above the float32 spacing of their values (6e-8 to 1.2e-7).
constexpr double kLr = 1.0;
constexpr int64_t kGlobalBatch = 8;
constexpr int64_t kSeqLen = 16;
constexpr uint64_t kSeed = 5;
// Each parameter's move within kTol of the reference's, relative to the move's largest entry.
// fp32 and the same operations: only the order of sums differs (the data-parallel average, the
// microbatches' accumulation, TP's partial products). The largest error seen over these layouts
// is 1.5e-6 of a move; a norm weight's final value rounded one float32 step the other way would
// be 3.5e-4 of its move, so 1e-3 allows that while a gradient 0.1% off fails.
constexpr double kTol = 1e-3;

// The tiny GPT (vocabulary 257, that of the byte-level tokenizer: padded to 320 at tp 1, 384 at
// tp 2; the padding rows must not move), 4 blocks.
models::ModelConfig tiny() {
  models::ModelConfig c = models::named_model("tiny");
  c.num_layers = 4;
  c.hidden = 32;
  c.num_heads = 4;
  c.ffn_hidden = 128;
  c.max_seq_len = kSeqLen;
  return c;
}

// Step `it`'s whole batch: next-token prediction on random tokens (the same on every rank).
std::pair<at::Tensor, at::Tensor> whole_batch(int it) {
  torch::manual_seed(100 + it);
  const at::Tensor tokens =
      torch::randint(tiny().vocab_size, {kGlobalBatch, kSeqLen + 1}, at::kLong);
  return {tokens.narrow(1, 0, kSeqLen), tokens.narrow(1, 1, kSeqLen)};
}

// Every distinct parameter tensor of the layers (a tied head's is the embedding's), by name.
std::map<std::string, at::Tensor> distinct_parameters(const std::vector<Layer>& layers) {
  std::map<std::string, at::Tensor> out;
  std::set<const void*> seen;
  for (const Layer& layer : layers) {
    for (size_t j = 0; j < layer.parameters.size(); ++j) {
      if (!seen.insert(layer.parameters[j].unsafeGetTensorImpl()).second) continue;
      out[layer.name + "." + layer.parameter_names[j]] = layer.parameters[j];
    }
  }
  return out;
}

std::unique_ptr<torch::optim::SGD> sgd(const std::map<std::string, at::Tensor>& params) {
  std::vector<at::Tensor> list;
  for (const auto& [name, p] : params) list.push_back(p);
  return std::make_unique<torch::optim::SGD>(list, torch::optim::SGDOptions(kLr));
}

// One process, no TP, the whole batch, plain autograd: each parameter before and after kSteps
// steps.
struct Reference {
  std::map<std::string, at::Tensor> initial, final;
};
const Reference& reference() {
  static const Reference ref = [] {
    at::manual_seed(kSeed);
    const models::Model m =
        models::build_model(tiny(), tp::TpGroup(), /*separate_tied_head=*/false);
    Reference r;
    r.final = distinct_parameters(m.layers);
    for (const auto& [name, p] : r.final) r.initial[name] = p.detach().clone();
    auto opt = sgd(r.final);
    for (int it = 0; it < kSteps; ++it) {
      opt->zero_grad();
      auto [x, y] = whole_batch(it);
      Values h = {x};
      for (const Layer& layer : m.layers) h = layer.forward(h);
      m.loss(h, {y})[0].backward();
      opt->step();
    }
    return r;
  }();
  return ref;
}

// This rank's part of a reference tensor (the one-process model's, its vocabulary padded for
// tp 1): its TP shard, of the whole's spec.size real rows padded with zero rows to tp times
// `local`'s (as the vocabulary is), or the whole.
at::Tensor expected_shard(const at::Tensor& ref, const ShardSpec& spec, const at::Tensor& local,
                          const tp::TpGroup& g) {
  if (!spec.sharded()) return ref;
  const at::Tensor whole = ref.narrow(spec.dim, 0, spec.size);
  std::vector<int64_t> pad_shape = whole.sizes().vec();
  pad_shape[spec.dim] = local.size(spec.dim) * g.size() - spec.size;
  const at::Tensor padded_whole = at::cat({whole, at::zeros(pad_shape, whole.options())}, spec.dim);
  return tp::shard_of(padded_whole, spec.dim, g);
}

// Trains the tiny GPT under `smp_json` as smp-train builds it, then compares the move of every
// parameter this rank holds with the reference's, and checks the pipeline stages together held
// them all.
void expect_layout_matches_one_process(const std::string& layout, const std::string& smp_json) {
  smp::testing::reinit(smp_json);
  std::shared_ptr<dp::DelayedSlices> delayed;
  std::function<void(Layer&)> on_layer;
  if (config().delayed_parameter_initialization) {
    const int s = config().sharded_data_parallel_degree;
    delayed = std::make_shared<dp::DelayedSlices>(s, rdp_rank() % s);
    on_layer = [delayed](Layer& layer) { delayed->take(layer); };
  }
  at::manual_seed(kSeed);
  const tp::TpGroup g(process_group(CommGroup::TP_GROUP));
  models::Model m = models::build_model(tiny(), g, /*separate_tied_head=*/pp_size() > 1, on_layer);
  m.set_prescaled_batch(false);
  const std::map<std::string, std::string> tied_copies = m.tied_copies;
  DistributedModelOptions options;
  options.tied_copies = tied_copies;
  options.delayed_slices = delayed;
  auto opt_params = distinct_parameters(m.layers);
  DistributedModel model(std::move(m.layers), options);
  // The model holds the only reference to the slices from here; partitioning hands them to the
  // shards, after which they must go (they are this rank's share of the whole model).
  const std::weak_ptr<dp::DelayedSlices> slices = delayed;
  delayed.reset();
  on_layer = nullptr;
  options.delayed_slices.reset();
  DistributedOptimizer opt(model, sgd(opt_params));
  const LossFn loss = [&m](const Values& out, const Values& y) { return m.loss(out, y); };
  const int64_t rows = kGlobalBatch / dp_size();  // each data-parallel rank its own rows
  for (int it = 0; it < kSteps; ++it) {
    opt.zero_grad();
    auto [x, y] = whole_batch(it);
    step(model, {x.narrow(0, dp_rank() * rows, rows)}, {y.narrow(0, dp_rank() * rows, rows)},
         loss);
    opt.step();
  }
  EXPECT_TRUE(slices.expired()) << layout << ": the slices taken at build time outlive partitioning";

  const Reference& ref = reference();
  std::set<std::string> compared;  // reference names
  model.gather_parameters();
  for (const auto& p : model.local_parameter_info()) {
    const auto tie = tied_copies.find(p.name);
    const std::string original = tie == tied_copies.end() ? p.name : tie->second;
    ASSERT_TRUE(ref.final.count(original)) << layout << ": " << p.name << " not in the reference";
    const at::Tensor initial = expected_shard(ref.initial.at(original), p.tp_shard, p.tensor, g);
    const at::Tensor want =
        expected_shard(ref.final.at(original), p.tp_shard, p.tensor, g) - initial;
    EXPECT_TRUE(close(p.tensor - initial, want, kTol))
        << layout << ": the move of parameter " << p.name << " (tp rank " << tp_rank()
        << ", pp rank " << pp_rank() << ", dp rank " << dp_rank() << ")";
    compared.insert(original);
  }
  model.release_parameters(false);
  std::string mine;
  for (const std::string& name : compared) mine += name + "\n";
  std::set<std::string> held;
  for (const std::string& names : allgather(mine, CommGroup::PP_GROUP)) {
    for (size_t at = 0, end; (end = names.find('\n', at)) != std::string::npos; at = end + 1) {
      held.insert(names.substr(at, end - at));
    }
  }
  for (const auto& [name, t] : ref.final) {
    EXPECT_TRUE(held.count(name)) << layout << ": no stage holds " << name;
  }
}

// sdp_gradient_clipping: SMP's optimizer clips by itself under sharded data parallelism, at 1.0
// by default; out of reach here, as the reference does not clip.
const std::string kSdpNoClip = R"("sdp_gradient_clipping": 1e9, )";

TEST(GradientParity, Sdp2WithDelayedInitMatchesOneProcess) {
  if (comm::world_size() != 2) GTEST_SKIP() << "a layout for 2 ranks";
  expect_layout_matches_one_process(
      "sdp2 delayed init", kSdpNoClip + R"("ddp": true, "sharded_data_parallel_degree": 2,
          "sdp_param_persistence_threshold": 0, "delayed_parameter_initialization": true,
          "microbatches": 2)");
}

TEST(GradientParity, Tp2Sdp2MatchesOneProcess) {
  if (comm::world_size() != 4) GTEST_SKIP() << "a layout for 4 ranks";
  expect_layout_matches_one_process(
      "tp2 x sdp2", kSdpNoClip + R"("ddp": true, "tensor_parallel_degree": 2,
          "sharded_data_parallel_degree": 2, "sdp_param_persistence_threshold": 0,
          "microbatches": 2)");
}

TEST(GradientParity, Tp2Sdp2WithDelayedInitMatchesOneProcess) {
  if (comm::world_size() != 4) GTEST_SKIP() << "a layout for 4 ranks";
  expect_layout_matches_one_process(
      "tp2 x sdp2 delayed init", kSdpNoClip + R"("ddp": true, "tensor_parallel_degree": 2,
          "sharded_data_parallel_degree": 2, "sdp_param_persistence_threshold": 0,
          "delayed_parameter_initialization": true, "microbatches": 2)");
}

TEST(GradientParity, Pp2Dp2Zero1TiedHeadMatchesOneProcess) {
  if (comm::world_size() != 4) GTEST_SKIP() << "a layout for 4 ranks";
  expect_layout_matches_one_process(
      "pp2 x dp2 ZeRO-1 tied head", R"("ddp": true, "pipeline_parallel_degree": 2,
          "microbatches": 2, "shard_optimizer_state": true)");
}

TEST(GradientParity, Pp2Dp2Zero1ZeroBubbleMatchesOneProcess) {
  if (comm::world_size() != 4) GTEST_SKIP() << "a layout for 4 ranks";
  expect_layout_matches_one_process(
      "pp2 x dp2 ZeRO-1 zero-bubble", R"("ddp": true, "pipeline_parallel_degree": 2,
          "microbatches": 2, "shard_optimizer_state": true, "pipeline": "zero_bubble")");
}

}  // namespace
}  // namespace smp
