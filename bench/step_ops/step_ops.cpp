// bench/step_ops.sh's binary: what one smp-train step dispatches, on one rank, on the CPU.
//   step_ops [batch=2] [seq=128] [loss_tokens=2048]
//
// For GPT-2 124M ("gpt2-124m", vocab 50257) and "llama-125m" (vocab 32000), each in turn, the
// model, DistributedModel and DistributedOptimizer (AdamW over two parameter groups) are built
// as smp-train builds them (src/train/trainer.cpp: smp config {"ddp": true}, fp32, the
// TrainingConfig defaults, grad_clip 1.0). One warm-up step (it partitions), then one counted
// step that repeats Trainer::train_step:
//   set_lr; smp::step (forward + backward with the model's loss); clip_master_grads_tensor(1.0);
//   DistributedOptimizer::step(); zero_grad(); the loss and the norm fetched together
//   (at::cat({loss, norm}).cpu()); replica_mean of the loss.
// The batch is moved to the device before the counted step (on a GPU that is a host-to-device
// copy, no synchronisation). Op and sync counts per step do not depend on batch and sequence.
//
// What is counted, by a global at::RecordFunction observer at RecordScope::FUNCTION (the ATen
// ops the dispatcher records; autograd's BACKWARD_FUNCTION records are not counted, the ATen
// ops the backward nodes call are):
//   - top-level ops: ops not called from inside another recorded ATen op (per thread). This is
//     what smp and torch::optim dispatch themselves, and the figure the RESULT line uses: it
//     does not depend on how a CPU kernel decomposes (e.g. a CPU _foreach_ op or aten::linear
//     dispatching its parts again). "all" counts every recorded op, nested ones included.
//   - sync points (host synchronisations on a GPU run): every aten::_local_scalar_dense (what
//     .item() / item<T>() / bool(tensor) call), every copy to the host (aten::to / aten::_to_copy
//     with an explicit CPU device argument, outermost only: on this CPU run they are no-ops or
//     dtype casts, on a GPU they are device-to-host copies), every recorded op whose name has
//     "synchronize" in it (cudaDeviceSynchronize itself is no ATen op and is not seen), and the
//     ops that synchronise on CUDA for their output's size (aten::nonzero, masked_select,
//     unique*, equal). Not counted as a second sync: an item() on the result of a counted copy
//     to the host (the copy already waited). Not counted at all: the item() inside the
//     trainer's replica_mean, on a tensor it builds on the host (at::full, kDouble) to
//     all-reduce the logged loss over the data-parallel replicas; printed apart as host_items;
//     nor the item() calls inside PyTorch's CPU _fused_adamw_ / _fused_sgd_ kernels (they read
//     each parameter's step count from its CPU tensor; the CUDA kernels read it on the device).
//   - optimizer ops: ops recorded while clip_master_grads and DistributedOptimizer::step run
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
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/record_function.h>
#include <c10/core/Allocator.h>
#include <c10/util/ThreadLocalDebugInfo.h>
#include <torch/optim/adamw.h>

#include "smp/distributed_optimizer.h"
#include "smp/models/gpt.h"
#include "smp/train/trainer.h"
#include "smp/smp.h"
#include "smp/step.h"
#include "smp/train/train_config.h"

