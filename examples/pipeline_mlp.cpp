// A complete smp program: an MLP trained with pipeline parallelism.
//
//   mpirun -np 2 build/examples/pipeline_mlp     # pp = 2, 4 microbatches, SMP's 1F1B
//
// Every rank builds the whole model from the same seed; the first smp::step partitions it
// (rank 0 profiles the layers and picks the split) and each rank keeps its own stage. The loss
// function runs on the last stage; every rank gets the losses back as a StepOutput.
// Exits non-zero if the loss did not fall, so the test suite runs it too.
#include <cstdio>

#include <torch/torch.h>

#include "smp/distributed_optimizer.h"
#include "smp/smp.h"

using smp::Layer;
using smp::Values;

// The model, for one device: an ordered list of layers, each a module plus its forward.
std::vector<Layer> make_model() {
  torch::manual_seed(0);  // the same weights on every rank
  std::vector<Layer> layers;
  for (int i = 0; i < 6; ++i) {
    auto linear = std::make_shared<torch::nn::LinearImpl>(i == 0 ? 8 : 64, i == 5 ? 1 : 64);
    const bool last = i == 5;
    layers.push_back(smp::module_layer(
        "fc" + std::to_string(i), linear, [linear, last](const Values& x) -> Values {
          at::Tensor y = linear->forward(x[0]);
          return {last ? y : torch::relu(y)};
        }));
  }
  return layers;
}

int main() {
  try {
    smp::init(smp::Config::from_json_string(
        R"({"pipeline_parallel_degree": 2, "microbatches": 4, "pipeline": "interleaved"})"));
    std::vector<Layer> layers = make_model();
    smp::DistributedModel model(layers);

    // Data: y = sum of sin(x), the same batch on every rank of a pipeline.
    torch::manual_seed(1);
    const at::Tensor x = torch::randn({64, 8});
    const at::Tensor y = torch::sin(x).sum(1, /*keepdim=*/true);
    const smp::LossFn mse = [](const Values& out, const Values& target) -> Values {
      return {torch::mse_loss(out[0], target[0])};
    };

    // SMP's DistributedOptimizer wraps a torch optimizer; it updates the parameters this rank
    // holds (and, with data parallelism, reduces and shards as configured).
    std::vector<at::Tensor> all_parameters;
    for (const Layer& layer : layers) {
      all_parameters.insert(all_parameters.end(), layer.parameters.begin(), layer.parameters.end());
    }
    smp::DistributedOptimizer optimizer(
        model, std::make_unique<torch::optim::Adam>(all_parameters, torch::optim::AdamOptions(1e-2)));
    float first = 0, last = 0;
    for (int it = 0; it < 60; ++it) {
      std::vector<smp::StepOutput> out = smp::step(model, {x}, {y}, mse);
      optimizer.step();
      optimizer.zero_grad();
      last = out[0].reduce_mean().item<float>();
      if (it == 0) first = last;
      if (smp::rank() == 0 && it % 10 == 0) std::printf("step %2d  loss %.4f\n", it, last);
    }
    if (smp::rank() == 0) std::printf("loss %.4f -> %.4f\n", first, last);
    smp::shutdown();
    return last < 0.5f * first ? 0 : 1;
  } catch (const smp::Error& e) {
    std::fprintf(stderr, "pipeline_mlp: %s\n", e.what());
    smp::comm::abort_world(1);
  }
}
