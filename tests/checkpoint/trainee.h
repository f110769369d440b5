// The checkpoint tests' model: a tiny GPT, its DistributedModel and AdamW, trained on fixed
// data under the layout smp::init was given.
#pragma once

#include <torch/optim/adamw.h>

#include <memory>
#include <vector>

#include <ATen/ATen.h>

#include "smp/models/gpt.h"
#include "smp/smp.h"

namespace smp::testing {

inline models::ModelConfig tiny() {
  models::ModelConfig c = models::named_model("tiny");
  c.num_layers = 2;
  c.num_heads = 4;
  c.hidden = 32;
  c.ffn_hidden = 128;
  c.vocab_size = 50;  // not a multiple of 4: the vocabulary pads under tp
  c.max_seq_len = 16;
  c.dropout = 0;
  return c;
}

// One layout's model, optimizer and a few steps of training on fixed data.
struct Trainee {
  models::Model model;
  std::unique_ptr<DistributedModel> dmodel;
  std::unique_ptr<DistributedOptimizer> optimizer;

  explicit Trainee(uint64_t seed, const models::ModelConfig& config = tiny(), int chunks_per_rank = 1) {
    at::manual_seed(seed);
    model = models::build_model(config, tp::TpGroup(process_group(CommGroup::TP_GROUP)), pp_size() > 1);
    DistributedModelOptions options;
    options.chunks_per_rank = chunks_per_rank;
    options.tied_copies = model.tied_copies;
    dmodel = std::make_unique<DistributedModel>(std::move(model.layers), options);
    dmodel->partition({at::zeros({2, 16}, at::kLong)});
    optimizer = std::make_unique<DistributedOptimizer>(
        *dmodel, std::make_unique<torch::optim::AdamW>(dmodel->local_parameters(),
                                                       torch::optim::AdamWOptions(1e-2)));
  }
  // Returns each step's loss.
  std::vector<double> train(int steps) {
    at::manual_seed(99);
    const at::Tensor x = at::randint(0, 50, {4, 16}, at::kLong);
    const at::Tensor y = at::randint(0, 50, {4, 16}, at::kLong);
    const LossFn loss = [this](const Values& out, const Values& t) { return model.loss(out, t); };
    std::vector<double> losses;
    for (int i = 0; i < steps; ++i) {
      losses.push_back(step(*dmodel, {x}, {y}, loss)[0].reduce_mean().item<double>());
      optimizer->step();
      optimizer->zero_grad();
    }
    return losses;
  }
  std::vector<at::Tensor> snapshot() {
    std::vector<at::Tensor> out;
    for (const auto& p : dmodel->local_parameters()) out.push_back(p.detach().clone());
    for (const auto& s : optimizer->state_slices()) out.push_back(s.values.clone());
    return out;
  }
};

}  // namespace smp::testing
