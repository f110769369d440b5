// bench/step_ops.sh's binary: what one smp-train step dispatches, on one rank, on the CPU.
//   step_ops [batch=2] [seq=128] [loss_tokens=2048]
//
// For GPT-2 124M ("gpt2-124m", vocab 50257) and "llama-125m" (vocab 32000), each in turn, the
// model, DistributedModel and DistributedOptimizer (AdamW over two parameter groups) are built
// as smp-train builds them (src/train/trainer.cpp: smp config {"ddp": true}, fp32, the
// TrainingConfig defaults, grad_clip 1.0). One warm-up step (it partitions), then one counted
// step that repeats Trainer::train_step:
//   set_lr; smp::step (forward + backward with the model's loss); clip_master_grads_tensor(1.0);
//   DistributedOptimizer::step(); zero_grad(); the loss, the norm and the overflow flag fetched
//   together (train::step_figures(...).cpu()), the flag handed to record_overflow;
//   replica_mean of the loss.
// The batch is moved to the device before the counted step (on a GPU that is a host-to-device
// copy, no synchronisation). Op and sync counts per step do not depend on batch and sequence.
//
// What is counted: smp::train::HostSyncCounter's figures (include/smp/train/host_syncs.h: a
// global ATen RecordFunction observer at FUNCTION scope), per phase of the step:
//   - top-level ops (the RESULT line's aten ops; "all" counts nested ones too);
//   - sync points: item() (_local_scalar_dense), copies to the host, *synchronize*, and the ops
//     that wait for their output's size, as that header lists them. Not counted: the item()
//     inside the trainer's replica_mean, on a tensor it builds on the host (at::full, kDouble)
//     to all-reduce the logged loss over the data-parallel replicas (printed apart as
//     host_items); the item() calls inside PyTorch's CPU _fused_* kernels; an item() on a copy
//     already brought to the host.
//   - optimizer ops: top-level ops while clip_master_grads and DistributedOptimizer::step run
//     (zero_grad is apart); per group = that / the optimizer's parameter groups (2).
//
// Loss memory: the model's loss function (Model::loss, what smp-train's loss_fn calls) alone,
// forward and backward, on bf16 logits of shape (loss_tokens / seq, seq, V) made as the
// model's head makes them (a GEMM of bf16 hidden states that want a gradient, and a weight
// whose gradient is left out) with random labels. A c10::MemoryReportingInfoBase pushed as
// the thread's PROFILER_STATE debug info sees every CPU allocation and free made meanwhile
// (c10's ProfiledCPUMemoryReporter). peak extra = the highest sum of the bytes allocated minus
// freed since the push, less the logits themselves, during forward + backward: the loss's
// scratch, the logits' gradient where it is a tensor of its own, the hidden states' gradient
// (the logits' size x hidden / V). loss_extra_over_logits = peak extra / bytes of the bf16
// logits. Also printed: the peak during forward alone (less the logits), and what is still
// held after backward.
//
// Prints a few lines per model (the last: "STEP_OPS model=<name> ..."), then
//   RESULT step_ops syncs_per_step=<n> optimizer_ops_per_step=<n> aten_ops_per_step=<n>
//     loss_extra_over_logits=<r>
// with the larger of the two models' figures for each (optimizer ops: over all groups).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <ATen/ATen.h>
#include <c10/core/Allocator.h>
#include <c10/util/ThreadLocalDebugInfo.h>
#include <torch/optim/adamw.h>

#include "smp/distributed_optimizer.h"
#include "smp/models/gpt.h"
#include "smp/train/host_syncs.h"
#include "smp/train/trainer.h"
#include "smp/smp.h"
#include "smp/step.h"
#include "smp/tensor_parallel/layers.h"
#include "smp/train/train_config.h"

