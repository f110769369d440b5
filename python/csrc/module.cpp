// smp._C: the engine as the Python front sees it. The runtime (init, ranks, object messaging)
// is bound here; the model and step, the optimizer and checkpoints each in a file of their own.
// Python's `smp.torch` builds SMP's API on these; nothing here is meant for users directly.
#include <torch/csrc/utils/pybind.h>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include "smp/comm/peer_failure.h"
#include "smp/runtime.h"

namespace py = pybind11;

namespace smp::python {
void bind_model(py::module& m);
void bind_optimizer(py::module& m);
void bind_checkpoint(py::module& m);
void bind_pipeline(py::module& m);
}  // namespace smp::python

namespace {

using namespace smp;

void bind_errors(py::module& m) {
  // Most specific first: pybind11 tries translators in reverse registration order.
  auto error = py::register_exception<Error>(m, "SMPError", PyExc_RuntimeError);
  py::register_exception<ConfigError>(m, "ConfigError", PyExc_ValueError);
  py::register_exception<CheckpointError>(m, "CheckpointError", error.ptr());
  auto comm = py::register_exception<CommError>(m, "CommError", error.ptr());
  py::register_exception<TimeoutError>(m, "TimeoutError", comm.ptr());
  py::register_exception<PeerFailedError>(m, "PeerFailedError", comm.ptr());
  py::register_exception<InternalError>(m, "InternalError", error.ptr());
}

void bind_runtime(py::module& m) {
  py::enum_<CommGroup>(m, "CommGroup")
      .value("WORLD", CommGroup::WORLD)
      .value("MP_GROUP", CommGroup::MP_GROUP)
      .value("PP_GROUP", CommGroup::PP_GROUP)
      .value("TP_GROUP", CommGroup::TP_GROUP)
      .value("DP_GROUP", CommGroup::DP_GROUP)
      .value("RDP_GROUP", CommGroup::RDP_GROUP);
  py::enum_<RankType>(m, "RankType")
      .value("WORLD_RANK", RankType::WORLD_RANK)
      .value("MP_RANK", RankType::MP_RANK)
      .value("PP_RANK", RankType::PP_RANK)
      .value("TP_RANK", RankType::TP_RANK)
      .value("DP_RANK", RankType::DP_RANK)
      .value("RDP_RANK", RankType::RDP_RANK);

  // init takes SMP's parameters as JSON text (the Python side merges the environment's).
  m.def("init", [](const std::string& params) { init(Config::from_json_string(params)); });
  m.def("is_initialized", &is_initialized);
  m.def("clear_peer_failures", &comm::clear_peer_failures);
  m.def("shutdown", &shutdown);
  m.def("config_json", [] { return config().to_json().dump(); });
  m.def("rank", &rank);
  m.def("size", &size);
  m.def("local_rank", &local_rank);
  m.def("local_size", &local_size);
  m.def("group_rank", [](CommGroup g) { return process_group(g).rank(); });
  m.def("group_size", [](CommGroup g) { return process_group(g).size(); });
  m.def("group_ranks", [](CommGroup g) { return process_group(g).world_ranks(); });

  // Object messaging on bytes (the Python side pickles); every call waits with the GIL released.
  using gil_free = py::call_guard<py::gil_scoped_release>;
  m.def("broadcast", [](py::bytes obj, CommGroup g) {
    std::string bytes = obj;
    py::gil_scoped_release nogil;
    broadcast(bytes, g);
  });
  m.def("send", [](py::bytes obj, int dest, RankType type) {
    std::string bytes = obj;
    py::gil_scoped_release nogil;
    send(bytes, dest, type);
  });
  m.def("recv_from", [](int src, RankType type) {
    std::string bytes;
    {
      py::gil_scoped_release nogil;
      bytes = recv_from(src, type);
    }
    return py::bytes(bytes);
  });
  m.def("allgather", [](py::bytes obj, CommGroup g) {
    std::string bytes = obj;
    std::vector<std::string> all;
    {
      py::gil_scoped_release nogil;
      all = allgather(bytes, g);
    }
    py::list out;
    for (const std::string& b : all) out.append(py::bytes(b));
    return out;
  });
  m.def("barrier", &barrier, gil_free());

  // Tensor collectives on a group's communicator (smp.nn's tensor-parallel operations).
  m.def("all_reduce", [](at::Tensor tensor, CommGroup g) {
    py::gil_scoped_release nogil;
    at::Tensor t = tensor;
    process_group(g).all_reduce(t).wait();
  }, "In place: the sum over the group.");
  m.def("all_gather", [](const at::Tensor& input, CommGroup g) {
    py::gil_scoped_release nogil;
    comm::Communicator& group = process_group(g);
    at::Tensor in = input.contiguous();
    std::vector<int64_t> shape{group.size()};
    shape.insert(shape.end(), in.sizes().begin(), in.sizes().end());
    at::Tensor out = at::empty(shape, in.options());
    group.all_gather(out, in).wait();
    return out;
  }, "Every member's tensor stacked along a new leading dim, in group-rank order.");
  m.def("broadcast_tensor", [](at::Tensor tensor, int root, CommGroup g) {
    py::gil_scoped_release nogil;
    at::Tensor t = tensor;
    process_group(g).broadcast(t, root).wait();
  }, "In place: the group rank root's tensor on every member.");
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "smp's C++ engine, bound for smp.torch";
  bind_errors(m);
  bind_runtime(m);
  smp::python::bind_model(m);
  smp::python::bind_optimizer(m);
  smp::python::bind_checkpoint(m);
  smp::python::bind_pipeline(m);
}
