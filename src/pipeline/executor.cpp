// The executor: one rank's action list, run against its stages.
//
// A tuple of tensors is one message, tagged with (kind, stage, microbatch); a send goes out at
// its action, a receive is waited for at its action (its payload started as soon as its header
// was read, see Communicator). Each stage's autograd graph is its own: received
// activations become fresh leaves that require grad, and the gradients that reach those leaves
// are what the previous stage receives.
#include "smp/pipeline/executor.h"
#include "smp/pipeline/recompute.h"

#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>

#include <ATen/ATen.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/generated/variable_factories.h>

#include "smp/core/error.h"
#include "split_backward.h"

namespace smp::pipeline {

std::vector<at::Tensor> StageModule::parameters() const {
  std::vector<at::Tensor> out;
  for (const Layer* layer : layers) {
    for (const at::Tensor& p : layer->parameters) out.push_back(p);
  }
  return out;
}

namespace {

using Clock = std::chrono::steady_clock;
using Key = std::pair<int, int>;  // (stage, microbatch)

bool is_compute(ActionKind kind) {
  return kind == ActionKind::kForward || kind == ActionKind::kBackward ||
         kind == ActionKind::kBackwardInput || kind == ActionKind::kBackwardWeight;
}
int64_t nbytes(const Values& values) {
  int64_t n = 0;
  for (const at::Tensor& t : values) n += t.defined() ? static_cast<int64_t>(t.nbytes()) : 0;
  return n;
}

// Activations for stage s travel tagged with s; gradients for stage s (from s + 1) likewise.
int tag_for(bool grad, int stage, int microbatch, int num_stages) {
  const int64_t tag = ((static_cast<int64_t>(microbatch) * num_stages + stage) * 2 + grad);
  return static_cast<int>(tag % comm::Communicator::kMaxTag);
}

Values detached(const Values& values) {
  Values out;
  for (const at::Tensor& t : values) out.push_back(t.defined() ? t.detach() : t);
  return out;
}

// A run of a stage's layers whose graph backward walks on its own: the whole stage, or, with
// activation checkpointing, each recomputed run and the runs of kept layers between them. Where
// one segment ends and the next begins, the values become fresh leaves (as between stages).
struct Segment {
  size_t begin = 0;  // layers [begin, end) of the stage
  size_t end = 0;
  bool recomputed = false;  // the forward kept no graph; backward runs it again first
  bool preserve_rng = true;
  bool offloaded = false;  // `inputs` wait in the activation store until the recompute
  Values inputs;   // the stage's inputs (first segment) or leaves made of the previous outputs
  Values outputs;  // with graph (a recomputed segment's once recomputed); on the last stage's
                   // last segment, {loss * scale}
  Values grads;    // gradients of `outputs`, kept for the weight half of a split backward
  RngState rng;    // recomputed: the generators as its forward found them
  std::optional<SplitBackward> split;  // after an input half: where its weight half starts
};

// What a stage keeps from its forward for its backward.
struct Saved {
  std::vector<Segment> segments;
};

// The segments of a stage: kept runs and recomputed runs, in order. The loss is computed on a
// kept segment (one without layers when the stage ends in a recomputed run).
std::vector<Segment> plan_segments(const StageModule& stage, bool loss_here) {
  std::vector<Segment> out;
  size_t next = 0;
  for (const RecomputedRun& run : stage.recomputed) {
    if (next < run.begin) out.push_back({next, run.begin});
    Segment segment{run.begin, run.end, true, run.preserve_rng_state};
    out.push_back(std::move(segment));
    next = run.end;
  }
  if (next < stage.layers.size() || out.empty() || (loss_here && out.back().recomputed)) {
    out.push_back({next, stage.layers.size()});
  }
  return out;
}

// Whether offloading puts segment k's inputs away: a recomputed segment's, unless something
// else keeps them in memory anyway (the step's own inputs on stage 0, a kept segment's outputs).
bool offloads_inputs(const std::vector<Segment>& segments, size_t k, int stage) {
  if (!segments[k].recomputed) return false;
  return k == 0 ? stage > 0 : segments[k - 1].recomputed;
}

ActivationStore::Key store_key(const Key& key, size_t segment) {
  return (static_cast<int64_t>(key.first) << 40) | (static_cast<int64_t>(key.second) << 16) |
         static_cast<int64_t>(segment);
}

}  // namespace

std::map<const void*, int> accumulations_per_backward(const StageModule& stage) {
  std::map<const void*, int> count;
  for (const Segment& segment : plan_segments(stage, /*loss_here=*/false)) {
    std::set<const void*> in_segment;
    for (size_t i = segment.begin; i < segment.end; ++i) {
      for (const at::Tensor& p : stage.layers[i]->parameters) {
        in_segment.insert(p.unsafeGetTensorImpl());
      }
    }
    for (const void* p : in_segment) ++count[p];
  }
  return count;
}

namespace {

class Run {
 public:
  Run(comm::Communicator& pipe, const Schedule& schedule,
      const std::map<int, const StageModule*>& stages, const StepData& data, bool trace,
      const OffloadOptions& offload)
      : pipe_(pipe), schedule_(schedule), stages_(stages), data_(data), trace_(trace),
        start_(Clock::now()) {
    const int m = static_cast<int>(data.inputs.size());
    result_.returned.resize(schedule.num_stages - 1 == last_local_stage() ? m : 0);
    device_ = find_device();
    for (const Action& a : schedule.per_rank[pipe.rank()]) {
      if (a.kind == ActionKind::kBackward || a.kind == ActionKind::kBackwardInput) has_backward_ = true;
    }
    if (offload.enabled && has_backward_) plan_offload(offload);
  }

