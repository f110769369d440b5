// Data parallelism composed with tensor (and pipeline) parallelism against one process (runs
// on 2 and 4 ranks): a Megatron MLP (column- then row-parallel linear) followed by replicated
// LayerNorm and head, Adam, unsharded and ZeRO-1, with clipping. Layouts rdp x pp x tp:
// 1x1x2 (2 ranks), 2x1x2 and 1x2x2 (4 ranks). Shards are reduced over RDP_GROUP, replicated
// parameters over DP_GROUP; the clipping norm counts TP-replicated parameters once. Each
// shard after 5 steps equals the slice of the one-process parameter within 1e-6 relative.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "smp/distributed_optimizer.h"
#include "smp/smp.h"
#include "smp/tensor_parallel/init.h"
#include "smp/tensor_parallel/layers.h"

namespace smp {
namespace {

using smp::Layer;
using smp::Values;

struct Model {
  std::vector<Layer> layers;
  std::map<std::string, int64_t> dims;  // "<layer>.<param>" -> split dim (-1 replicated)
  std::vector<at::Tensor> params;
};

Model make_model(const tp::TpGroup& g) {
  torch::manual_seed(5);
  auto up = std::make_shared<tp::ColumnParallelLinear>(16, 32, g);
  auto down = std::make_shared<tp::RowParallelLinear>(32, 16, g);
  auto norm = std::make_shared<torch::nn::LayerNormImpl>(torch::nn::LayerNormOptions({16}));
  auto head = std::make_shared<torch::nn::LinearImpl>(16, 8);
  Model m;
  m.layers.push_back(smp::module_layer(
      "up", up, [up](const Values& x) -> Values { return {torch::tanh(up->forward(x[0]))}; }));
  m.layers.push_back(smp::module_layer(
      "down", down, [down](const Values& x) -> Values { return {down->forward(x[0])}; }));
  m.layers.push_back(smp::module_layer(
      "norm", norm, [norm](const Values& x) -> Values { return {norm->forward(x[0])}; }));
  m.layers.push_back(smp::module_layer(
      "head", head, [head](const Values& x) -> Values { return {head->forward(x[0])}; }));
  for (const auto& [name, dim] : tp::tp_shard_dims(*up)) m.dims["up." + name] = dim;
  for (const auto& [name, dim] : tp::tp_shard_dims(*down)) m.dims["down." + name] = dim;
  for (const Layer& layer : m.layers) {
    for (size_t j = 0; j < layer.parameters.size(); ++j) {
      m.params.push_back(layer.parameters[j]);
      const std::string name = layer.name + "." + layer.parameter_names[j];
      if (!m.dims.count(name)) m.dims[name] = -1;
    }
  }
  return m;
}

Values mse(const Values& out, const Values& y) { return {torch::mse_loss(out[0], y[0])}; }

std::pair<at::Tensor, at::Tensor> batch(int it) {
  torch::manual_seed(200 + it);
  at::Tensor x = torch::randn({8, 16});
  return {x, torch::sin(x.narrow(1, 0, 8))};
}

std::unique_ptr<torch::optim::Adam> adam(const std::vector<at::Tensor>& p) {
  return std::make_unique<torch::optim::Adam>(p, torch::optim::AdamOptions(1e-3));
}

// One process, whole batch, clip at 0.1: the parameters and norms after `steps` steps.
std::map<std::string, at::Tensor> reference(int steps, std::vector<double>* norms) {
  Model m = make_model(tp::TpGroup());
  auto opt = adam(m.params);
  for (int it = 0; it < steps; ++it) {
    opt->zero_grad();
    auto [x, y] = batch(it);
    Values h = {x};
    for (const Layer& layer : m.layers) h = layer.forward(h);
    mse(h, {y})[0].backward();
    norms->push_back(torch::nn::utils::clip_grad_norm_(m.params, 0.1));
    opt->step();
  }
  std::map<std::string, at::Tensor> out;
  for (const Layer& layer : m.layers) {
    for (size_t j = 0; j < layer.parameters.size(); ++j) {
      out[layer.name + "." + layer.parameter_names[j]] = layer.parameters[j];
    }
  }
  return out;
}

void check_layout(int pp, bool shard, const std::map<std::string, at::Tensor>& ref,
                  const std::vector<double>& ref_norms) {
  if (is_initialized()) shutdown();
  init(Config::from_json_string(
      "{\"ddp\": true, \"tensor_parallel_degree\": 2, \"pipeline_parallel_degree\": " +
      std::to_string(pp) +
      ", \"microbatches\": 2, \"auto_partition\": false, "
      "\"shard_optimizer_state\": " +
      (shard ? "true" : "false") + ", \"comm_timeout_s\": 60}"));
  const std::string what =
      std::to_string(rdp_size()) + "x" + std::to_string(pp) + "x2" + (shard ? " zero1" : "");
  const tp::TpGroup g(process_group(CommGroup::TP_GROUP));
  Model m = make_model(g);
  const auto dims = m.dims;
  DistributedModel model(std::move(m.layers));
  model.set_partition("norm", pp - 1);
  model.set_partition("head", pp - 1);
  DistributedOptimizer opt(model, adam(m.params));
  for (int it = 0; it < 5; ++it) {
    opt.zero_grad();
    auto [x, y] = batch(it);
    const int64_t n = x.size(0) / rdp_size();  // each replica its rows; TP ranks share them
    step(model, {x.narrow(0, rdp_rank() * n, n)}, {y.narrow(0, rdp_rank() * n, n)}, mse);
    const double norm = opt.clip_master_grads(0.1);
    EXPECT_NEAR(norm, ref_norms[it], 1e-6 * ref_norms[it]) << what << " step " << it;
    opt.step();
  }
  for (const auto& p : model.local_parameter_info()) {
    const int64_t dim = dims.at(p.name);
    EXPECT_EQ(p.tp_sharded, dim >= 0) << p.name;
    const at::Tensor want = dim < 0 ? ref.at(p.name) : tp::shard_of(ref.at(p.name), dim, g);
    const double err = (p.tensor - want).abs().max().item<double>();
    EXPECT_LE(err, 1e-6 * want.abs().max().item<double>()) << what << " " << p.name;
  }
}

TEST(DataTensorParallel, EveryLayoutMatchesOneProcess) {
  std::vector<double> norms;
  const auto ref = reference(5, &norms);
  for (bool shard : {false, true}) {
    check_layout(1, shard, ref, norms);                               // rdp = world / 2
    if (comm::world_size() == 4) check_layout(2, shard, ref, norms);  // 1 x 2 x 2
  }
}

}  // namespace
}  // namespace smp
