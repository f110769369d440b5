#include "python_layer.h"

#include <map>

namespace smp::python {

SharedObject share(py::object object) {
  return SharedObject(new py::object(std::move(object)), [](py::object* held) {
    py::gil_scoped_acquire gil;
    delete held;
  });
}

Layer python_layer(std::string name, py::function forward, std::vector<at::Tensor> parameters,
                   std::vector<std::string> parameter_names, py::object get_state,
                   py::object set_state, const std::vector<std::pair<int64_t, int64_t>>& tp_shards) {
  Layer layer;
  layer.name = std::move(name);
  SharedObject fn = share(std::move(forward));
  layer.forward = [fn](const Values& inputs) {
    py::gil_scoped_acquire gil;
    return (*fn)(inputs).cast<Values>();
  };
  layer.parameters = std::move(parameters);
  layer.parameter_names = std::move(parameter_names);
  layer.owner = fn;
  for (const auto& [dim, size] : tp_shards) layer.tp_shards.push_back(ShardSpec{dim, size});
  if (!get_state.is_none()) {
    SharedObject get = share(std::move(get_state));
    layer.get_state = [get] {
      py::gil_scoped_acquire gil;
      return (*get)().cast<std::map<std::string, at::Tensor>>();
    };
  }
  if (!set_state.is_none()) {
    SharedObject set = share(std::move(set_state));
    layer.set_state = [set](const std::map<std::string, at::Tensor>& state) {
      py::gil_scoped_acquire gil;
      (*set)(state);
    };
  }
  return layer;
}

}  // namespace smp::python