  ExecutorResult go() {
    const auto& actions = schedule_.per_rank[pipe_.rank()];
    for (size_t i = 0; i < actions.size(); ++i) {
      action_ = i;
      if (i < prefetch_before_.size()) {
        for (const Key& key : prefetch_before_[i]) prefetch(key);
      }
      const double begin = now();
      int64_t bytes = 0;
      execute(actions[i], &bytes);
      const double end = now();
      if (is_compute(actions[i].kind)) result_.busy_s += end - begin;
      if (trace_) result_.trace.push_back({actions[i], begin, end, bytes});
      pipe_.progress();
    }
    for (comm::Work& work : sends_) work.wait();
    result_.wall_s = now();
    return std::move(result_);
  }

 private:
  // Where received tensors go: where this rank's parameters live, else where its inputs do.
  at::Device find_device() const {
    for (const auto& [stage, module] : stages_) {
      for (const at::Tensor& p : module->parameters()) return p.device();
    }
    for (const auto& mb : data_.inputs) {
      for (const at::Tensor& t : mb) {
        if (t.defined()) return t.device();
      }
    }
    return at::kCPU;
  }

  // Offloading's plan: the (stage, microbatch) whose backward comes more than `horizon` actions
  // after their forward put their recomputed inputs away, and the load of each starts right
  // before the action `horizon` places ahead of its backward.
  void plan_offload(const OffloadOptions& offload) {
    std::set<int> offloading_stages;
    for (const auto& [stage, module] : stages_) {
      const bool loss_here = stage == num_stages() - 1 && data_.loss_fn;
      const std::vector<Segment> segments = plan_segments(*module, loss_here);
      for (size_t k = 0; k < segments.size(); ++k) {
        if (offloads_inputs(segments, k, stage)) offloading_stages.insert(stage);
      }
    }
    if (offloading_stages.empty()) return;
    store_ = make_activation_store(device_, offload.directory);
    const auto& actions = schedule_.per_rank[pipe_.rank()];
    const size_t horizon = static_cast<size_t>(offload.horizon);
    prefetch_before_.resize(actions.size());
    std::map<Key, size_t> forward_at;
    for (size_t i = 0; i < actions.size(); ++i) {
      const Action& a = actions[i];
      const Key key{a.stage, a.microbatch};
      if (a.kind == ActionKind::kForward) forward_at[key] = i;
      const bool backward = a.kind == ActionKind::kBackward || a.kind == ActionKind::kBackwardInput;
      if (backward && offloading_stages.count(a.stage) && i - forward_at.at(key) > horizon) {
        offloaded_.insert(key);
        prefetch_before_[i - horizon].push_back(key);
      }
    }
  }

