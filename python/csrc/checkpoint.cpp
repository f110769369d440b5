// smp._C's checkpoints: the engine's save_checkpoint / resume_from_checkpoint (partial and
// full, resharded on load) and the per-rank file name SMP's smp.save / smp.load use.
#include <torch/csrc/utils/pybind.h>

#include "smp/checkpoint/checkpoint.h"

namespace smp::python {

namespace py = pybind11;

DistributedOptimizer* engine_of(py::object optimizer);  // optimizer.cpp

namespace {

// A full checkpoint names each tensor as the user's module does: `names` maps the engine's
// parameter names to the module's.
FullCheckpointFormat user_names(const std::map<std::string, std::string>& names) {
  FullCheckpointFormat format;
  if (names.empty()) return format;
  std::map<std::string, std::string> back;
  for (const auto& [engine, user] : names) back[user] = engine;
  format.to_file = [names](const FullCheckpointFormat::Tensors& tensors) {
    std::vector<std::pair<std::string, at::Tensor>> out;
    for (const auto& [name, t] : tensors) {
      auto it = names.find(name);
      out.emplace_back(it == names.end() ? name : it->second, t);
    }
    return out;
  };
  format.from_file = [back](const FullCheckpointFormat::Tensors& tensors) {
    FullCheckpointFormat::Tensors out;
    for (const auto& [name, t] : tensors) {
      auto it = back.find(name);
      out[it == back.end() ? name : it->second] = t;
    }
    return out;
  };
  return format;
}

}  // namespace

void bind_checkpoint(py::module& m) {
  m.def("save_checkpoint",
        [](const std::string& path, const std::string& tag, bool partial, DistributedModel& model,
           py::object optimizer, const std::string& user_content, int num_kept,
           const std::map<std::string, std::string>& names) {
          DistributedOptimizer* opt = engine_of(optimizer);
          const nlohmann::json user = nlohmann::json::parse(user_content);
          py::gil_scoped_release nogil;
          save_checkpoint(path, tag, partial, model, opt, user, num_kept, user_names(names));
        });
  m.def("resume_from_checkpoint",
        [](const std::string& path, DistributedModel& model, py::object optimizer,
           const std::string& tag, bool partial, bool strict, bool load_optimizer,
           const std::map<std::string, std::string>& names) {
          DistributedOptimizer* opt = engine_of(optimizer);
          py::gil_scoped_release nogil;
          return resume_from_checkpoint(path, model, opt, tag, partial, strict, load_optimizer,
                                        user_names(names))
              .dump();
        });
  m.def("use_checkpoint_partition", &use_checkpoint_partition,
        py::call_guard<py::gil_scoped_release>());
  m.def("read_checkpoint_manifest", [](const std::string& path, const std::string& tag, bool partial) {
    return read_checkpoint_manifest(path, tag, partial).dump();
  });
  m.def("rank_path", &rank_path);
}

}  // namespace smp::python
