// Shared by the data-parallel and optimizer tests: (re)initialising smp with a config, the
// MLP problem of the pipeline tests with a batch each DP replica slices, the single-process
// reference (torch::optim on the whole batch) and a relative comparison.
#pragma once

#include <gtest/gtest.h>

#include <functional>
#include <map>
#include <memory>
#include <string>

#include "../pipeline/models.h"
#include "smp/distributed_optimizer.h"
#include "smp/smp.h"

namespace smp::testing {

inline void reinit(const std::string& json_body) {
  if (is_initialized()) shutdown();
  init(Config::from_json_string("{\"comm_timeout_s\": 60" +
                                (json_body.empty() ? std::string() : ", " + json_body) + "}"));
}

// max |got - want| <= tol * max |want| (+ a hair for all-zero tensors).
inline ::testing::AssertionResult close(const at::Tensor& got, const at::Tensor& want, double tol) {
  const double err = (got.to(at::kDouble) - want.to(at::kDouble)).abs().max().item<double>();
  const double scale = want.abs().max().item<double>();
  if (err <= tol * scale + 1e-12) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "max abs error " << err << " > " << tol << " * " << scale;
}

inline std::map<std::string, at::Tensor> named(const std::vector<Layer>& layers) {
  std::map<std::string, at::Tensor> out;
  for (const Layer& layer : layers) {
    for (size_t j = 0; j < layer.parameters.size(); ++j) {
      out[layer.name + "." + layer.parameter_names[j]] = layer.parameters[j];
    }
  }
  return out;
}

inline std::vector<at::Tensor> values_of(const std::map<std::string, at::Tensor>& m) {
  std::vector<at::Tensor> out;
  for (const auto& [name, t] : m) out.push_back(t);
  return out;
}

// The whole batch of step `it` (the same on every rank), and this replica's slice of it.
struct Batch {
  at::Tensor x, y;
};
// Targets come from a fixed random "teacher", so the loss can fall.
inline Batch whole_batch(int it, int64_t rows = 16) {
  torch::manual_seed(99);
  const at::Tensor teacher = torch::randn({16, 8});
  torch::manual_seed(100 + it);
  at::Tensor x = torch::randn({rows, 16});
  return {x, torch::tanh(x.matmul(teacher))};
}
inline Batch my_slice(const Batch& b) {
  const int64_t n = b.x.size(0) / rdp_size();
  return {b.x.narrow(0, rdp_rank() * n, n), b.y.narrow(0, rdp_rank() * n, n)};
}

using OptimizerFactory =
    std::function<std::unique_ptr<torch::optim::Optimizer>(std::vector<at::Tensor>)>;

// Trains the reference (one process, whole batch, plain torch::optim) for `steps` steps.
struct RefRecord {
  std::vector<double> norms;  // before clipping
  std::vector<double> losses;
};
inline std::map<std::string, at::Tensor> reference_run(const OptimizerFactory& make, int steps,
                                                       double clip = 0,
                                                       RefRecord* record = nullptr) {
  std::vector<Layer> layers = make_mlp(1);
  auto params = named(layers);
  auto opt = make(values_of(params));
  for (int it = 0; it < steps; ++it) {
    opt->zero_grad();
    const Batch b = whole_batch(it);
    at::Tensor loss = mse_loss(run_all(layers, {b.x}), {b.y})[0];
    loss.backward();
    if (record) record->losses.push_back(loss.item<double>());
    if (clip > 0) {
      std::vector<at::Tensor> optimized;  // clip what the optimizer steps, as smp does
      for (const auto& g : opt->param_groups()) {
        optimized.insert(optimized.end(), g.params().begin(), g.params().end());
      }
      const double n = torch::nn::utils::clip_grad_norm_(optimized, clip);
      if (record) record->norms.push_back(n);
    }
    opt->step();
  }
  return params;
}

// The same under smp with the current config: each replica its slice of every batch.
struct SmpRun {
  std::unique_ptr<DistributedModel> model;
  std::unique_ptr<DistributedOptimizer> opt;
  std::vector<double> norms;
  std::vector<double> losses;  // averaged over the data-parallel replicas
};

// The loss every replica's pipeline returned, averaged over the replicas (collective).
inline double replica_mean(const std::vector<StepOutput>& out) {
  at::Tensor loss = out.at(0).reduce_mean().to(at::kDouble).reshape({1});
  process_group(CommGroup::RDP_GROUP).all_reduce(loss, comm::ReduceOp::kAvg).wait();
  return loss.item<double>();
}
inline SmpRun smp_run(const OptimizerFactory& make, int steps, DistributedModelOptions mo = {},
                      double clip = 0, DistributedOptimizerOptions oo = {},
                      LossFn loss = mse_loss) {
  SmpRun run;
  std::vector<Layer> layers = make_mlp(1);
  auto params = values_of(named(layers));
  run.model = std::make_unique<DistributedModel>(std::move(layers), mo);
  run.opt = std::make_unique<DistributedOptimizer>(*run.model, make(params), oo);
  for (int it = 0; it < steps; ++it) {
    run.opt->zero_grad();
    const Batch b = my_slice(whole_batch(it));
    run.losses.push_back(replica_mean(step(*run.model, {b.x}, {b.y}, loss)));
    if (clip > 0) run.norms.push_back(run.opt->clip_master_grads(clip));
    run.opt->step();
  }
  return run;
}

// Every parameter this rank holds against the reference's.
inline void expect_params_close(DistributedModel& model,
                                const std::map<std::string, at::Tensor>& ref, double tol,
                                const std::string& what) {
  for (auto& [name, p] : model.local_named_parameters()) {
    EXPECT_TRUE(close(p, ref.at(name), tol)) << what << ": parameter " << name;
  }
}

}  // namespace smp::testing
