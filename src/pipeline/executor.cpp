// The executor: one rank's action list, run against its stages.
//
// Tuples of tensors travel as one small "manifest" message (which positions hold a tensor)
// followed by one message per tensor, all on a tag made from (kind, stage, microbatch); the
// Communicator's per-peer ordering keeps them in order. Each stage's autograd graph is its
// own: received activations become fresh leaves that require grad, and the gradients that
// reach those leaves are what the previous stage receives.
#include "smp/pipeline/executor.h"

#include <chrono>
#include <deque>
#include <map>
#include <set>
#include <memory>

#include <ATen/ATen.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/generated/variable_factories.h>

#include "smp/error.h"
#include "values_p2p.h"

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

constexpr int kLookahead = 4;  // receives are posted this many actions ahead

bool is_compute(ActionKind kind) {
  return kind == ActionKind::kForward || kind == ActionKind::kBackward ||
         kind == ActionKind::kBackwardInput || kind == ActionKind::kBackwardWeight;
}
bool is_recv(ActionKind kind) {
  return kind == ActionKind::kRecvActivation || kind == ActionKind::kRecvGrad;
}

// Activations for stage s travel tagged with s; gradients for stage s (from s + 1) likewise.
int tag_for(bool grad, int stage, int microbatch, int num_stages) {
  const int64_t tag = ((static_cast<int64_t>(microbatch) * num_stages + stage) * 2 + grad);
  return static_cast<int>(tag % comm::Communicator::kMaxTag);
}

// Received activations become leaves whose gradients the previous stage will want.
Values as_leaves(const Values& values) {
  Values out;
  for (const at::Tensor& t : values) {
    if (!t.defined()) {
      out.emplace_back();
      continue;
    }
    at::Tensor leaf = t.detach();
    if (at::isFloatingType(leaf.scalar_type())) leaf.requires_grad_(true);
    out.push_back(leaf);
  }
  return out;
}

Values detached(const Values& values) {
  Values out;
  for (const at::Tensor& t : values) out.push_back(t.defined() ? t.detach() : t);
  return out;
}

// What a stage keeps from its forward for its backward.
struct Saved {
  Values inputs;    // leaves (stages > 0) or the user's inputs (stage 0)
  Values outputs;   // with graph; for the last stage, {loss * scale}
  Values grads;     // output gradients, for the weight half of a split backward
};

class Run {
 public:
  Run(comm::Communicator& pipe, const Schedule& schedule,
      const std::map<int, const StageModule*>& stages, const StepData& data, bool trace)
      : pipe_(pipe), schedule_(schedule), stages_(stages), data_(data), trace_(trace),
        start_(Clock::now()) {
    const int m = static_cast<int>(data.inputs.size());
    result_.returned.resize(schedule.num_stages - 1 == last_local_stage() ? m : 0);
    device_ = find_device();
    for (const Action& a : schedule.per_rank[pipe.rank()]) {
      if (a.kind == ActionKind::kBackward || a.kind == ActionKind::kBackwardInput) has_backward_ = true;
    }
  }

  ExecutorResult go() {
    const auto& actions = schedule_.per_rank[pipe_.rank()];
    for (size_t i = 0; i < actions.size(); ++i) {
      post_receives(actions, i);
      const double begin = now();
      int64_t bytes = 0;
      execute(actions[i], &bytes);
      const double end = now();
      if (is_compute(actions[i].kind)) result_.busy_s += end - begin;
      if (trace_) result_.trace.push_back({actions[i], begin, end, bytes});
      for (auto& [key, recv] : pending_) recv->progress();
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

  double now() const { return std::chrono::duration<double>(Clock::now() - start_).count(); }
  int last_local_stage() const { return stages_.empty() ? -1 : stages_.rbegin()->first; }
  int num_stages() const { return schedule_.num_stages; }
  bool local(int stage) const { return stages_.count(stage) > 0; }

  // Posts the receives among the next kLookahead actions that are not posted yet.
  void post_receives(const std::vector<Action>& actions, size_t from) {
    for (size_t j = from; j < actions.size() && j < from + kLookahead; ++j) {
      const Action& a = actions[j];
      if (!is_recv(a.kind)) continue;
      const bool grad = a.kind == ActionKind::kRecvGrad;
      const Key key{a.stage * 2 + grad, a.microbatch};
      if (pending_.count(key) || posted_.count(key)) continue;
      pending_[key] = std::make_unique<ValuesRecv>(
          pipe_, a.peer, tag_for(grad, a.stage, a.microbatch, num_stages()), device_);
      posted_.insert(key);
    }
  }

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
      case ActionKind::kSendActivation: {
        // The activation for stage s + 1, produced by stage s.
        auto sent = send_values(pipe_, outbox_act_.at(key), a.peer,
                                tag_for(false, a.stage + 1, a.microbatch, num_stages()), bytes);
        outbox_act_.erase(key);
        sends_.insert(sends_.end(), sent.begin(), sent.end());
        return;
      }
      case ActionKind::kSendGrad: {
        auto sent = send_values(pipe_, outbox_grad_.at(key), a.peer,
                                tag_for(true, a.stage - 1, a.microbatch, num_stages()), bytes);
        outbox_grad_.erase(key);
        sends_.insert(sends_.end(), sent.begin(), sent.end());
        return;
      }
      case ActionKind::kRecvActivation:
      case ActionKind::kRecvGrad: {
        const bool grad = a.kind == ActionKind::kRecvGrad;
        const Key slot{a.stage * 2 + grad, a.microbatch};
        Values values = pending_.at(slot)->wait(bytes);
        pending_.erase(slot);
        (grad ? grads_in_ : acts_in_)[key] = std::move(values);
        return;
      }
    }
  }

