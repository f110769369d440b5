// smp._C.DistributedModel: the engine's DistributedModel over layers whose forwards are Python
// callables (python_layer.h), and the step over microbatches the Python side has split.
#include <ATen/ATen.h>
#include <torch/csrc/utils/pybind.h>

#include "python_layer.h"
#include "smp/distributed_model.h"
#include "smp/runtime.h"
#include "smp/step.h"

namespace smp::python {

namespace {

// One layer as Python describes it: (name, forward, parameters, parameter names, get_state,
// set_state, tensor-parallel shards as (dim, whole size) per parameter).
using LayerSpec = std::tuple<std::string, py::function, std::vector<at::Tensor>,
                             std::vector<std::string>, py::object, py::object,
                             std::vector<std::pair<int64_t, int64_t>>>;

std::unique_ptr<DistributedModel> make_model(std::vector<LayerSpec> specs, py::dict options) {
  std::vector<Layer> layers;
  for (auto& [name, forward, params, names, get_state, set_state, shards] : specs) {
    layers.push_back(python_layer(name, forward, params, names, get_state, set_state, shards));
  }
  DistributedModelOptions o;
  if (options.contains("average_grads_across_microbatches")) {
    o.average_grads_across_microbatches = options["average_grads_across_microbatches"].cast<bool>();
  }
  if (options.contains("bucket_cap_mb")) o.bucket_cap_mb = options["bucket_cap_mb"].cast<double>();
  if (options.contains("overlapping_allreduce")) {
    o.overlapping_allreduce = options["overlapping_allreduce"].cast<bool>();
  }
  if (options.contains("backward_passes_per_step")) {
    o.backward_passes_per_step = options["backward_passes_per_step"].cast<int>();
  }
  if (options.contains("tied_copies")) {
    o.tied_copies = options["tied_copies"].cast<std::map<std::string, std::string>>();
  }
  if (options.contains("timeline_dir")) o.timeline_dir = options["timeline_dir"].cast<std::string>();
  return std::make_unique<DistributedModel>(context(), std::move(layers), std::move(o));
}

// One step: inputs[k] feeds stage 0 for microbatch k; on the last stage loss_fn(k, outputs)
// returns [loss or None, values...], and what it returns (detached; the loss slot a 0-d
// placeholder where it was None) comes back on every pipeline rank. The GIL is released while
// the pipeline runs; the layers and loss_fn take it back.
std::vector<Values> run_step(DistributedModel& model, std::vector<Values> inputs,
                             py::function loss_fn, bool train) {
  SharedObject fn = share(std::move(loss_fn));
  LossFn loss = [fn](const Values& outputs, const Values& targets) {
    py::gil_scoped_acquire gil;
    return (*fn)(targets.at(0).item<int64_t>(), outputs).cast<Values>();
  };
  std::vector<Values> targets;
  for (size_t k = 0; k < inputs.size(); ++k) {
    targets.push_back({at::scalar_tensor(static_cast<int64_t>(k), at::kLong)});
  }
  StepOptions options;
  options.train = train;
  py::gil_scoped_release nogil;
  return step_microbatches(model, std::move(inputs), std::move(targets), loss, options);
}

}  // namespace

void bind_model(py::module& m) {
  using gil_free = py::call_guard<py::gil_scoped_release>;
  py::class_<DistributedModel>(m, "DistributedModel")
      .def(py::init(&make_model), py::arg("layers"), py::arg("options"))
      .def("set_partition", &DistributedModel::set_partition)
      .def("set_activation_checkpointing",
           [](DistributedModel& model, const std::string& name, const std::string& strategy,
              bool preserve_rng_state) {
             ActivationCheckpointing options;
             options.strategy = strategy;
             options.preserve_rng_state = preserve_rng_state;
             model.set_activation_checkpointing(name, options);
           })
      .def("partition", &DistributedModel::partition, gil_free())
      .def("partitioned", &DistributedModel::partitioned)
      .def("layer_names", &DistributedModel::layer_names)
      .def("num_stages", &DistributedModel::num_stages)
      .def("local_stages", &DistributedModel::local_stages)
      .def("stage_of_layers",
           [](const DistributedModel& model) { return model.partition_assignment().stage_of_layer; })
      .def("local_named_parameters", &DistributedModel::local_named_parameters)
      .def("local_layer_state", &DistributedModel::local_layer_state, gil_free())
      .def("load_local_layer_state", &DistributedModel::load_local_layer_state, gil_free())
      .def("gather_parameters", &DistributedModel::gather_parameters, gil_free())
      .def("release_parameters", &DistributedModel::release_parameters, gil_free())
      .def("run_step", &run_step);
}

}  // namespace smp::python