  void note(OffloadEvent::Kind kind, const Key& key) {
    if (trace_) result_.offload.push_back({kind, key.first, key.second, action_});
  }

  void offload(const Key& key, std::vector<Segment>& segments) {
    for (size_t k = 0; k < segments.size(); ++k) {
      if (!offloads_inputs(segments, k, key.first)) continue;
      store_->put(store_key(key, k), std::move(segments[k].inputs));
      segments[k].inputs.clear();
      segments[k].offloaded = true;
    }
    note(OffloadEvent::kPut, key);
  }

  void prefetch(const Key& key) {
    const std::vector<Segment>& segments = saved_.at(key).segments;
    for (size_t k = 0; k < segments.size(); ++k) {
      if (segments[k].offloaded) store_->prefetch(store_key(key, k));
    }
    note(OffloadEvent::kPrefetch, key);
  }

  double now() const { return std::chrono::duration<double>(Clock::now() - start_).count(); }
  int last_local_stage() const { return stages_.empty() ? -1 : stages_.rbegin()->first; }
  int num_stages() const { return schedule_.num_stages; }
  bool local(int stage) const { return stages_.count(stage) > 0; }

  void execute(const Action& a, int64_t* bytes) {
    const Key key{a.stage, a.microbatch};
    if (data_.before_backward && is_compute(a.kind) && a.kind != ActionKind::kForward) {
      data_.before_backward(a);
    }
    switch (a.kind) {
      case ActionKind::kForward: return forward(key);
      case ActionKind::kBackward: return backward(key, /*input=*/true, /*weight=*/true);
      case ActionKind::kBackwardInput: return backward(key, true, false);
      case ActionKind::kBackwardWeight: return backward(key, false, true);
      case ActionKind::kSendActivation:  // the activation for stage s + 1, made by stage s
        *bytes = nbytes(outbox_act_.at(key));
        sends_.push_back(pipe_.send(outbox_act_.at(key), a.peer,
                                    tag_for(false, a.stage + 1, a.microbatch, num_stages())));
        outbox_act_.erase(key);
        return;
      case ActionKind::kSendGrad:
        *bytes = nbytes(outbox_grad_.at(key));
        sends_.push_back(pipe_.send(outbox_grad_.at(key), a.peer,
                                    tag_for(true, a.stage - 1, a.microbatch, num_stages())));
        outbox_grad_.erase(key);
        return;
      case ActionKind::kRecvActivation:
      case ActionKind::kRecvGrad: {
        const bool grad = a.kind == ActionKind::kRecvGrad;
        comm::Work work =
            pipe_.recv(a.peer, tag_for(grad, a.stage, a.microbatch, num_stages()), device_);
        work.wait();
        Values values = work.results();
        *bytes = nbytes(values);
        (a.kind == ActionKind::kRecvGrad ? grads_in_ : acts_in_)[key] = std::move(values);
        return;
      }
    }
  }

