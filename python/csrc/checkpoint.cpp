// smp._C's checkpoints: the engine's save_checkpoint / resume_from_checkpoint (partial and
// full, resharded on load) and the per-rank file name SMP's smp.save / smp.load use.
#include <torch/csrc/utils/pybind.h>

#include "smp/checkpoint/checkpoint.h"

namespace smp::python {

namespace py = pybind11;

DistributedOptimizer* engine_of(py::object optimizer);  // optimizer.cpp

namespace {

// A full checkpoint's format from Python: `to_file(whole engine-named tensors) -> [(name,
// tensor)]` and `from_file(file tensors) -> engine-named tensors` (either may be None: the
// engine's names), and the config.json text ("" for none). The callables are held so that
// whichever thread drops the last copy takes the GIL first.
using PyHeld = std::shared_ptr<py::object>;

PyHeld hold(py::object fn) {
  return PyHeld(new py::object(std::move(fn)), [](py::object* o) {
    py::gil_scoped_acquire gil;
    delete o;
  });
}

FullCheckpointFormat python_format(py::object to_file, py::object from_file, const std::string& config) {
  using Tensors = FullCheckpointFormat::Tensors;
  FullCheckpointFormat format;
  if (!to_file.is_none()) {
    format.to_file = [fn = hold(std::move(to_file))](const Tensors& tensors) {
      py::gil_scoped_acquire gil;
      return (*fn)(tensors).cast<std::vector<std::pair<std::string, at::Tensor>>>();
    };
  }
  if (!from_file.is_none()) {
    format.from_file = [fn = hold(std::move(from_file))](const Tensors& tensors) {
      py::gil_scoped_acquire gil;
      return (*fn)(tensors).cast<Tensors>();
    };
  }
  if (!config.empty()) format.config = nlohmann::json::parse(config);
  return format;
}

}  // namespace

void bind_checkpoint(py::module& m) {
  m.def("save_checkpoint",
        [](const std::string& path, const std::string& tag, bool partial, DistributedModel& model,
           py::object optimizer, const std::string& user_content, int num_kept, py::object to_file,
           const std::string& config) {
          DistributedOptimizer* opt = engine_of(optimizer);
          const nlohmann::json user = nlohmann::json::parse(user_content);
          const FullCheckpointFormat format = python_format(std::move(to_file), py::none(), config);
          py::gil_scoped_release nogil;
          save_checkpoint(path, tag, partial, model, opt, user, num_kept, format);
        });
  m.def("resume_from_checkpoint",
        [](const std::string& path, DistributedModel& model, py::object optimizer,
           const std::string& tag, bool partial, bool strict, bool load_optimizer, py::object from_file) {
          DistributedOptimizer* opt = engine_of(optimizer);
          const FullCheckpointFormat format = python_format(py::none(), std::move(from_file), "");
          py::gil_scoped_release nogil;
          return resume_from_checkpoint(path, model, opt, tag, partial, strict, load_optimizer, format).dump();
        });
  m.def("use_checkpoint_partition", &use_checkpoint_partition,
        py::call_guard<py::gil_scoped_release>());
  m.def("read_checkpoint_manifest", [](const std::string& path, const std::string& tag, bool partial) {
    return read_checkpoint_manifest(path, tag, partial).dump();
  });
  m.def("rank_path", &rank_path);
}

}  // namespace smp::python
