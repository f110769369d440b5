// smp._C.DistributedOptimizer: the engine's DistributedOptimizer over a torch::optim optimizer
// built from a Python torch.optim.SGD / Adam / AdamW's parameter groups. The Python side owns
// the groups (LR schedulers write them) and copies their options in before every step.
#include <torch/csrc/utils/pybind.h>
#include <torch/optim.h>

#include "smp/core/error.h"
#include "smp/distributed_optimizer.h"

namespace smp::python {

namespace py = pybind11;

namespace {

template <typename T>
T get(const py::dict& options, const char* key, T fallback) {
  return options.contains(key) ? options[key].cast<T>() : fallback;
}

// Writes a Python param group's options into a torch::optim group's.
void set_options(const std::string& kind, torch::optim::OptimizerOptions& base,
                 const py::dict& o) {
  if (kind == "sgd") {
    auto& s = static_cast<torch::optim::SGDOptions&>(base);
    s.lr(get(o, "lr", s.lr())).momentum(get(o, "momentum", s.momentum()));
    s.dampening(get(o, "dampening", s.dampening())).nesterov(get(o, "nesterov", s.nesterov()));
    s.weight_decay(get(o, "weight_decay", s.weight_decay()));
    return;
  }
  auto betas = [&](std::tuple<double, double> now) {
    return o.contains("betas") ? o["betas"].cast<std::tuple<double, double>>() : now;
  };
  if (kind == "adam") {
    auto& a = static_cast<torch::optim::AdamOptions&>(base);
    a.lr(get(o, "lr", a.lr())).betas(betas(a.betas())).eps(get(o, "eps", a.eps()));
    a.weight_decay(get(o, "weight_decay", a.weight_decay())).amsgrad(get(o, "amsgrad", a.amsgrad()));
    return;
  }
  auto& a = static_cast<torch::optim::AdamWOptions&>(base);
  a.lr(get(o, "lr", a.lr())).betas(betas(a.betas())).eps(get(o, "eps", a.eps()));
  a.weight_decay(get(o, "weight_decay", a.weight_decay())).amsgrad(get(o, "amsgrad", a.amsgrad()));
}

// A torch::optim group's options as the Python group's keys.
py::dict get_options(const std::string& kind, torch::optim::OptimizerOptions& base) {
  py::dict o;
  if (kind == "sgd") {
    auto& s = static_cast<torch::optim::SGDOptions&>(base);
    o["lr"] = s.lr(), o["momentum"] = s.momentum(), o["dampening"] = s.dampening();
    o["nesterov"] = s.nesterov(), o["weight_decay"] = s.weight_decay();
    return o;
  }
  auto fill = [&o](auto& a) {
    o["lr"] = a.lr(), o["betas"] = a.betas(), o["eps"] = a.eps();
    o["weight_decay"] = a.weight_decay(), o["amsgrad"] = a.amsgrad();
  };
  if (kind == "adam") {
    fill(static_cast<torch::optim::AdamOptions&>(base));
  } else {
    fill(static_cast<torch::optim::AdamWOptions&>(base));
  }
  return o;
}

std::unique_ptr<torch::optim::OptimizerOptions> default_options(const std::string& kind) {
  if (kind == "sgd") return std::make_unique<torch::optim::SGDOptions>(0.01);
  if (kind == "adam") return std::make_unique<torch::optim::AdamOptions>();
  if (kind == "adamw") return std::make_unique<torch::optim::AdamWOptions>();
  throw ConfigError("smp: optimizer kind '" + kind + "' is not one the engine runs; allowed: sgd, adam, adamw");
}

// (parameters, options) per group.
using GroupSpec = std::pair<std::vector<at::Tensor>, py::dict>;

std::unique_ptr<torch::optim::Optimizer> make_torch_optimizer(const std::string& kind,
                                                              const std::vector<GroupSpec>& specs) {
  std::vector<torch::optim::OptimizerParamGroup> groups;
  for (const auto& [params, options] : specs) {
    auto o = default_options(kind);
    set_options(kind, *o, options);
    groups.emplace_back(params, std::move(o));
  }
  const auto defaults = [&]() -> std::unique_ptr<torch::optim::Optimizer> {
    if (kind == "sgd") return std::make_unique<torch::optim::SGD>(groups, torch::optim::SGDOptions(0.01));
    if (kind == "adam") return std::make_unique<torch::optim::Adam>(groups);
    return std::make_unique<torch::optim::AdamW>(groups);
  };
  return defaults();
}

py::dict to_python(const OptimizerStateDict& dict) {
  py::dict out;
  out["_smp_is_partial"] = dict.partial;
  out["meta"] = dict.meta.dump();
  out["tensors"] = dict.tensors;
  return out;
}

OptimizerStateDict from_python(const py::dict& dict) {
  OptimizerStateDict out;
  out.partial = dict["_smp_is_partial"].cast<bool>();
  out.meta = nlohmann::json::parse(dict["meta"].cast<std::string>());
  out.tensors = dict["tensors"].cast<std::map<std::string, at::Tensor>>();
  return out;
}

struct PyOptimizer {
  std::string kind;
  std::unique_ptr<DistributedOptimizer> engine;
};

}  // namespace

void bind_optimizer(py::module& m) {
  using gil_free = py::call_guard<py::gil_scoped_release>;
  py::class_<PyOptimizer>(m, "DistributedOptimizer")
      .def(py::init([](DistributedModel& model, const std::string& kind,
                       const std::vector<GroupSpec>& groups, double static_loss_scale,
                       bool dynamic_loss_scale, py::dict dynamic_args) {
             DistributedOptimizerOptions o;
             o.static_loss_scale = static_loss_scale;
             o.dynamic_loss_scale = dynamic_loss_scale;
             auto& d = o.dynamic_loss_args;
             d.init_scale = get(dynamic_args, "init_scale", d.init_scale);
             d.scale_factor = get(dynamic_args, "scale_factor", d.scale_factor);
             d.scale_window = get(dynamic_args, "scale_window", d.scale_window);
             d.min_scale = get(dynamic_args, "min_scale", d.min_scale);
             d.delayed_shift = get(dynamic_args, "delayed_shift", d.delayed_shift);
             d.consecutive_hysteresis = get(dynamic_args, "consecutive_hysteresis", d.consecutive_hysteresis);
             auto engine = std::make_unique<DistributedOptimizer>(
                 model, make_torch_optimizer(kind, groups), o);
             return PyOptimizer{kind, std::move(engine)};
           }),
           py::keep_alive<1, 2>())
      .def("set_group_options",
           [](PyOptimizer& self, size_t i, py::dict options) {
             auto& groups = self.engine->optimizer().param_groups();
             if (i >= groups.size()) throw ConfigError("smp: the optimizer has no parameter group " + std::to_string(i) + "; groups cannot be added after DistributedOptimizer wraps it");
             set_options(self.kind, groups[i].options(), options);
           })
      .def("group_options",
           [](PyOptimizer& self, size_t i) {
             return get_options(self.kind, self.engine->optimizer().param_groups().at(i).options());
           })
      .def("step", [](PyOptimizer& self) { self.engine->step(); }, gil_free())
      .def("zero_grad", [](PyOptimizer& self) { self.engine->zero_grad(); })
      .def("overflow", [](PyOptimizer& self) { return self.engine->overflow(); })
      .def("clip_master_grads", [](PyOptimizer& self, double n) { return self.engine->clip_master_grads(n); }, gil_free())
      .def("loss_scale", [](PyOptimizer& self) { return self.engine->loss_scale(); })
      .def("local_state_dict", [](PyOptimizer& self) { return to_python(self.engine->local_state_dict()); })
      .def("state_dict", [](PyOptimizer& self) { return to_python(self.engine->state_dict()); })
      .def("load_state_dict", [](PyOptimizer& self, py::dict d) {
        OptimizerStateDict dict = from_python(d);
        py::gil_scoped_release nogil;
        if (dict.partial) {
          self.engine->load_local_state_dict(dict);
        } else {
          self.engine->load_state_dict(dict);
        }
      });
}

DistributedOptimizer* engine_of(py::object optimizer) {
  if (optimizer.is_none()) return nullptr;
  return optimizer.cast<PyOptimizer&>().engine.get();
}

}  // namespace smp::python