  void forward(const Key& key) {
    const auto [stage, mb] = key;
    const StageModule& module = *stages_.at(stage);
    const bool last = stage == num_stages() - 1;
    Saved scratch;  // forward-only steps keep nothing past the forward, and build no graph
    Saved& saved = has_backward_ ? saved_[key] : scratch;
    std::optional<at::NoGradGuard> no_graph_at_all;
    if (!has_backward_) no_graph_at_all.emplace();
    if (has_backward_) {
      saved.segments = plan_segments(module, last && data_.loss_fn);
    } else {
      saved.segments = {Segment{0, module.layers.size()}};
    }
    Values x;
    if (stage == 0) {
      x = data_.inputs.at(mb);
    } else {
      x = detach_as_leaves(acts_in_.at(key));
      acts_in_.erase(key);
    }
    for (size_t k = 0; k < saved.segments.size(); ++k) {
      Segment& segment = saved.segments[k];
      segment.inputs = k == 0 ? x : detach_as_leaves(x);
      x = segment.inputs;
      if (segment.recomputed) {
        if (segment.preserve_rng) {
          segment.rng = capture_rng(module.layers, segment.begin, segment.end, device_);
        }
        at::NoGradGuard no_graph;
        for (size_t i = segment.begin; i < segment.end; ++i) x = module.layers[i]->forward(x);
      } else {
        for (size_t i = segment.begin; i < segment.end; ++i) x = module.layers[i]->forward(x);
        segment.outputs = x;
      }
    }
    if (offloaded_.count(key)) offload(key, saved.segments);

    if (last) {
      Segment& tail = saved.segments.back();
      tail.outputs.clear();
      Values returned = data_.loss_fn ? data_.loss_fn(x, data_.targets.at(mb)) : x;
      if (data_.loss_fn && !returned.empty() && returned[0].requires_grad()) {
        // The device factor first: a power of two (fp16's dynamic scale), so the product
        // rounds as loss * (loss_scale * factor) did with the factor on the host.
        const at::Tensor scaled = data_.loss_scale_tensor.defined()
                                      ? returned[0] * data_.loss_scale_tensor
                                      : returned[0];
        tail.outputs = {scaled * data_.loss_scale};
      }
      result_.returned.at(mb) = detached(returned);
      return;
    }
    if (local(stage + 1)) {
      acts_in_[{stage + 1, mb}] = detached(x);
    } else {
      outbox_act_[key] = detached(x);
    }
  }

  // Runs a recomputed segment's layers again, now keeping the graph, from the generator states
  // its forward found (then puts the generators back as they were).
  void recompute(Segment& segment, const StageModule& module) {
    std::optional<RngState> now;
    if (segment.preserve_rng) {
      now = capture_rng(module.layers, segment.begin, segment.end, device_);
      restore_rng(segment.rng);
    }
    {
      at::AutoGradMode graph(true);
      RecomputeScope recomputing;
      Values x = segment.inputs;
      for (size_t i = segment.begin; i < segment.end; ++i) x = module.layers[i]->forward(x);
      segment.outputs = std::move(x);
    }
    if (now) restore_rng(*now);
  }

  // A segment's outputs that take part in backward, and their gradients. The last stage's last
  // segment holds the loss, whose gradient is implicitly 1.
  static std::pair<Values, Values> roots_of(const Segment& segment, bool loss) {
    if (loss) return {segment.outputs, Values(segment.outputs.size())};
    Values roots;
    Values grads;
    for (size_t i = 0; i < segment.outputs.size(); ++i) {
      const at::Tensor& out = segment.outputs[i];
      if (out.defined() && out.requires_grad() && i < segment.grads.size() &&
          segment.grads[i].defined()) {
        roots.push_back(out);
        grads.push_back(segment.grads[i]);
      }
    }
    return {roots, grads};
  }