namespace {

using Clock = std::chrono::steady_clock;

// ---- the observer ----

enum Phase { kOutside, kStep, kClip, kOptimizer, kZeroGrad, kLossItem, kReplicaMean, kPhases };
const char* const kPhaseNames[kPhases] = {"outside", "step", "clip", "optimizer_step",
                                          "zero_grad", "loss_item", "replica_mean"};

std::atomic<bool> g_counting{false};
std::atomic<int> g_phase{kOutside};

struct Counts {
  int64_t top[kPhases] = {};       // top-level ops
  int64_t all[kPhases] = {};       // every recorded op
  int64_t syncs[kPhases] = {};     // sync points (see the file comment)
  int64_t items = 0;               // aten::item (calls _local_scalar_dense)
  int64_t scalar_dense = 0;        // aten::_local_scalar_dense, replica_mean's included
  int64_t host_items = 0;          // replica_mean's, on a host tensor: not a sync
  int64_t items_after_copy = 0;    // item() on a copy already brought to the host
  int64_t fused_kernel_items = 0;  // inside a CPU _fused_* kernel (its step counts): not a sync
  int64_t to_host = 0;             // copies to the host
  int64_t synchronize = 0;         // ops named *synchronize*
  int64_t dynamic_shape = 0;       // nonzero, masked_select, unique*, equal
  std::map<std::string, int64_t> sync_sites;  // "<phase>:<op>" -> count
  std::map<std::string, int64_t> optimizer_top;  // top-level op names in clip + optimizer step
};

std::mutex g_mutex;
Counts g_counts;
std::set<const void*> g_host_copies;  // storages made by counted copies to the host

thread_local int t_depth = 0;          // recorded FUNCTION-scope ops open on this thread
thread_local int t_to_host_depth = 0;  // of which copies to the host
thread_local int t_fused_depth = 0;    // of which PyTorch's fused optimizer kernels

struct OpContext : at::ObserverContext {
  bool to_host = false;
  bool fused = false;
};

bool explicit_cpu_device(const at::RecordFunction& fn) {
  for (const c10::IValue& v : fn.inputs()) {
    if (v.isDevice() && v.toDevice().is_cpu()) return true;
  }
  return false;
}

const void* storage_of(const c10::IValue& v) {
  if (!v.isTensor()) return nullptr;
  const at::Tensor& t = v.toTensor();
  return t.defined() && t.has_storage() ? t.storage().data() : nullptr;
}

std::unique_ptr<at::ObserverContext> on_start(const at::RecordFunction& fn) {
  const bool top = t_depth++ == 0;
  if (!g_counting.load()) return nullptr;
  const int phase = g_phase.load();
  const std::string name = fn.name();
  auto context = std::make_unique<OpContext>();
  std::lock_guard<std::mutex> lock(g_mutex);
  Counts& c = g_counts;
  ++c.all[phase];
  if (top) ++c.top[phase];
  if (top && (phase == kClip || phase == kOptimizer)) ++c.optimizer_top[name];
  auto sync = [&] {
    ++c.syncs[phase];
    ++c.sync_sites[std::string(kPhaseNames[phase]) + ":" + name];
  };
  if (name.rfind("aten::_fused_", 0) == 0) {
    context->fused = true;
    ++t_fused_depth;
  }
  if (name == "aten::item") ++c.items;
  if (name == "aten::_local_scalar_dense") {
    ++c.scalar_dense;
    const void* storage = fn.inputs().empty() ? nullptr : storage_of(fn.inputs()[0]);
    if (phase == kReplicaMean) {
      ++c.host_items;
    } else if (t_fused_depth > 0) {
      ++c.fused_kernel_items;
    } else if (storage && g_host_copies.count(storage)) {
      ++c.items_after_copy;
    } else {
      sync();
    }
  } else if ((name == "aten::to" || name == "aten::_to_copy") && t_to_host_depth == 0 &&
             phase != kReplicaMean && explicit_cpu_device(fn)) {
    ++c.to_host;
    context->to_host = true;
    ++t_to_host_depth;
    sync();
  } else if (name.find("synchronize") != std::string::npos) {
    ++c.synchronize;
    sync();
  } else if (name == "aten::nonzero" || name == "aten::masked_select" || name == "aten::equal" ||
             name.rfind("aten::unique", 0) == 0 || name == "aten::_unique2") {
    ++c.dynamic_shape;
    sync();
  }
  return context;
}

void on_end(const at::RecordFunction& fn, at::ObserverContext* ctx) {
  --t_depth;
  auto* context = static_cast<OpContext*>(ctx);
  if (context && context->fused) --t_fused_depth;
  if (context && context->to_host) {
    --t_to_host_depth;
    std::lock_guard<std::mutex> lock(g_mutex);
    for (const c10::IValue& v : fn.outputs()) {
      if (const void* s = storage_of(v)) g_host_copies.insert(s);
    }
  }
}

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
  Counts counts;
  double step_s = 0;
  double loss = 0;
  LossMemory memory;
  int64_t top_total() const {
    int64_t n = 0;
    for (int p = 0; p < kPhases; ++p) n += counts.top[p];
    return n;
  }
  int64_t all_total() const {
    int64_t n = 0;
    for (int p = 0; p < kPhases; ++p) n += counts.all[p];
    return n;
  }
  int64_t syncs() const {
    int64_t n = 0;
    for (int p = 0; p < kPhases; ++p) n += counts.syncs[p];
    return n;
  }
  int64_t optimizer_ops() const { return counts.top[kClip] + counts.top[kOptimizer]; }
  double loss_ratio() const { return static_cast<double>(memory.peak) / memory.logits_bytes; }
};

