// smp::step: one training (or evaluation) step through the pipeline (SMP's @smp.step).
//
// SMP's step decorates a function run once per microbatch; here the per-microbatch part is the
// loss function, run on the last stage:
//
//   auto loss_fn = [](const Values& out, const Values& targets) -> Values {
//     return {at::cross_entropy_loss(out[0], targets[0])};   // first value: the loss
//   };
//   std::vector<smp::StepOutput> out = smp::step(model, {tokens}, {labels}, loss_fn);
//   float loss = out[0].reduce_mean().item<float>();
//
// Every tensor of inputs and targets is split into config().microbatches along its batch axis
// (StepOptions::split indexes inputs first, then targets). Stage 0 gets the inputs; the loss
// function gets the last stage's outputs and the targets. Backward runs inside the step;
// gradients accumulate in the data-parallel gradient buffers (averaged over microbatches by
// default; fp32 .grads are views of them, while under fp16/bf16 each microbatch's 16-bit .grad
// is added into the fp32 buffers and released) and, with ddp, are averaged over data-parallel
// replicas inside the step (overlapped with the last microbatch's backward), as SMP's
// DistributedModel does; optimizer steps and clipping happen outside
// (smp::DistributedOptimizer). What the loss function returns reaches every rank of the
// pipeline as StepOutputs, one per value.
#pragma once

#include <functional>
#include <vector>

#include "smp/distributed_model.h"
#include "smp/pipeline/microbatch.h"

namespace smp {

using LossFn = std::function<Values(const Values& outputs, const Values& targets)>;

struct StepOptions {
  pipeline::SplitSpec split;  // SMP's input_split_axes / non_split_inputs
  bool train = true;          // false: forward only (no backward), for evaluation
  int microbatches = 0;       // 0: config().microbatches; e.g. 1 to generate from one prompt
  bool trace = false;         // keep this step's actions for model.last_trace()
};

// Collective over the world (every rank calls it with the same batch).
std::vector<StepOutput> step(DistributedModel& model, const Values& inputs, const Values& targets,
                             const LossFn& loss_fn, const StepOptions& options = {});

// The same step on a batch already split: inputs[k] and targets[k] are microbatch k's (the
// Python front splits its own arguments). Returns what the loss function returned for each
// microbatch, on every pipeline rank. options.split is not used.
std::vector<Values> step_microbatches(DistributedModel& model, std::vector<Values> inputs,
                                      std::vector<Values> targets, const LossFn& loss_fn,
                                      const StepOptions& options = {});

}  // namespace smp
