// smp::step: split the batch, partition on the first call, run the pipeline, share what the
// loss returned with every pipeline rank (see step.h).
#include "smp/step.h"

#include "smp/comm/peer_failure.h"
#include "smp/core/error.h"

namespace smp {
namespace {

// Tag on the pipeline group for returned values; apart from the executor's tags by being the
// largest.
constexpr int kReturnTag = comm::Communicator::kMaxTag - 2;

// The last stage's rank sends each microbatch's returned values to every other pipeline rank.
std::vector<Values> share_returned(comm::Communicator& pipe, std::vector<Values> returned,
                                   int num_microbatches, at::Device device) {
  const int last = pipe.size() - 1;
  if (pipe.size() == 1) return returned;
  if (pipe.rank() == last) {
    std::vector<comm::Work> sends;
    for (int peer = 0; peer < last; ++peer) {
      for (const Values& values : returned) {
        sends.push_back(pipe.send(values, peer, kReturnTag));
      }
    }
    for (comm::Work& work : sends) work.wait();
    return returned;
  }
  std::vector<Values> out;
  for (int mb = 0; mb < num_microbatches; ++mb) {
    comm::Work got = pipe.recv(last, kReturnTag, device);
    got.wait();
    out.push_back(got.results());
  }
  return out;
}

}  // namespace

std::vector<StepOutput> step(DistributedModel& model, const Values& inputs, const Values& targets,
                             const LossFn& loss_fn, const StepOptions& options) {
  const int m = options.microbatches > 0 ? options.microbatches
                                         : model.context().config().microbatches;
  Values batch = inputs;
  batch.insert(batch.end(), targets.begin(), targets.end());
  std::vector<Values> split_inputs, split_targets;
  for (const Values& mb : pipeline::split_microbatches(batch, m, options.split)) {
    split_inputs.emplace_back(mb.begin(), mb.begin() + inputs.size());
    split_targets.emplace_back(mb.begin() + inputs.size(), mb.end());
  }
  const std::vector<Values> returned = step_microbatches(
      model, std::move(split_inputs), std::move(split_targets), loss_fn, options);
  std::vector<StepOutput> outputs;
  const size_t num_values = returned.empty() ? 0 : returned[0].size();
  for (size_t j = 0; j < num_values; ++j) {
    std::vector<at::Tensor> per_microbatch;
    for (const Values& values : returned) per_microbatch.push_back(values.at(j));
    outputs.emplace_back(std::move(per_microbatch));
  }
  return outputs;
}

std::vector<Values> step_microbatches(DistributedModel& model, std::vector<Values> inputs,
                                      std::vector<Values> targets, const LossFn& loss_fn,
                                      const StepOptions& options) {
  const Config& config = model.context().config();
  const int m = static_cast<int>(inputs.size());
  SMP_CHECK(m > 0);
  SMP_CHECK_EQ(targets.size(), inputs.size());
  pipeline::StepData data;
  data.inputs = std::move(inputs);
  data.targets = std::move(targets);
  data.loss_fn = loss_fn;
  if (!model.partitioned()) model.partition(data.inputs.at(0));

  // Data parallelism: the loss scaled by 1/m (and fp16's loss scale), 16-bit inputs under
  // fp16/bf16/fp16_params, gradients reduced during the last microbatch's backward and
  // finished here (on every backward_passes_per_step-th step; the others accumulate).
  dp::GradientReducer& reducer = model.gradient_reducer();
  data.loss_scale = (model.options().average_grads_across_microbatches ? 1.0 / m : 1.0) *
                    model.loss_scale();
  data.loss_scale_tensor = model.loss_scale_tensor();
  if (config.fp16 || config.bf16 || config.fp16_params) {
    for (Values& mb : data.inputs) mb = dp::cast_floating(mb, reducer.param_dtype());
  }
  const bool reduce = options.train && model.count_backward_pass();
  if (options.train) {
    reducer.begin_step(m, reduce);
    data.before_backward = [&reducer](const pipeline::Action& a) {
      if (a.kind == pipeline::ActionKind::kBackward || a.kind == pipeline::ActionKind::kBackwardWeight) {
        reducer.before_weight_backward(a.stage);  // an input-only backward accumulates nothing
      }
    };
  }
  const at::Device device = data.inputs[0].empty() ? at::Device(at::kCPU) : data.inputs[0][0].device();
  const pipeline::Schedule& schedule = model.schedule_for(m, options.train);
  // A failure here (not communication's own) is announced: the ranks waiting on this one stop
  // with its message rather than at comm_timeout_s (comm/peer_failure.h).
  const comm::StepWatch watch;
  try {
    pipeline::ExecutorResult result = model.executor_for(m, options.train)
                                          .run(data, options.trace || !model.options().timeline_dir.empty());
    if (options.train) {
      reducer.finish();
      if (reduce) model.sum_tied_gradients();  // summed once, over the passes' accumulated sum
    }
    model.record_step(result, schedule);
    return share_returned(model.context().group(CommGroup::PP_GROUP), std::move(result.returned), m,
                          device);
  } catch (const CommError&) {
    throw;
  } catch (const std::exception& e) {
    comm::announce_failure(e.what());
    throw;
  }
}

}  // namespace smp
