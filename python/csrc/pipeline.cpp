// The engine's pure pipeline pieces and its point-to-point transport, bound for fronts that run
// their own stages (smp.tensorflow: Keras layers run by TensorFlow, not by the engine's
// executor). The schedule is the engine's IR (the same lists the executor runs), the split the
// engine's partitioner, and tensors cross ranks over the engine's communicators.
#include <ATen/ATen.h>
#include <torch/csrc/utils/pybind.h>

#include "smp/pipeline/partition.h"
#include "smp/pipeline/schedule.h"
#include "smp/runtime.h"

namespace smp::python {

namespace {

using namespace smp::pipeline;

ScheduleKind schedule_kind(const std::string& name) {
  if (name == "simple") return ScheduleKind::kSimple;
  if (name == "interleaved") return ScheduleKind::kOneFOneB;
  if (name == "_only_forward") return ScheduleKind::kForwardOnly;
  if (name == "zero_bubble") return ScheduleKind::kZeroBubble;
  throw ConfigError("schedule kind \"" + name +
                    "\": not known; allowed: simple, interleaved, _only_forward, zero_bubble");
}

// One rank's actions, in order, as (kind, stage, microbatch, peer) with kind one of
// "forward", "backward", "send_activation", "recv_activation", "send_grad", "recv_grad"
// (zero_bubble adds "backward_input" and "backward_weight"). peer is a pipeline rank, -1 for
// compute actions.
std::vector<std::tuple<std::string, int, int, int>> schedule_actions(
    const std::string& kind, int num_ranks, int num_microbatches, int active_microbatches,
    int rank) {
  ScheduleSpec spec;
  spec.kind = schedule_kind(kind);
  spec.num_ranks = num_ranks;
  spec.num_microbatches = num_microbatches;
  spec.active_microbatches = active_microbatches;
  Schedule schedule = make_schedule(spec);
  if (rank < 0 || rank >= num_ranks) {
    throw ConfigError("schedule rank " + std::to_string(rank) + ": allowed 0.." +
                      std::to_string(num_ranks - 1));
  }
  std::vector<std::tuple<std::string, int, int, int>> out;
  for (const Action& a : schedule.per_rank[rank]) {
    const char* name = "";
    switch (a.kind) {
      case ActionKind::kForward: name = "forward"; break;
      case ActionKind::kBackward: name = "backward"; break;
      case ActionKind::kBackwardInput: name = "backward_input"; break;
      case ActionKind::kBackwardWeight: name = "backward_weight"; break;
      case ActionKind::kSendActivation: name = "send_activation"; break;
      case ActionKind::kRecvActivation: name = "recv_activation"; break;
      case ActionKind::kSendGrad: name = "send_grad"; break;
      case ActionKind::kRecvGrad: name = "recv_grad"; break;
    }
    out.emplace_back(name, a.stage, a.microbatch, a.peer);
  }
  return out;
}

// Layers given as (name, time_s, param_bytes, activation_bytes, num_params).
using CostSpec = std::tuple<std::string, double, int64_t, int64_t, int64_t>;

std::vector<LayerCost> layer_costs_of(const std::vector<CostSpec>& specs) {
  std::vector<LayerCost> layers;
  for (const auto& [name, time_s, param_bytes, activation_bytes, num_params] : specs) {
    LayerCost c;
    c.name = name;
    c.time_s = time_s;
    c.param_bytes = param_bytes;
    c.activation_bytes = activation_bytes;
    c.num_params = num_params;
    layers.push_back(c);
  }
  return layers;
}

// (stage of each layer, SMP's "Partition assignments" log).
std::pair<std::vector<int>, std::string> auto_split(const std::vector<CostSpec>& specs,
                                                    int num_stages, double memory_weight) {
  std::vector<LayerCost> layers = layer_costs_of(specs);
  Partition p = auto_partition(layers, num_stages, memory_weight);
  return {p.stage_of_layer, describe(p, layers)};
}

std::pair<std::vector<int>, std::string> manual_split(const std::vector<CostSpec>& specs,
                                                      const std::vector<int>& stage_per_layer,
                                                      int num_stages, int default_partition) {
  std::vector<LayerCost> layers = layer_costs_of(specs);
  Partition p = manual_partition(stage_per_layer, num_stages, default_partition, layers);
  return {p.stage_of_layer, describe(p, layers)};
}

}  // namespace

void bind_pipeline(py::module& m) {
  m.def("schedule_actions", &schedule_actions, py::arg("kind"), py::arg("num_ranks"),
        py::arg("num_microbatches"), py::arg("active_microbatches"), py::arg("rank"));
  m.def("auto_partition", &auto_split, py::arg("layers"), py::arg("num_stages"),
        py::arg("memory_weight"));
  m.def("manual_partition", &manual_split, py::arg("layers"), py::arg("stage_per_layer"),
        py::arg("num_stages"), py::arg("default_partition"));

  // Point to point within a group (peer: a group rank; only the two ranks call). A message is
  // a list of host tensors; the receiver need not know their shapes. The receive waits with the
  // GIL released; a send returns a Work at once: wait for it before the step ends (sends do not
  // wait for their receives, so two ranks' sends never deadlock on each other).
  py::class_<comm::Work>(m, "Work")
      .def("wait", [](comm::Work& w) { w.wait(); }, py::call_guard<py::gil_scoped_release>());
  m.def("send_tensors", [](std::vector<at::Tensor> tensors, int peer, CommGroup g, int tag) {
    py::gil_scoped_release nogil;
    return process_group(g).send(tensors, peer, tag);
  }, py::arg("tensors"), py::arg("peer"), py::arg("group"), py::arg("tag") = 0,
     "Starts the send and returns its Work (it keeps the tensors alive until done).");
  m.def("recv_tensors", [](int peer, CommGroup g, int tag) {
    std::vector<at::Tensor> out;
    {
      py::gil_scoped_release nogil;
      comm::Work work = process_group(g).recv(peer, tag);
      work.wait();
      out = work.results();
    }
    return out;
  }, py::arg("peer"), py::arg("group"), py::arg("tag") = 0);
}

}  // namespace smp::python
