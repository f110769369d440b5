// smp side of bench/data_parallel.sh and bench/sharded_data_parallel.sh: data-parallel training
// of an MLP (the model of torch_ddp.py, the same sizes and data), Adam, fp32,
// ddp over every rank, run unsharded ("ddp"), with shard_optimizer_state ("zero1") or with
// sharded_data_parallel_degree = every rank and every layer sharded ("sdp"). Per mode, rank 0
// prints one line:
//
//   smp mode=ddp samples_per_s=812.3 step_ms=78.8 min_ms=70.1 state_bytes=50380800
//   psi_bytes=25190400
//       all_reduce=25190400 reduce_scatter=0 all_gather=0 ranks=2 buckets=2
//       model_state_bytes=100761600
//
// samples_per_s: global batch / median step time (smp::step + optimizer step + zero_grad),
// step_ms that median, min_ms the fastest step;
// state_bytes: DistributedOptimizer::state_bytes() on rank 0; the byte counts are what rank 0
// handed to DP_GROUP collectives in one step (its Communicator counters; sdp: the sharding
// group's), psi_bytes the bytes of all gradients; model_state_bytes what rank 0 holds between
// steps of parameters, gradients and optimizer state.
//
// Usage: mpirun -np 2 dp_bench [--steps 20] [--warmup 3] [--hidden 1024] [--layers 6]
//        [--batch 64] [--modes ddp,zero1]   (batch per rank; modes: ddp, zero1, sdp)
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>

#include "smp/distributed_optimizer.h"
#include "smp/smp.h"

namespace {

using smp::Layer;
using smp::Values;

struct Args {
  int steps = 20, warmup = 3, hidden = 1024, layers = 6, batch = 64;
  std::string modes = "ddp,zero1";
};

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i];
    const int v = std::atoi(argv[i + 1]);
    if (k == "--modes")
      a.modes = argv[i + 1];
    else if (k == "--steps")
      a.steps = v;
    else if (k == "--warmup")
      a.warmup = v;
    else if (k == "--hidden")
      a.hidden = v;
    else if (k == "--layers")
      a.layers = v;
    else if (k == "--batch")
      a.batch = v;
    else
      throw smp::ConfigError("dp_bench: unknown argument " + k);
  }
  return a;
}

// `layers` Linear(hidden, hidden) + tanh, the last without tanh (torch_ddp.py builds the same).
std::vector<Layer> make_mlp(const Args& a, std::vector<at::Tensor>* params) {
  torch::manual_seed(0);
  std::vector<Layer> out;
  for (int i = 0; i < a.layers; ++i) {
    auto lin = std::make_shared<torch::nn::LinearImpl>(a.hidden, a.hidden);
    const bool last = i + 1 == a.layers;
    out.push_back(smp::module_layer("fc" + std::to_string(i), lin,
                                              [lin, last](const Values& x) -> Values {
                                                at::Tensor y = lin->forward(x[0]);
                                                return {last ? y : torch::tanh(y)};
                                              }));
    for (const at::Tensor& p : lin->parameters()) params->push_back(p);
  }
  return out;
}

Values mse(const Values& out, const Values& y) { return {torch::mse_loss(out[0], y[0])}; }

std::string config_of(const std::string& mode) {
  if (mode == "ddp") return R"({"ddp": true})";
  if (mode == "zero1") return R"({"ddp": true, "shard_optimizer_state": true})";
  if (mode == "sdp") {
    return R"({"ddp": true, "sdp_param_persistence_threshold": 0, "sharded_data_parallel_degree": )" +
           std::to_string(smp::comm::world_size()) + "}";
  }
  throw smp::ConfigError("dp_bench: --modes: got \"" + mode + "\"; allowed: ddp, zero1, sdp");
}

// Bytes of parameters, gradients and optimizer state this rank holds between steps.
int64_t model_state_bytes(smp::DistributedModel& model, const smp::DistributedOptimizer& opt) {
  const smp::dp::GradientReducer& r = model.gradient_reducer();
  int64_t bytes = opt.state_bytes();
  if (const smp::dp::ParameterShards* shards = r.parameter_shards()) {
    return bytes + shards->resident_bytes() + shards->grad_bytes();
  }
  bytes += static_cast<int64_t>(r.flat_params().nbytes() + r.flat_grads().nbytes());
  if (r.sharded()) bytes += static_cast<int64_t>(r.shard_grads().nbytes());
  return bytes;
}

void run_mode(const Args& a, const std::string& mode) {
  smp::init(smp::Config::from_json_string(config_of(mode)));
  std::vector<at::Tensor> params;
  smp::DistributedModel model(make_mlp(a, &params));
  smp::DistributedOptimizer opt(
      model, std::make_unique<torch::optim::Adam>(params, torch::optim::AdamOptions(1e-4)));
  torch::manual_seed(1 + smp::rank());
  const at::Tensor x = torch::randn({a.batch, a.hidden});
  const at::Tensor y = torch::randn({a.batch, a.hidden});
  std::vector<double> times;
  smp::comm::Counters one_step;
  for (int it = 0; it < a.warmup + a.steps; ++it) {
    smp::barrier();
    smp::comm::Communicator& dp = model.partitioned() && model.gradient_reducer().parameter_shards()
                                      ? model.gradient_reducer().parameter_shards()->group()
                                      : smp::process_group(smp::CommGroup::DP_GROUP);
    dp.reset_counters();
    const auto start = std::chrono::steady_clock::now();
    smp::step(model, {x}, {y}, mse);
    opt.step();
    opt.zero_grad();
    const double s =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (it >= a.warmup) times.push_back(s);
    one_step = dp.counters();
  }
  std::sort(times.begin(), times.end());
  const double median = times[times.size() / 2];
  int64_t psi = 0;
  for (const at::Tensor& p : params) psi += p.numel() * 4;
  if (smp::rank() == 0) {
    std::printf(
        "smp mode=%s samples_per_s=%.2f step_ms=%.2f min_ms=%.2f state_bytes=%lld psi_bytes=%lld "
        "all_reduce=%lld reduce_scatter=%lld all_gather=%lld ranks=%d buckets=%zu "
        "model_state_bytes=%lld\n",
        mode.c_str(), a.batch * smp::dp_size() / median, median * 1e3, times[0] * 1e3,
        static_cast<long long>(opt.state_bytes()), static_cast<long long>(psi),
        static_cast<long long>(one_step.get("all_reduce").bytes),
        static_cast<long long>(one_step.get("reduce_scatter").bytes),
        static_cast<long long>(one_step.get("all_gather").bytes), smp::dp_size(),
        model.gradient_reducer().layout().buckets().size(),
        static_cast<long long>(model_state_bytes(model, opt)));
    std::fflush(stdout);
  }
  smp::shutdown();
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const Args a = parse(argc, argv);
    smp::comm::init_mpi();
    for (size_t begin = 0; begin <= a.modes.size();) {
      const size_t end = std::min(a.modes.find(',', begin), a.modes.size());
      run_mode(a, a.modes.substr(begin, end - begin));
      begin = end + 1;
    }
    smp::comm::finalize_mpi();
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "dp_bench: %s\n", e.what());
    smp::comm::abort_world(1);
    return 1;
  }
}