  void forward(const Key& key) {
    const auto [stage, mb] = key;
    Saved scratch;  // forward-only steps keep nothing past the forward
    Saved& saved = has_backward_ ? saved_[key] : scratch;
    if (stage == 0) {
      saved.inputs = data_.inputs.at(mb);
    } else {
      saved.inputs = as_leaves(acts_in_.at(key));
      acts_in_.erase(key);
    }
    Values x = saved.inputs;
    for (const Layer* layer : stages_.at(stage)->layers) x = layer->forward(x);

    if (stage == num_stages() - 1) {
      Values returned = data_.loss_fn ? data_.loss_fn(x, data_.targets.at(mb)) : x;
      if (data_.loss_fn && !returned.empty() && returned[0].requires_grad()) {
        saved.outputs = {returned[0] * data_.loss_scale};
      }
      result_.returned.at(mb) = detached(returned);
      return;
    }
    saved.outputs = x;
    if (local(stage + 1)) {
      acts_in_[{stage + 1, mb}] = detached(x);
    } else {
      outbox_act_[key] = detached(x);
    }
  }

  // Output tensors that take part in backward, and their gradients.
  std::pair<Values, Values> backward_roots(const Key& key, Saved& saved) {
    Values roots;
    Values grads;
    const bool last = key.first == num_stages() - 1;
    if (last) {
      roots = saved.outputs;  // {loss}: its gradient is implicitly 1
      grads = Values(roots.size());
      return {roots, grads};
    }
    if (saved.grads.empty()) {
      saved.grads = grads_in_.at(key);
      grads_in_.erase(key);
    }
    for (size_t i = 0; i < saved.outputs.size(); ++i) {
      const at::Tensor& out = saved.outputs[i];
      if (out.defined() && out.requires_grad() && i < saved.grads.size() &&
          saved.grads[i].defined()) {
        roots.push_back(out);
        grads.push_back(saved.grads[i]);
      }
    }
    return {roots, grads};
  }

  void backward(const Key& key, bool input, bool weight) {
    const auto [stage, mb] = key;
    Saved& saved = saved_.at(key);
    auto [roots, grads] = backward_roots(key, saved);
    Values leaves;
    for (const at::Tensor& t : saved.inputs) {
      if (stage > 0 && t.defined() && t.requires_grad()) leaves.push_back(t);
    }
    Values input_grads(saved.inputs.size());
    if (!roots.empty()) {
      if (input && weight) {
        torch::autograd::backward(roots, grads);
        for (size_t i = 0; i < saved.inputs.size(); ++i) {
          if (stage > 0 && saved.inputs[i].defined() && saved.inputs[i].requires_grad()) {
            input_grads[i] = saved.inputs[i].grad();
          }
        }
      } else if (input) {
        // Input gradients only; the graph stays for the weight half.
        if (!leaves.empty()) {
          Values got = torch::autograd::grad(roots, leaves, grads, /*retain_graph=*/true,
                                             /*create_graph=*/false, /*allow_unused=*/true);
          size_t j = 0;
          for (size_t i = 0; i < saved.inputs.size(); ++i) {
            if (stage > 0 && saved.inputs[i].defined() && saved.inputs[i].requires_grad()) {
              input_grads[i] = got[j++];
            }
          }
        }
      } else {
        std::vector<at::Tensor> params;
        for (const at::Tensor& p : stages_.at(stage)->parameters()) {
          if (p.requires_grad()) params.push_back(p);
        }
        if (!params.empty()) {
          torch::autograd::backward(roots, grads, /*keep_graph=*/false, /*create_graph=*/false,
                                    params);
        }
      }
    }
    if (input && stage > 0) {
      if (local(stage - 1)) {
        grads_in_[{stage - 1, mb}] = input_grads;
      } else {
        outbox_grad_[key] = input_grads;
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

  std::map<Key, Saved> saved_;
  std::map<Key, Values> acts_in_;      // forward inputs that arrived, by (stage, microbatch)
  std::map<Key, Values> grads_in_;     // output gradients that arrived
  std::map<Key, Values> outbox_act_;   // forward outputs waiting for their send action
  std::map<Key, Values> outbox_grad_;  // input gradients waiting for their send action
  std::map<Key, std::unique_ptr<ValuesRecv>> pending_;  // posted receives, by (2 stage + grad, mb)
  std::set<Key> posted_;
  std::vector<comm::Work> sends_;
};

}  // namespace

Executor::Executor(comm::Communicator& pipe, const Schedule& schedule,
                   std::vector<StageModule> stages)
    : pipe_(pipe), schedule_(schedule), stages_(std::move(stages)) {
  if (pipe.size() != schedule.spec.num_ranks) {
    throw ConfigError("pipeline: the schedule is for " + std::to_string(schedule.spec.num_ranks) +
                      " ranks but the pipeline group has " + std::to_string(pipe.size()));
  }
}

ExecutorResult Executor::run(const StepData& data, bool trace) {
  std::map<int, const StageModule*> by_stage;
  for (const StageModule& s : stages_) by_stage[s.stage] = &s;
  return Run(pipe_, schedule_, by_stage, data, trace).go();
}

}  // namespace smp::pipeline
