// Executor: runs this rank's action list of a Schedule on this rank's stages.
//
// It does what the list says and nothing else: forwards and backwards of its stages, and the
// sends and receives between them over the pipeline group. Receives are posted a few actions
// ahead of the compute that needs them; sends are posted and left in flight while compute
// goes on; a microbatch's saved activations are freed as soon as its backward on a stage is
// done, and runs of layers under activation checkpointing keep only their inputs until then.
// With offloading (OffloadOptions) those inputs leave memory after the forward and come back
// `horizon` actions before the backward (SMP's offload_activations).
// Parameter gradients accumulate across microbatches (scale the loss by 1/m to average, SMP's
// average_grads_across_microbatches). Host tensors travel over MPI, device tensors over
// NCCL, by the Communicator's rule.
#pragma once

#include <functional>
#include <map>
#include <vector>

#include "smp/comm/communicator.h"
#include "smp/layer/layer.h"
#include "smp/pipeline/offload.h"
#include "smp/pipeline/schedule.h"
#include "smp/pipeline/trace_event.h"

namespace smp::pipeline {

// Activation checkpointing: layers [begin, end) of a stage run their forward without keeping
// a graph, and again, with one, right before their backward.
struct RecomputedRun {
  size_t begin = 0;
  size_t end = 0;
  bool preserve_rng_state = true;  // the recompute starts from the forward's generator states
};

// One stage held by this rank: its global index and its layers, in order.
struct StageModule {
  int stage = 0;
  std::vector<const Layer*> layers;
  std::vector<RecomputedRun> recomputed;  // ascending, disjoint; empty: every activation is kept
  std::vector<at::Tensor> parameters() const;
};

// How many times one backward of the stage accumulates into each of its parameters, by tensor
// (TensorImpl): once, except a tensor that layers share (a tied embedding) with uses on both
// sides of a recomputed run's boundary, whose parts land in separate backward walks.
std::map<const void*, int> accumulations_per_backward(const StageModule& stage);

// What one step feeds the pipeline, per microbatch.
struct StepData {
  std::vector<Values> inputs;   // consumed by stage 0
  std::vector<Values> targets;  // consumed by the loss on the last stage
  // Run on the last stage per microbatch: the model's outputs and the targets in, the values
  // to return out; the first returned value is the loss (a scalar) that backward starts from.
  // Without it the model's outputs are returned and only forward-only schedules make sense.
  std::function<Values(const Values& outputs, const Values& targets)> loss_fn;
  double loss_scale = 1.0;  // backward runs on loss * loss_scale
  at::Tensor loss_scale_tensor;  // and, when defined, * this (a 0-dim device tensor)
  // Called right before each backward action (kBackward, kBackwardInput, kBackwardWeight), e.g.
  // by data parallelism to arm its gradient hooks for the last microbatch. May be empty.
  std::function<void(const Action& action)> before_backward;
};

// What offloading did, in action indices of this rank's list (recorded when tracing): the saved
// inputs of (stage, microbatch) put away after the forward at `action`, their load started
// right before `action`, taken back right before the recompute in the backward at `action`.
struct OffloadEvent {
  enum Kind { kPut, kPrefetch, kTake } kind;
  int stage = 0;
  int microbatch = 0;
  size_t action = 0;
};

struct ExecutorResult {
  // On the rank holding the last stage: what loss_fn returned for each microbatch, detached.
  // Empty on other ranks.
  std::vector<Values> returned;
  std::vector<TraceEvent> trace;  // every action, when tracing was asked for
  std::vector<OffloadEvent> offload;  // likewise, offloading's puts, prefetches and takes
  double wall_s = 0;              // the step, start to end
  double busy_s = 0;              // time in compute actions
};

class Executor {
 public:
  // `pipe` is the pipeline group: its rank r runs schedule.per_rank[r]. `stages` holds every
  // stage the schedule puts on this rank. With `offload.enabled`, the saved inputs of recomputed
  // runs are offloaded (to a store each step makes for the stages' device) when their
  // backward is more than `offload.horizon` actions after their forward; inputs that something
  // else keeps in memory anyway (the step's own inputs, a kept segment's outputs) stay.
  Executor(comm::Communicator& pipe, const Schedule& schedule, std::vector<StageModule> stages,
           OffloadOptions offload = {});

  // Runs one step. Collective over the pipeline group. Throws smp::CommError/TimeoutError on
  // communication failures, and whatever a layer or the loss throws.
  ExecutorResult run(const StepData& data, bool trace = false);

 private:
  comm::Communicator& pipe_;
  const Schedule& schedule_;
  std::vector<StageModule> stages_;
  OffloadOptions offload_;
};

}  // namespace smp::pipeline