namespace {

using Clock = std::chrono::steady_clock;

// The phases of a step, in order (HostSyncCounter's phase names).
const char* const kPhases[] = {"step", "clip", "optimizer_step", "zero_grad", "loss_item", "replica_mean"};

// ---- the loss's memory ----

struct PeakBytes : c10::MemoryReportingInfoBase {
  int64_t current = 0, peak = 0;
  void reportMemoryUsage(void*, int64_t alloc_size, size_t, size_t, c10::Device) override {
    current += alloc_size;
    peak = std::max(peak, current);
  }
  bool memoryProfilingEnabled() const override { return true; }
};

struct LossMemory {
  int64_t vocab = 0, logits_bytes = 0, forward_peak = 0, peak = 0, held_after = 0;
};

LossMemory loss_memory(const smp::models::Model& model, int64_t tokens, int64_t seq) {
  const int64_t v = model.config.vocab_size;  // the head's columns at tp = 1 (no padding)
  // As in the model: the head's GEMM makes the logits from the hidden states (which want a
  // gradient) and a weight (which, here, does not: its gradient is not the loss's memory).
  const int64_t hidden = model.config.hidden;
  const at::Tensor h = at::randn({tokens / seq, seq, hidden}, at::kFloat).to(at::kBFloat16).requires_grad_(true);
  const at::Tensor w = at::randn({v, hidden}, at::kFloat).mul_(0.02).to(at::kBFloat16);
  const at::Tensor labels = at::randint(0, v, {tokens / seq, seq}, at::kLong);
  LossMemory m;
  m.vocab = v;
  m.logits_bytes = tokens * v * static_cast<int64_t>(c10::elementSize(at::kBFloat16));
  auto reporter = std::make_shared<PeakBytes>();
  {
    c10::DebugInfoGuard guard(c10::DebugInfoKind::PROFILER_STATE, reporter);
    at::Tensor logits = at::linear(h, w);
    at::Tensor loss = model.loss({std::move(logits)}, {labels}, /*logits_consumed=*/true)[0];
    m.forward_peak = reporter->peak - m.logits_bytes;
    loss.backward();
    loss.reset();
    m.peak = reporter->peak - m.logits_bytes;  // beyond the logits themselves
    m.held_after = reporter->current;
  }
  return m;
}

// ---- smp-train's pieces (src/train/trainer.cpp) ----

std::unique_ptr<torch::optim::Optimizer> make_optimizer(const smp::DistributedModel& dmodel,
                                                        const smp::train::TrainingConfig& t) {
  std::vector<at::Tensor> decay, no_decay;
  for (const auto& p : dmodel.local_parameter_info()) {
    const bool positions = p.name.size() >= 3 && p.name.compare(p.name.size() - 3, 3, "wpe") == 0;
    (p.tensor.dim() >= 2 && !positions ? decay : no_decay).push_back(p.tensor);
  }
  const auto options =
      torch::optim::AdamWOptions(t.lr).betas({t.beta1, t.beta2}).weight_decay(t.weight_decay);
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(decay, std::make_unique<torch::optim::AdamWOptions>(options));
  auto no_decay_options = std::make_unique<torch::optim::AdamWOptions>(options);
  no_decay_options->weight_decay(0.0);
  groups.emplace_back(no_decay, std::move(no_decay_options));
  return std::make_unique<torch::optim::AdamW>(std::move(groups), options);
}

double replica_mean(double value) {
  at::Tensor t = at::full({1}, value, at::kDouble);
  smp::process_group(smp::CommGroup::DP_GROUP).all_reduce(t, smp::comm::ReduceOp::kAvg).wait();
  return t.item<double>();
}

struct ModelFigures {
  std::string name;
  int64_t params = 0;
  size_t groups = 0;
  std::map<std::string, smp::train::HostSyncCounter::Phase> phases;
  smp::train::HostSyncCounter::Phase total;
  double step_s = 0;
  double loss = 0;
  LossMemory memory;
  int64_t phase_top(const std::string& p) const {
    auto it = phases.find(p);
    return it == phases.end() ? 0 : it->second.top;
  }
  int64_t optimizer_ops() const { return phase_top("clip") + phase_top("optimizer_step"); }
  double loss_ratio() const { return static_cast<double>(memory.peak) / memory.logits_bytes; }
};

ModelFigures run_model(smp::train::HostSyncCounter& counter, const std::string& name, int64_t batch,
                       int64_t seq, int64_t loss_tokens) {
  using namespace smp;
  const train::TrainingConfig t;  // smp-train's defaults: AdamW, grad_clip 1.0, seed 1234
  const models::ModelConfig mc = models::named_model(name);
  ModelFigures f;
  f.name = name;
  f.params = mc.num_parameters();

  at::manual_seed(static_cast<int64_t>(t.seed));
  models::Model model = models::build_model(mc, tp::TpGroup(process_group(CommGroup::TP_GROUP)),
                                            /*separate_tied_head=*/pp_size() > 1);
  model.set_prescaled_batch(true);  // tp_size() == 1
  DistributedModelOptions options;
  options.tied_copies = model.tied_copies;
  DistributedModel dmodel(std::move(model.layers), options);
  dmodel.partition({at::zeros({batch / config().microbatches, seq}, at::kLong)});
  DistributedOptimizerOptions opt_options;
  opt_options.max_nonfinite_steps = t.max_nonfinite_steps;
  DistributedOptimizer optimizer(dmodel, make_optimizer(dmodel, t), opt_options);
  f.groups = optimizer.optimizer().param_groups().size();
  const LossFn loss_fn = [&model](const Values& out, const Values& y) {
    return model.loss(out, y, /*logits_consumed=*/true);  // as smp-train's
  };

  const at::Device device = at::kCPU;
  for (int64_t s = 0; s < 2; ++s) {
    const at::Tensor tokens = at::randint(0, mc.vocab_size, {batch, seq + 1}, at::kLong);
    const at::Tensor x = tokens.narrow(1, 0, seq).contiguous().to(device);
    const at::Tensor labels = tokens.narrow(1, 1, seq).contiguous();
    tp::check_labels(labels, mc.vocab_size);  // the data path's, on the host (smp-train's)
    const at::Tensor y = labels.to(device);
    const bool counted = s == 1;
    if (counted) counter.clear();
    auto phase = [&](const char* name, bool host_tensors = false) {
      if (counted) counter.phase(name, host_tensors);
    };
    const auto begin = Clock::now();
    // Trainer::train_step, line for line.
    phase("set_lr");
    for (auto& group : optimizer.optimizer().param_groups()) {
      group.options().set_lr(train::learning_rate(t, s));
    }
    phase("step");
    const auto out = step(dmodel, {x}, {y}, loss_fn);
    phase("clip");
    const at::Tensor norm = t.grad_clip > 0 ? optimizer.clip_master_grads_tensor(t.grad_clip)
                                            : optimizer.master_grad_norm_tensor();
    phase("optimizer_step");
    optimizer.step();
    phase("zero_grad");
    optimizer.zero_grad();
    phase("loss_item");
    const at::Tensor fetched =
        train::step_figures(out[0].reduce_mean(), norm, optimizer.overflow_tensor()).cpu();
    optimizer.record_overflow(fetched[2].item<double>() != 0);
    const double local_loss = fetched[0].item<double>();
    phase("replica_mean", /*host_tensors=*/true);
    f.loss = replica_mean(local_loss);
    counter.pause();
    f.step_s = std::chrono::duration<double>(Clock::now() - begin).count();
  }
  f.phases = counter.phases();
  f.total = counter.total();
  f.memory = loss_memory(model, loss_tokens, seq);
  return f;
}

void print_model(const ModelFigures& f, int64_t batch, int64_t seq, int64_t loss_tokens) {
  const smp::train::HostSyncCounter::Phase& c = f.total;
  std::printf("%s (%lld parameters, fp32, B=%lld T=%lld, %zu parameter groups), one step, "
              "%.2f s, loss %.4f:\n",
              f.name.c_str(), static_cast<long long>(f.params), static_cast<long long>(batch),
              static_cast<long long>(seq), f.groups, f.step_s, f.loss);
  std::printf("  aten ops: %lld top-level (%lld with nested);", static_cast<long long>(c.top),
              static_cast<long long>(c.all));
  for (const char* p : kPhases) {
    auto it = f.phases.find(p);
    if (it == f.phases.end()) continue;
    std::printf(" %s %lld (%lld)", p, static_cast<long long>(it->second.top),
                static_cast<long long>(it->second.all));
  }
  std::printf("\n  syncs: %lld (_local_scalar_dense %lld of which %lld on host copies, %lld in "
              "replica_mean on a host tensor and %lld inside CPU _fused_* kernels not counted; "
              "aten::item %lld; copies to host %lld; "
              "*synchronize* %lld; nonzero/masked_select/unique/equal %lld)\n",
              static_cast<long long>(c.syncs), static_cast<long long>(c.scalar_dense),
              static_cast<long long>(c.items_after_copy), static_cast<long long>(c.host_items),
              static_cast<long long>(c.fused_kernel_items),
              static_cast<long long>(c.items), static_cast<long long>(c.to_host),
              static_cast<long long>(c.synchronize), static_cast<long long>(c.dynamic_shape));
  std::printf("  sync sites:");
  for (const auto& [site, n] : c.sync_sites) std::printf(" %s x%lld", site.c_str(), static_cast<long long>(n));
  std::printf("\n  optimizer ops (clip_master_grads + step, top-level): %lld = %.1f per group "
              "(clip %lld, step %lld; zero_grad %lld apart):",
              static_cast<long long>(f.optimizer_ops()),
              static_cast<double>(f.optimizer_ops()) / static_cast<double>(f.groups),
              static_cast<long long>(f.phase_top("clip")), static_cast<long long>(f.phase_top("optimizer_step")),
              static_cast<long long>(f.phase_top("zero_grad")));
  std::map<std::string, int64_t> optimizer_top;
  for (const char* p : {"clip", "optimizer_step"}) {
    auto it = f.phases.find(p);
    if (it == f.phases.end()) continue;
    for (const auto& [op, n] : it->second.top_ops) optimizer_top[op] += n;
  }
  std::vector<std::pair<int64_t, std::string>> ops;
  for (const auto& [op, n] : optimizer_top) ops.emplace_back(-n, op);
  std::sort(ops.begin(), ops.end());
  for (size_t i = 0; i < ops.size() && i < 16; ++i) {
    std::printf(" %s x%lld", ops[i].second.c_str(), static_cast<long long>(-ops[i].first));
  }
  const LossMemory& m = f.memory;
  const double mb = 1 << 20;
  std::printf("\n  loss on bf16 logits (%lld, %lld): logits %.1f MiB; peak extra %.1f MiB = %.2fx "
              "(forward alone %.2fx; held after backward %.2fx)\n",
              static_cast<long long>(loss_tokens), static_cast<long long>(m.vocab),
              m.logits_bytes / mb, m.peak / mb, f.loss_ratio(),
              static_cast<double>(m.forward_peak) / m.logits_bytes,
              static_cast<double>(m.held_after) / m.logits_bytes);
  std::printf("STEP_OPS model=%s syncs_per_step=%lld optimizer_ops_per_step=%lld "
              "optimizer_ops_per_group=%.1f aten_ops_per_step=%lld aten_ops_nested=%lld "
              "loss_extra_over_logits=%.2f\n",
              f.name.c_str(), static_cast<long long>(c.syncs),
              static_cast<long long>(f.optimizer_ops()),
              static_cast<double>(f.optimizer_ops()) / static_cast<double>(f.groups),
              static_cast<long long>(c.top), static_cast<long long>(c.all),
              f.loss_ratio());
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  const int64_t batch = argc > 1 ? std::atoll(argv[1]) : 2;
  const int64_t seq = argc > 2 ? std::atoll(argv[2]) : 128;
  const int64_t loss_tokens = argc > 3 ? std::atoll(argv[3]) : 2048;
  if (batch < 1 || seq < 1 || loss_tokens < seq || loss_tokens % seq != 0) {
    std::fprintf(stderr, "usage: step_ops [batch=2] [seq=128] [loss_tokens=2048, a multiple of seq]\n");
    return 2;
  }
  smp::init(smp::Config::from_json_string(R"({"ddp": true})"));  // smp-train's default smp section
  std::printf("counted: ATen ops recorded at RecordScope::FUNCTION during the second step; "
              "aten_ops = top-level ops (not inside another recorded op), nested in brackets\n");
  std::vector<ModelFigures> figures;
  {
    smp::train::HostSyncCounter counter;
    for (const std::string name : {"gpt2-124m", "llama-125m"}) {
      figures.push_back(run_model(counter, name, batch, seq, loss_tokens));
      print_model(figures.back(), batch, seq, loss_tokens);
    }
  }
  int64_t syncs = 0, optimizer_ops = 0, aten_ops = 0;
  double ratio = 0;
  for (const auto& f : figures) {
    syncs = std::max(syncs, f.total.syncs);
    optimizer_ops = std::max(optimizer_ops, f.optimizer_ops());
    aten_ops = std::max(aten_ops, f.total.top);
    ratio = std::max(ratio, f.loss_ratio());
  }
  std::printf("(RESULT: the larger of the two models' figures; optimizer ops over all %zu groups, "
              "target <= 8 per group; top-level aten ops)\n", figures[0].groups);
  std::printf("RESULT step_ops syncs_per_step=%lld optimizer_ops_per_step=%lld "
              "aten_ops_per_step=%lld loss_extra_over_logits=%.2f\n",
              static_cast<long long>(syncs), static_cast<long long>(optimizer_ops),
              static_cast<long long>(aten_ops), ratio);
  std::fflush(stdout);
  smp::shutdown();
  return 0;
}
