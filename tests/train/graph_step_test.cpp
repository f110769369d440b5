// StaticStep (the body training.cuda_graphs captures) is capture-safe, checked on the CPU on one
// rank: in the steady step (after the warm-up steps CudaGraphStep runs eagerly) forward,
// backward and optimizer wait for the device nowhere (HostSyncCounter, the observer behind
// bench/step_ops.sh: no item(), no copy to the host, no synchronize, no output-size-dependent
// op), and every tensor the step reads from outside keeps its address from step to step:
// parameters, the flat gradient buffer, optimizer state and masters, the overflow flag, fp16's
// loss scale, the static batch and the figures. Also: the step trains as the eager one does
// (same losses bit for bit), and bad batches and layouts are refused naming the key.
#include <gtest/gtest.h>
#include <torch/optim/adamw.h>

#include <map>
#include <set>
#include <string>
#include <vector>

#include "../data_parallel/harness.h"
#include "smp/models/gpt.h"
#include "smp/models/model_config.h"
#include "smp/train/graph_step.h"
#include "smp/train/host_syncs.h"
#include "smp/train/trainer.h"

namespace smp {
namespace {

constexpr int64_t kSeq = 16, kBatch = 4;

models::ModelConfig tiny() {
  return models::model_config_from_json({{"name", "tiny"}, {"num_layers", 2}, {"hidden", 32}, {"num_heads", 4},
                                         {"ffn_hidden", 64}, {"max_seq_len", kSeq}, {"dropout", 0.0}});
}

std::pair<at::Tensor, at::Tensor> batch(int it) {
  at::manual_seed(500 + it);
  const at::Tensor tokens = at::randint(tiny().vocab_size, {kBatch, kSeq + 1}, at::kLong);
  return {tokens.narrow(1, 0, kSeq).contiguous(), tokens.narrow(1, 1, kSeq).contiguous()};
}

// The model, its DistributedModel and an AdamW over two groups, as smp-train builds them.
struct Trained {
  std::optional<models::Model> model;
  std::unique_ptr<DistributedModel> dmodel;
  std::unique_ptr<DistributedOptimizer> opt;
  LossFn loss;
};

void build(Trained& r, bool lr_on_device, const DistributedOptimizerOptions& base = {}) {
  at::manual_seed(1234);
  r.model.emplace(models::build_model(tiny(), tp::TpGroup(process_group(CommGroup::TP_GROUP)), false));
  r.model->set_prescaled_batch(true);
  DistributedModelOptions mo;
  mo.tied_copies = r.model->tied_copies;
  r.dmodel = std::make_unique<DistributedModel>(std::move(r.model->layers), mo);
  r.dmodel->partition({at::zeros({kBatch, kSeq}, at::kLong)});
  std::vector<at::Tensor> decay, rest;
  for (const auto& p : r.dmodel->local_parameter_info()) (p.tensor.dim() >= 2 ? decay : rest).push_back(p.tensor);
  const auto o = torch::optim::AdamWOptions(1e-3).weight_decay(0.1);
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(decay, std::make_unique<torch::optim::AdamWOptions>(o));
  groups.emplace_back(rest, std::make_unique<torch::optim::AdamWOptions>(torch::optim::AdamWOptions(o).weight_decay(0)));
  DistributedOptimizerOptions oo = base;
  oo.lr_on_device = lr_on_device;
  r.opt = std::make_unique<DistributedOptimizer>(*r.dmodel, std::make_unique<torch::optim::AdamW>(groups, o), oo);
  models::Model* m = &*r.model;
  r.loss = [m](const Values& out, const Values& y) { return m->loss(out, y, /*logits_consumed=*/true); };
}

void set_lr(DistributedOptimizer& opt, int it) {
  for (auto& g : opt.optimizer().param_groups()) g.options().set_lr(1e-3 * (it + 1) / 4);
}

// Every tensor the step reads from outside, by name: its address.
std::map<std::string, const void*> addresses(Trained& r, const train::StaticStep& s) {
  std::map<std::string, const void*> a;
  for (const auto& p : r.dmodel->local_parameter_info()) a["param " + p.name] = p.tensor.data_ptr();
  dp::GradientReducer& reducer = r.dmodel->gradient_reducer();
  a["flat params"] = reducer.flat_params().data_ptr();
  a["flat grads"] = reducer.store().grads_buffer().data_ptr();
  for (const auto& slice : r.opt->state_slices()) a["state " + slice.state + " " + slice.param] = slice.values.data_ptr();
  a["overflow flag"] = r.opt->overflow_tensor().data_ptr();
  if (r.dmodel->loss_scale_tensor().defined()) a["loss scale"] = r.dmodel->loss_scale_tensor().data_ptr();
  a["inputs"] = s.inputs().data_ptr();
  a["labels"] = s.labels().data_ptr();
  a["figures"] = s.figures().data_ptr();
  return a;
}

// Steps 0-1 warm up (as CudaGraphStep does); steps 2-4 are the steady steps a graph replays.
void expect_capture_safe(const std::string& smp_json, const DistributedOptimizerOptions& oo) {
  SCOPED_TRACE(smp_json);
  testing::reinit(smp_json);
  Trained graph, eager;
  build(graph, /*lr_on_device=*/true, oo);
  build(eager, /*lr_on_device=*/false, oo);
  train::StaticStep s(*graph.dmodel, *graph.opt, graph.loss, /*grad_clip=*/1.0);
  std::map<std::string, const void*> first;
  for (int it = 0; it < 5; ++it) {
    SCOPED_TRACE("step " + std::to_string(it));
    auto [x, y] = batch(it);
    set_lr(*graph.opt, it);
    s.load(x, y, at::kCPU);
    if (it < 2) {
      s.run();
    } else {
      train::HostSyncCounter counter;
      counter.phase("body");
      s.run();
      counter.pause();
      const train::HostSyncCounter::Phase t = counter.total();
      EXPECT_EQ(t.syncs, 0) << [&] {
        std::string sites;
        for (const auto& [site, n] : t.sync_sites) sites += " " + site + " x" + std::to_string(n);
        return sites;
      }();
      EXPECT_GT(t.top, 100);  // it did count the step's ops
    }
    const at::Tensor figures = s.figures().clone();
    graph.opt->record_overflow(figures[2].item<double>() != 0);
    // The same step, eagerly (Trainer::train_step without a graph): the same loss, bit for bit.
    set_lr(*eager.opt, it);
    const auto out = smp::step(*eager.dmodel, {x}, {y}, eager.loss);
    const at::Tensor norm = eager.opt->clip_master_grads_tensor(1.0);
    eager.opt->step();
    eager.opt->zero_grad();
    const at::Tensor want = train::step_figures(out[0].reduce_mean(), norm, eager.opt->overflow_tensor());
    EXPECT_TRUE(at::equal(figures, want)) << figures << want;
    eager.opt->record_overflow(want[2].item<double>() != 0);
    if (it == 1) first = addresses(graph, s);
    if (it > 1) EXPECT_EQ(addresses(graph, s), first);
  }
  EXPECT_TRUE(at::equal(graph.dmodel->gradient_reducer().flat_params(),
                        eager.dmodel->gradient_reducer().flat_params()));
  // A replay's host bookkeeping: the step count a checkpoint stores counts it once recorded.
  const auto steps = [&] { return graph.opt->state_meta().at("param_groups")[0].at("step").get<int64_t>(); };
  EXPECT_EQ(steps(), 5);
  graph.opt->step_replayed();
  graph.opt->record_overflow(false);
  EXPECT_EQ(steps(), 6);
  graph.opt->step_replayed();
  graph.opt->record_overflow(true);  // a skipped replay: no step counted
  EXPECT_EQ(steps(), 6);
}

TEST(GraphStep, SteadyStepWaitsNowhereAndKeepsItsAddressesFp32) { expect_capture_safe("\"ddp\": true", {}); }

TEST(GraphStep, SteadyStepWaitsNowhereAndKeepsItsAddressesFp16DynamicScale) {
  DistributedOptimizerOptions oo;
  oo.dynamic_loss_scale = true;
  oo.dynamic_loss_args.init_scale = 1024;
  oo.dynamic_loss_args.scale_window = 2;  // grows during the run: the scale's tensor is updated
  expect_capture_safe("\"ddp\": true, \"fp16\": true", oo);
}

TEST(GraphStep, RefusesOtherShapesAndDevices) {
  testing::reinit("\"ddp\": true");
  Trained r;
  build(r, true);
  train::StaticStep s(*r.dmodel, *r.opt, r.loss, 1.0);
  auto [x, y] = batch(0);
  s.load(x, y, at::kCPU);
  const auto message = [&](auto f) {
    try {
      f();
    } catch (const ConfigError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(message([&] { s.load(x.narrow(1, 0, kSeq / 2), y, at::kCPU); }).find("training.cuda_graphs"),
            std::string::npos);
  EXPECT_NE(message([&] { train::make_cuda_graph_step(*r.dmodel, *r.opt, r.loss, 1.0, at::kCPU); })
                .find("training.cuda_graphs: got true with training.device \"cpu\""),
            std::string::npos);
}

}  // namespace
}  // namespace smp