ModelFigures run_model(const std::string& name, int64_t batch, int64_t seq, int64_t loss_tokens) {
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
    const at::Tensor y = tokens.narrow(1, 1, seq).contiguous().to(device);
    const bool counted = s == 1;
    if (counted) {
      std::lock_guard<std::mutex> lock(g_mutex);
      g_counts = Counts{};
      g_host_copies.clear();
    }
    const auto begin = Clock::now();
    g_counting = counted;
    // Trainer::train_step, line for line.
    for (auto& group : optimizer.optimizer().param_groups()) {
      group.options().set_lr(train::learning_rate(t, s));
    }
    g_phase = kStep;
    const auto out = step(dmodel, {x}, {y}, loss_fn);
    g_phase = kClip;
    const at::Tensor norm = t.grad_clip > 0 ? optimizer.clip_master_grads_tensor(t.grad_clip)
                                            : optimizer.master_grad_norm_tensor();
    g_phase = kOptimizer;
    optimizer.step();
    g_phase = kZeroGrad;
    optimizer.zero_grad();
    g_phase = kLossItem;
    const at::Tensor fetched = train::loss_and_norm(out[0].reduce_mean(), norm).cpu();
    const double local_loss = fetched[0].item<double>();
    g_phase = kReplicaMean;
    f.loss = replica_mean(local_loss);
    g_phase = kOutside;
    g_counting = false;
    f.step_s = std::chrono::duration<double>(Clock::now() - begin).count();
  }
  {
    std::lock_guard<std::mutex> lock(g_mutex);
    f.counts = g_counts;
  }
  f.memory = loss_memory(model, loss_tokens, seq);
  return f;
}

void print_model(const ModelFigures& f, int64_t batch, int64_t seq, int64_t loss_tokens) {
  const Counts& c = f.counts;
  std::printf("%s (%lld parameters, fp32, B=%lld T=%lld, %zu parameter groups), one step, "
              "%.2f s, loss %.4f:\n",
              f.name.c_str(), static_cast<long long>(f.params), static_cast<long long>(batch),
              static_cast<long long>(seq), f.groups, f.step_s, f.loss);
  std::printf("  aten ops: %lld top-level (%lld with nested);", static_cast<long long>(f.top_total()),
              static_cast<long long>(f.all_total()));
  for (int p = kStep; p < kPhases; ++p) {
    std::printf(" %s %lld (%lld)", kPhaseNames[p], static_cast<long long>(c.top[p]),
                static_cast<long long>(c.all[p]));
  }
  std::printf("\n  syncs: %lld (_local_scalar_dense %lld of which %lld on host copies, %lld in "
              "replica_mean on a host tensor and %lld inside CPU _fused_* kernels not counted; "
              "aten::item %lld; copies to host %lld; "
              "*synchronize* %lld; nonzero/masked_select/unique/equal %lld)\n",
              static_cast<long long>(f.syncs()), static_cast<long long>(c.scalar_dense),
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
              static_cast<long long>(c.top[kClip]), static_cast<long long>(c.top[kOptimizer]),
              static_cast<long long>(c.top[kZeroGrad]));
  std::vector<std::pair<int64_t, std::string>> ops;
  for (const auto& [op, n] : c.optimizer_top) ops.emplace_back(-n, op);
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
              f.name.c_str(), static_cast<long long>(f.syncs()),
              static_cast<long long>(f.optimizer_ops()),
              static_cast<double>(f.optimizer_ops()) / static_cast<double>(f.groups),
              static_cast<long long>(f.top_total()), static_cast<long long>(f.all_total()),
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
  at::enableRecordFunction(true);
  const auto handle = at::addGlobalCallback(at::RecordFunctionCallback(on_start, on_end)
                                                .needsInputs(true)
                                                .needsOutputs(true)
                                                .scopes({at::RecordScope::FUNCTION}));
  std::printf("counted: ATen ops recorded at RecordScope::FUNCTION during the second step; "
              "aten_ops = top-level ops (not inside another recorded op), nested in brackets\n");
  std::vector<ModelFigures> figures;
  for (const std::string name : {"gpt2-124m", "llama-125m"}) {
    figures.push_back(run_model(name, batch, seq, loss_tokens));
    print_model(figures.back(), batch, seq, loss_tokens);
  }
  at::removeCallback(handle);
  int64_t syncs = 0, optimizer_ops = 0, aten_ops = 0;
  double ratio = 0;
  for (const auto& f : figures) {
    syncs = std::max(syncs, f.syncs());
    optimizer_ops = std::max(optimizer_ops, f.optimizer_ops());
    aten_ops = std::max(aten_ops, f.top_total());
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
