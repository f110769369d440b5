// The Python front's bridge between Python objects and the engine's vocabulary: a Layer whose
// forward is a Python callable, and Python objects held safely from C++.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <torch/csrc/utils/pybind.h>

#include "smp/layer/layer.h"

namespace smp::python {

namespace py = pybind11;

// A Python object kept alive from C++ (in a std::function that the engine may copy and destroy
// on any thread, GIL held or not): the reference is dropped with the GIL taken.
using SharedObject = std::shared_ptr<py::object>;
SharedObject share(py::object object);

// A layer whose forward calls `forward(list[Tensor]) -> list[Tensor]` with the GIL taken (the
// engine runs with the GIL released). `parameters` are the Python module's own tensors (the same
// storage and autograd identity), `parameter_names` their names inside the layer. `get_state`
// () -> dict[str, Tensor] and `set_state`(dict) carry state besides parameters (buffers such as
// BatchNorm's running statistics) through checkpoints; either may be None. `tp_shards`,
// parallel to `parameters` (or empty: all replicated), gives each tensor-parallel shard's
// (dim, whole size) and (-1, 0) for a replicated parameter.
Layer python_layer(std::string name, py::function forward, std::vector<at::Tensor> parameters,
                   std::vector<std::string> parameter_names, py::object get_state,
                   py::object set_state, const std::vector<std::pair<int64_t, int64_t>>& tp_shards);

}  // namespace smp::python
