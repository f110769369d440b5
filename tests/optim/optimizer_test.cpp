// DistributedOptimizer (runs on 1 and 2 ranks): SGD/Adam/AdamW against torch::optim on the same
// model and data (two parameter groups, every option); fp16 loss scaling with an injected inf;
// bf16 against fp32 over 50 steps; state dicts (partial and per-parameter, resharded);
// bad input.
#include <gtest/gtest.h>
#include <torch/optim/adam.h>
#include <torch/optim/adamw.h>
#include <torch/optim/rmsprop.h>
#include <torch/optim/sgd.h>

#include <cstdio>
#include <fstream>
#include <limits>
#include <set>

#include "../data_parallel/harness.h"
#include "smp/train/host_syncs.h"

namespace smp {
namespace {

using namespace smp::testing;

// Two parameter groups: the first four layers' parameters at the options given, the rest at
// half the learning rate.
template <typename Opt, typename Options>
OptimizerFactory two_groups(Options options) {
  return [options](std::vector<at::Tensor> params) -> std::unique_ptr<torch::optim::Optimizer> {
    // `params` is ordered by name: fc0..fc3 first.
    std::vector<at::Tensor> a(params.begin(), params.begin() + 8);
    std::vector<at::Tensor> b(params.begin() + 8, params.end());
    Options half = options;
    half.lr(options.lr() / 2);
    std::vector<torch::optim::OptimizerParamGroup> groups;
    groups.emplace_back(a, std::make_unique<Options>(options));
    groups.emplace_back(b, std::make_unique<Options>(half));
    return std::make_unique<Opt>(groups, options);
  };
}

// The world's ranks each run a data-parallel replica when ddp is on; without ddp each rank is
// an independent copy of the one-process run.
TEST(Optimizer, EqualsTorchOptimOptionForOption) {
  using namespace torch::optim;
  const std::vector<std::pair<std::string, OptimizerFactory>> cases = {
      {"sgd momentum dampening wd",
       two_groups<SGD>(SGDOptions(0.1).momentum(0.9).dampening(0.1).weight_decay(0.01))},
      {"sgd nesterov", two_groups<SGD>(SGDOptions(0.1).momentum(0.9).nesterov(true))},
      {"sgd plain", two_groups<SGD>(SGDOptions(0.1))},
      {"adam wd", two_groups<Adam>(AdamOptions(1e-2).weight_decay(0.01))},
      {"adam amsgrad", two_groups<Adam>(AdamOptions(1e-2).betas({0.8, 0.9}).amsgrad(true))},
      {"adamw", two_groups<AdamW>(AdamWOptions(1e-2).weight_decay(0.1))},
      {"adamw amsgrad eps", two_groups<AdamW>(AdamWOptions(1e-2).eps(1e-6).amsgrad(true))},
  };
  for (const char* layout : {"", "\"ddp\": true, \"shard_optimizer_state\": true"}) {
    if (comm::world_size() > 1 && std::string(layout).empty()) continue;  // replicas need ddp
    reinit(layout);
    for (const auto& [name, make] : cases) {
      const auto ref = reference_run(make, 5);
      SmpRun run = smp_run(make, 5);
      // smp runs PyTorch's fused kernels (torch.optim's fused=True), which order a few
      // operations differently from torch::optim's: 1-2 float ulps (2e-8 on values near 0.15)
      // after 5 steps on one rank. On two, the data-parallel average rounds the gradients too,
      // and Adam's 1 / (sqrt(v) + eps) amplifies that where sqrt(v) is near eps (1e-6 in "adamw
      // amsgrad eps"): 1.0e-6 measured. A wrong option or state would be off by far more.
      const double tol = comm::world_size() == 1 ? 1e-6 : 3e-6;
      expect_params_close(*run.model, ref, tol, name + (*layout ? " zero1" : ""));
    }
  }
}

// SGD with momentum, as smp-train steps (the flag handed back after step()): without
// dampening step() never reads the overflow flag, its first step included (the zeroed buffers
// start as is_first_step's would, which EqualsTorchOptimOptionForOption's "sgd nesterov"
// checks against torch::optim); with dampening its first step reads it, later ones do not.
TEST(Optimizer, SgdMomentumStepsWithoutReadingTheFlag) {
  using namespace torch::optim;
  reinit("\"ddp\": true");
  for (const double dampening : {0.0, 0.1}) {
    std::vector<Layer> layers = make_mlp(1);
    auto params = values_of(named(layers));
    DistributedModel model(std::move(layers));
    DistributedOptimizer opt(model, two_groups<SGD>(SGDOptions(0.1).momentum(0.9).dampening(dampening))(params));
    train::HostSyncCounter counter;
    std::vector<int64_t> syncs;
    for (int it = 0; it < 3; ++it) {
      opt.zero_grad();
      const Batch b = my_slice(whole_batch(it));
      step(model, {b.x}, {b.y}, mse_loss);
      counter.clear();
      counter.phase("step");
      opt.step();
      counter.pause();
      syncs.push_back(counter.total().syncs);
      opt.record_overflow(opt.overflow_tensor().item<float>() != 0);
    }
    const std::vector<int64_t> expected = dampening == 0 ? std::vector<int64_t>{0, 0, 0}
                                                          : std::vector<int64_t>{1, 0, 0};
    EXPECT_EQ(syncs, expected) << "dampening " << dampening;
  }
}

OptimizerFactory adam(double lr = 1e-3) {
  return [lr](std::vector<at::Tensor> p) {
    return std::make_unique<torch::optim::Adam>(p, torch::optim::AdamOptions(lr));
  };
}

// fp16: an inf in one replica's loss at step 2 makes every rank skip that step, halves the
// scale and sets overflow(); the steps after it update again.
TEST(MixedPrecision, Fp16InjectedInfSkipsTheStepAndHalvesTheScale) {
  reinit("\"fp16\": true, \"ddp\": true");
  DistributedOptimizerOptions oo;
  oo.dynamic_loss_scale = true;
  oo.dynamic_loss_args.init_scale = 1024;
  int it = 0;
  LossFn loss = [&it](const Values& out, const Values& y) -> Values {
    at::Tensor l = torch::mse_loss(out[0].to(at::kFloat), y[0]);
    if (it == 2 && rank() == 0) l = l * std::numeric_limits<float>::infinity();
    return {l};
  };
  std::vector<Layer> layers = make_mlp(1);
  auto params = values_of(named(layers));
  DistributedModel model(std::move(layers));
  DistributedOptimizer opt(model, adam()(params), oo);
  for (it = 0; it < 6; ++it) {
    opt.zero_grad();
    const Batch b = my_slice(whole_batch(it));
    std::vector<StepOutput> out = step(model, {b.x}, {b.y}, loss);
    const at::Tensor before = model.gradient_reducer().flat_params().clone();
    EXPECT_EQ(opt.loss_scale(), it <= 2 ? 1024 : 512) << "step " << it;
    opt.step();
    const bool changed = !at::equal(before, model.gradient_reducer().flat_params());
    EXPECT_EQ(opt.overflow(), it == 2) << "step " << it;
    EXPECT_EQ(changed, it != 2) << "step " << it;
    if (it != 2) EXPECT_TRUE(std::isfinite(out[0].reduce_mean().item<double>()));
  }
  EXPECT_EQ(opt.loss_scale(), 512);
  EXPECT_EQ(model.local_parameters()[0].scalar_type(), at::kHalf);
  EXPECT_EQ(opt.local_state_dict().tensors.at("fp32_master").scalar_type(), at::kFloat);
}

// The reference problem under fp16 (Adam) over the batches `its`, an inf in world rank 0's
// loss at the positions in `inf_at`, as smp-train steps: the overflow flag fetched after
// step() and handed to record_overflow. Counts host syncs inside step(); records the device
// loss scale before each step.
struct Fp16Run {
  std::unique_ptr<DistributedModel> model;
  std::unique_ptr<DistributedOptimizer> opt;
  int64_t step_syncs = 0;
  std::vector<double> device_scales;
  std::vector<bool> changed;  // did the step change the parameters
};

Fp16Run fp16_run(const std::vector<int>& its, const std::set<size_t>& inf_at,
                 const DistributedOptimizerOptions& oo) {
  Fp16Run run;
  size_t pos = 0;
  LossFn loss = [&pos, &inf_at](const Values& out, const Values& y) -> Values {
    at::Tensor l = torch::mse_loss(out[0].to(at::kFloat), y[0]);
    if (inf_at.count(pos) && rank() == 0) l = l * std::numeric_limits<float>::infinity();
    return {l};
  };
  std::vector<Layer> layers = make_mlp(1);
  auto params = values_of(named(layers));
  run.model = std::make_unique<DistributedModel>(std::move(layers));
  run.opt = std::make_unique<DistributedOptimizer>(*run.model, adam()(params), oo);
  train::HostSyncCounter counter;
  for (pos = 0; pos < its.size(); ++pos) {
    run.opt->zero_grad();
    const Batch b = my_slice(whole_batch(its[pos]));
    step(*run.model, {b.x}, {b.y}, loss);
    const at::Tensor& scale = run.model->loss_scale_tensor();
    run.device_scales.push_back(scale.defined() ? scale.item<double>() : run.model->loss_scale());
    const at::Tensor before = run.model->gradient_reducer().flat_params().clone();
    counter.phase("step");
    run.opt->step();
    counter.pause();
    run.changed.push_back(!at::equal(before, run.model->gradient_reducer().flat_params()));
    run.opt->record_overflow(run.opt->overflow_tensor().item<float>() != 0);
  }
  run.step_syncs = counter.total().syncs;
  return run;
}

// fp16 on the device path (no host read of the overflow flag in step()): the overflowed step
// leaves parameters, masters, moments and step counts as they were, so a run with an inf at its
// third step ends bit for bit where the run without that batch ends.
TEST(MixedPrecision, Fp16SkipOnTheDeviceLeavesEverythingAsItWas) {
  reinit("\"fp16\": true, \"ddp\": true");
  DistributedOptimizerOptions oo;
  oo.static_loss_scale = 128;
  Fp16Run skipped = fp16_run({0, 1, 2, 3, 4}, {2}, oo);
  Fp16Run without = fp16_run({0, 1, 3, 4}, {}, oo);
  EXPECT_EQ(skipped.step_syncs, 0);
  EXPECT_EQ(without.step_syncs, 0);
  EXPECT_EQ(skipped.changed, (std::vector<bool>{true, true, false, true, true}));
  EXPECT_TRUE(at::equal(skipped.model->gradient_reducer().flat_params(),
                        without.model->gradient_reducer().flat_params()));
  const OptimizerStateDict a = skipped.opt->local_state_dict(), b = without.opt->local_state_dict();
  ASSERT_EQ(a.tensors.size(), 3u);  // exp_avg, exp_avg_sq, fp32_master
  for (const auto& [name, t] : a.tensors) EXPECT_TRUE(at::equal(t, b.tensors.at(name))) << name;
  for (const auto& group : a.meta.at("param_groups")) EXPECT_EQ(group.at("step").get<int64_t>(), 4);
  EXPECT_EQ(a.meta.at("param_groups"), b.meta.at("param_groups"));
  EXPECT_FALSE(skipped.opt->overflow());  // the last step
}

// fp16's dynamic scale on the device (_amp_update_scale_ and a floor at min_scale) halves,
// stops at the floor and grows after scale_window clean steps exactly as the host's
// LossScaler, without a host read in step(); the host's copy agrees once the flag is recorded.
TEST(MixedPrecision, Fp16DynamicScaleOnTheDeviceFollowsLossScaler) {
  reinit("\"fp16\": true, \"ddp\": true");
  DistributedOptimizerOptions oo;
  oo.dynamic_loss_scale = true;
  oo.dynamic_loss_args.init_scale = 1024;
  oo.dynamic_loss_args.scale_window = 2;
  oo.dynamic_loss_args.min_scale = 256;
  const std::set<size_t> inf_at = {1, 2, 3, 6};
  Fp16Run run = fp16_run({0, 1, 2, 3, 4, 5, 6, 7, 8, 9}, inf_at, oo);
  optim::LossScaler ref(true, 1, oo.dynamic_loss_args);
  std::vector<double> want;
  for (size_t i = 0; i < 10; ++i) want.push_back(ref.scale()), ref.update(inf_at.count(i) > 0);
  // 1024, then halved twice, held at the floor 256, grown after two clean steps, ...
  EXPECT_EQ(want, (std::vector<double>{1024, 1024, 512, 256, 256, 256, 512, 256, 256, 512}));
  EXPECT_EQ(run.device_scales, want);
  EXPECT_EQ(run.opt->loss_scale(), ref.scale());
  EXPECT_EQ(run.step_syncs, 0);
  for (size_t i = 0; i < 10; ++i) EXPECT_EQ(run.changed[i], inf_at.count(i) == 0) << "step " << i;
}

// fp32 and bf16: a NaN in one replica's loss makes every rank skip that step (no update,
// overflow(), skipped_steps() counts it); finite steps reset the run of skips; the
// max_nonfinite_steps-th skip in a row throws smp::Error.
TEST(NonFinite, GradientsSkipTheStepInEveryPrecision) {
  for (const char* precision : {"", "\"bf16\": true, "}) {
    reinit(std::string(precision) + "\"ddp\": true");
    DistributedOptimizerOptions oo;
    oo.max_nonfinite_steps = 2;
    int it = 0;
    const std::set<int> bad = {1, 3, 4};
    LossFn loss = [&](const Values& out, const Values& y) -> Values {
      at::Tensor l = torch::mse_loss(out[0].to(at::kFloat), y[0]);
      if (bad.count(it) && rank() == comm::world_size() - 1) l = l * std::numeric_limits<float>::quiet_NaN();
      return {l};
    };
    std::vector<Layer> layers = make_mlp(1);
    auto params = values_of(named(layers));
    DistributedModel model(std::move(layers));
    DistributedOptimizer opt(model, adam()(params), oo);
    for (it = 0; it < 5; ++it) {
      SCOPED_TRACE(std::string(precision) + " step " + std::to_string(it));
      opt.zero_grad();
      const Batch b = my_slice(whole_batch(it));
      step(model, {b.x}, {b.y}, loss);
      const at::Tensor before = model.gradient_reducer().flat_params().clone();
      if (it == 4) {  // the second bad step in a row
        EXPECT_THROW(
            {
              try {
                opt.step();
              } catch (const Error& e) {
                EXPECT_NE(std::string(e.what()).find("inf or NaN gradients in 2 steps in a row"), std::string::npos)
                    << e.what();
                throw;
              }
            },
            Error);
        break;
      }
      opt.step();
      EXPECT_EQ(opt.overflow(), bad.count(it) > 0);
      EXPECT_EQ(at::equal(before, model.gradient_reducer().flat_params()), bad.count(it) > 0);
      EXPECT_TRUE(model.gradient_reducer().flat_params().isfinite().all().item<bool>());
    }
    EXPECT_EQ(opt.skipped_steps(), 3);
  }
}

// 16-bit training against the fp32 one-process run, step by step over 50 steps.
TEST(MixedPrecision, Bf16AndFp16TrackFp32) {
  RefRecord ref;
  reference_run(adam(), 50, 0, &ref);
  struct Case {
    const char* config;
    double tol;  // relative loss error allowed at every step
  };
  for (const Case& c :
       {Case{"\"bf16\": true, \"ddp\": true", 5e-3},
        Case{"\"fp16\": true, \"ddp\": true, \"shard_optimizer_state\": true", 1e-3}}) {
    reinit(c.config);
    DistributedOptimizerOptions oo;
    if (config().fp16) oo.static_loss_scale = 128;
    LossFn loss = [](const Values& out, const Values& y) -> Values {
      return {torch::mse_loss(out[0].to(at::kFloat), y[0])};
    };
    SmpRun run = smp_run(adam(), 50, {}, 0, oo, loss);
    EXPECT_EQ(run.model->local_parameters()[0].scalar_type(),
              config().fp16 ? at::kHalf : at::kBFloat16);
    double worst = 0;
    for (int i = 0; i < 50; ++i) {
      worst = std::max(worst, std::abs(run.losses[i] - ref.losses[i]) / ref.losses[i]);
    }
    EXPECT_LT(worst, c.tol) << c.config;
    EXPECT_LT(ref.losses[49], 0.8 * ref.losses[0]);  // it trained
    if (rank() == 0)
      std::printf("%s: worst relative loss error over 50 steps %.2e\n", c.config, worst);
  }
}

// Steps `from`..`to`-1 of the reference problem on a fresh model that starts from `params`
// with the optimizer state `dict` loaded (before partitioning: deferred).
SmpRun resume(const std::map<std::string, at::Tensor>& params, const OptimizerStateDict& dict,
              int from, int to) {
  std::vector<Layer> layers = make_mlp(1);
  {
    torch::NoGradGuard no_grad;
    for (auto& [name, p] : named(layers)) p.copy_(params.at(name));
  }
  SmpRun run;
  auto list = values_of(named(layers));
  run.model = std::make_unique<DistributedModel>(std::move(layers));
  run.opt = std::make_unique<DistributedOptimizer>(*run.model, adam(1e-2)(list));
  if (dict.partial) {
    run.opt->load_local_state_dict(dict);
  } else {
    run.opt->load_state_dict(dict);
  }
  for (int it = from; it < to; ++it) {
    run.opt->zero_grad();
    const Batch b = my_slice(whole_batch(it));
    step(*run.model, {b.x}, {b.y}, mse_loss);
    run.opt->step();
  }
  return run;
}

// 3 steps sharded, save, then 2 more from the saved state: partial into the same layout, and
// per-parameter into an unsharded layout; both equal 5 uninterrupted reference steps.
TEST(StateDict, ResumesAndReshards) {
  const auto ref = reference_run(adam(1e-2), 5);
  reinit("\"ddp\": true, \"shard_optimizer_state\": true");
  OptimizerStateDict local, full;
  std::map<std::string, at::Tensor> params;
  {
    SmpRun a = smp_run(adam(1e-2), 3);
    local = a.opt->local_state_dict();
    full = a.opt->state_dict();
    for (auto& [name, p] : a.model->local_named_parameters()) params[name] = p.detach().clone();
    EXPECT_EQ(local.meta.at("param_groups").at(0).at("step"), 3);
    EXPECT_EQ(full.tensors.at("fc0.weight/exp_avg").sizes(), params.at("fc0.weight").sizes());
  }
  {
    SmpRun b = resume(params, local, 3, 5);
    expect_params_close(*b.model, ref, 1e-6, "partial dict, same layout");
  }
  reinit("\"ddp\": true");
  SmpRun c = resume(params, full, 3, 5);
  expect_params_close(*c.model, ref, 1e-6, "per-parameter dict, unsharded");
  reinit("\"ddp\": true, \"offload_optimizer_state\": true");
  SmpRun d = resume(params, full, 3, 5);
  expect_params_close(*d.model, ref, 1e-6, "per-parameter dict into state offloaded to a file");
  // A partial dict does not fit another layout when the world has several ranks.
  if (comm::world_size() > 1) {
    DistributedOptimizer& opt = *c.opt;
    EXPECT_THROW(opt.load_local_state_dict(local), ConfigError);
  }
}

// The resident bytes and the file name of the mapping holding `address` (/proc/self/smaps).
std::pair<int64_t, std::string> resident_mapping(const void* address) {
  std::ifstream smaps("/proc/self/smaps");
  const auto at = reinterpret_cast<uintptr_t>(address);
  std::string line, name;
  bool inside = false;
  while (std::getline(smaps, line)) {
    uintptr_t begin = 0, end = 0;
    if (std::sscanf(line.c_str(), "%lx-%lx", &begin, &end) == 2 && line.find(' ') < line.find(':')) {
      inside = begin <= at && at < end;
      if (inside) name = line;
    } else if (inside && line.rfind("Rss:", 0) == 0) {
      return {std::stoll(line.substr(4)) * 1024, name};
    }
  }
  return {-1, ""};
}

// offload_optimizer_state: the moments live in a file and leave resident memory after each
// step. With one window the run equals the in-memory one bit for bit, parameters and every
// state element. With 7-element windows (runs cut at odd places) it equals it to float
// rounding: the CPU kernels' vector body and scalar tail round differently (FMA), so an element
// moved across a cut may differ by an ulp (6e-8 relative measured); a wrong offset would not.
TEST(OffloadedState, EqualsStateInMemoryAndLeavesResidentMemory) {
  using namespace torch::optim;
  const std::vector<std::pair<std::string, OptimizerFactory>> cases = {
      {"adamw amsgrad", two_groups<AdamW>(AdamWOptions(1e-2).weight_decay(0.1).amsgrad(true))},
      {"sgd momentum", two_groups<SGD>(SGDOptions(0.1).momentum(0.9))},
  };
  const char* layouts[] = {"\"ddp\": true, \"shard_optimizer_state\": true",
                           "\"ddp\": true, \"sharded_data_parallel_degree\": 2", "\"bf16\": true"};
  // The loss in fp32 whatever the model's dtype.
  const LossFn loss = [](const Values& out, const Values& y) -> Values {
    return {torch::mse_loss(out[0].to(at::kFloat), y[0])};
  };
  for (const std::string layout : layouts) {
    if (layout.find("sharded_data") != std::string::npos && comm::world_size() != 2) continue;
    if (layout.find("bf16") != std::string::npos && comm::world_size() != 1) continue;
    for (const auto& [name, make] : cases) {
      reinit(layout);
      SmpRun memory = smp_run(make, 4, {}, 1.0, {}, loss);
      const OptimizerStateDict want = memory.opt->local_state_dict();
      const auto want_params = memory.model->local_named_parameters();
      for (const int64_t window : {int64_t{1} << 20, int64_t{7}}) {
        const std::string what = name + " {" + layout + "} window " + std::to_string(window);
        const bool exact = window > 7;
        reinit(layout + ", \"offload_optimizer_state\": true");
        DistributedOptimizerOptions oo;
        oo.offload_window = window;
        SmpRun file = smp_run(make, 4, {}, 1.0, oo, loss);
        for (const DistributedOptimizer::StateSlice& slice : file.opt->state_slices()) {
          if (slice.values.numel() == 0) continue;
          const auto [rss, mapping] = resident_mapping(slice.values.data_ptr());
          EXPECT_NE(mapping.find("smp-optimizer-state-"), std::string::npos) << what << ": " << mapping;
          EXPECT_EQ(rss, 0) << what << ": " << slice.state << " resident after the step";
        }
        // local_state_dict hands out the state in its file, not copies brought into memory.
        const OptimizerStateDict got = file.opt->local_state_dict();
        for (const auto& [key, t] : got.tensors) {
          if (t.numel() == 0) continue;
          EXPECT_NE(resident_mapping(t.data_ptr()).second.find("smp-optimizer-state-"), std::string::npos)
              << what << ": local_state_dict's " << key << " is a copy";
        }
        ASSERT_EQ(got.tensors.size(), want.tensors.size()) << what;
        for (const auto& [key, t] : want.tensors) {
          const at::Tensor& g = got.tensors.at(key);
          EXPECT_TRUE(exact ? at::equal(g, t) : close(g, t, 1e-6)) << what << ": " << key;
        }
        const auto got_params = file.model->local_named_parameters();
        ASSERT_EQ(got_params.size(), want_params.size()) << what;
        for (size_t i = 0; i < got_params.size(); ++i) {
          const at::Tensor& g = got_params[i].second;
          const at::Tensor& t = want_params[i].second;
          EXPECT_TRUE(exact ? at::equal(g, t) : close(g, t, 1e-6)) << what << ": " << got_params[i].first;
        }
      }
    }
  }
}

template <typename F>
void expect_config_error(F&& f, const std::string& needle) {
  try {
    f();
    ADD_FAILURE() << "expected ConfigError containing " << needle;
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

TEST(BadInput, ClearErrors) {
  expect_config_error([] { Config::from_json_string("{\"fp16\": true, \"bf16\": true}"); },
                      "\"fp16\" and \"bf16\"");
  // Sharding needs data parallelism ("ddp": true): refused with the config, before any model.
  expect_config_error([] { Config::from_json_string("{\"shard_optimizer_state\": true}"); },
                      "\"ddp\": true");
  expect_config_error([] { Config::from_json_string("{\"shard_optimizer_state\": true}"); },
                      "shard_optimizer_state");
  reinit("\"ddp\": true");
  std::vector<Layer> layers = make_mlp(1);
  auto params = values_of(named(layers));
  DistributedModel model(std::move(layers));
  expect_config_error(
      [&] {
        DistributedOptimizer(model, std::make_unique<torch::optim::RMSprop>(
                                        params, torch::optim::RMSpropOptions(0.1)));
      },
      "torch::optim::AdamW");
  DistributedOptimizerOptions scaled;
  scaled.dynamic_loss_scale = true;
  expect_config_error([&] { DistributedOptimizer(model, adam()(params), scaled); }, "fp16");
  DistributedOptimizer opt(model, adam()(params));
  EXPECT_THROW(opt.step(), Error);  // before the first smp::step
}

// A rank whose stages hold none of the optimizer's parameters still steps and clips with the
// others (documented behaviour): only fc0 is optimized; with pp = 2 the second stage's rank
// has nothing to update.
TEST(BadInput, OptimizerWithNoParametersOnARank) {
  if (comm::world_size() < 2) GTEST_SKIP() << "needs a second pipeline stage";
  auto only_fc0 = [](std::vector<at::Tensor> p) {
    // Sorted by name: fc0.bias, fc0.weight come first.
    return std::make_unique<torch::optim::SGD>(std::vector<at::Tensor>{p[0], p[1]},
                                               torch::optim::SGDOptions(0.1));
  };
  RefRecord ref_record;
  const auto ref = reference_run(only_fc0, 3, 0.05, &ref_record);
  const auto init = named(make_mlp(1));
  for (const char* layout : {"\"ddp\": true, \"pipeline_parallel_degree\": 2",
                             "\"ddp\": true, \"pipeline_parallel_degree\": 2, "
                             "\"shard_optimizer_state\": true"}) {
    reinit(layout);
    SmpRun run = smp_run(only_fc0, 3, {}, 0.05);
    for (auto& [name, p] : run.model->local_named_parameters()) {
      const bool optimized = name.rfind("fc0.", 0) == 0;
      EXPECT_TRUE(close(p, optimized ? ref.at(name) : init.at(name), 1e-6))
          << layout << " " << name;
    }
    for (size_t i = 0; i < ref_record.norms.size(); ++i) {
      EXPECT_NEAR(run.norms[i], ref_record.norms[i], 1e-6 * ref_record.norms[i]) << layout;
    }
  }
}

TEST(BadInput, OffloadWindowOfNoElements) {
  reinit("\"ddp\": true, \"offload_optimizer_state\": true");
  DistributedOptimizerOptions oo;
  oo.offload_window = 0;
  expect_config_error([&] { smp_run(adam(), 1, {}, 0, oo); }, "offload_window: got 0; allowed: an integer >= 1");
}

}  // namespace
}  // namespace smp