  // The input half walks the segments from the last to the first (recomputing where needed),
  // handing each one's input gradients to the one before; the weight half (alone, after a split
  // input half) walks each segment's kept graph once more for the parameters.
  void backward(const Key& key, bool input, bool weight) {
    const auto [stage, mb] = key;
    const StageModule& module = *stages_.at(stage);
    std::vector<Segment>& segments = saved_.at(key).segments;
    const bool last = stage == num_stages() - 1;
    std::vector<at::Tensor> params;  // what the weight half (or a split's planning) reaches
    if (!(input && weight)) {
      for (const at::Tensor& p : module.parameters()) {
        if (p.requires_grad()) params.push_back(p);
      }
    }
    if (!input) {
      for (size_t k = 0; k < segments.size() && !params.empty(); ++k) {
        if (segments[k].split) {
          weight_half(*segments[k].split);
          continue;
        }
        auto [roots, grads] = roots_of(segments[k], last && k + 1 == segments.size());
        if (roots.empty()) continue;
        torch::autograd::backward(roots, grads, /*keep_graph=*/false, /*create_graph=*/false,
                                  params);
      }
      saved_.erase(key);
      return;
    }

    Values grads_out;  // gradients of the current segment's outputs
    if (!last) {
      grads_out = grads_in_.at(key);
      grads_in_.erase(key);
    }
    if (offloaded_.count(key)) note(OffloadEvent::kTake, key);
    for (size_t k = segments.size(); k-- > 0;) {
      Segment& segment = segments[k];
      if (segment.offloaded) {  // waited for right before its recompute
        segment.inputs = detach_as_leaves(store_->take(store_key(key, k)));
        segment.offloaded = false;
      }
      if (segment.recomputed) recompute(segment, module);
      segment.grads = std::move(grads_out);
      auto [roots, grads] = roots_of(segment, last && k + 1 == segments.size());
      // Leaves whose gradients are wanted: every segment's inputs but the user's own.
      const bool want_inputs = stage > 0 || k > 0;
      Values input_grads(segment.inputs.size());
      std::vector<size_t> leaf_index;
      Values leaves;
      for (size_t i = 0; i < segment.inputs.size() && want_inputs; ++i) {
        if (segment.inputs[i].defined() && segment.inputs[i].requires_grad()) {
          leaf_index.push_back(i);
          leaves.push_back(segment.inputs[i]);
        }
      }
      if (!roots.empty() && weight) {
        torch::autograd::backward(roots, grads);
        for (size_t i : leaf_index) input_grads[i] = segment.inputs[i].grad();
      } else if (!roots.empty() && !leaves.empty()) {
        // Input gradients only; the graph stays for the weight half.
        auto [got, split] = input_half(roots, grads, leaves, params);
        segment.split = std::move(split);
        for (size_t j = 0; j < leaf_index.size(); ++j) input_grads[leaf_index[j]] = got[j];
      }
      grads_out = std::move(input_grads);
      // A full backward is done with this segment: drop what it held (its recomputed
      // activations, the gradients it was given, its leaves) before the next one recomputes.
      if (weight) segment = Segment{segment.begin, segment.end, segment.recomputed};
    }
    if (stage > 0) {
      if (local(stage - 1)) {
        grads_in_[{stage - 1, mb}] = std::move(grads_out);
      } else {
        outbox_grad_[key] = std::move(grads_out);
      }
    }
    if (weight) saved_.erase(key);  // the microbatch's activations on this stage are freed
  }

  comm::Communicator& pipe_;
  const Schedule& schedule_;
  const std::map<int, const StageModule*>& stages_;
  const StepData& data_;
  bool trace_;
  Clock::time_point start_;
  ExecutorResult result_;
  at::Device device_ = at::kCPU;
  bool has_backward_ = false;  // this rank's schedule runs backwards (else nothing is saved)
  size_t action_ = 0;          // the index of the action running

  std::unique_ptr<ActivationStore> store_;  // when offloading
  std::set<Key> offloaded_;                  // what puts its recomputed inputs away
  std::vector<std::vector<Key>> prefetch_before_;  // by action index: loads to start

  std::map<Key, Saved> saved_;
  std::map<Key, Values> acts_in_;      // forward inputs that arrived, by (stage, microbatch)
  std::map<Key, Values> grads_in_;     // output gradients that arrived
  std::map<Key, Values> outbox_act_;   // forward outputs waiting for their send action
  std::map<Key, Values> outbox_grad_;  // input gradients waiting for their send action
  std::vector<comm::Work> sends_;
};

}  // namespace

Executor::Executor(comm::Communicator& pipe, const Schedule& schedule,
                   std::vector<StageModule> stages, OffloadOptions offload)
    : pipe_(pipe), schedule_(schedule), stages_(std::move(stages)), offload_(std::move(offload)) {
  if (pipe.size() != schedule.spec.num_ranks) {
    throw ConfigError("pipeline: the schedule is for " + std::to_string(schedule.spec.num_ranks) +
                      " ranks but the pipeline group has " + std::to_string(pipe.size()));
  }
}

ExecutorResult Executor::run(const StepData& data, bool trace) {
  std::map<int, const StageModule*> by_stage;
  for (const StageModule& s : stages_) by_stage[s.stage] = &s;
  return Run(pipe_, schedule_, by_stage, data, trace, offload_).go();
}

}  // namespace smp::pipeline
