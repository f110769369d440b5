// The baseline of bench/train.sh: the same model smp-train builds, trained by the plainest
// libtorch loop (no smp::init, no DistributedModel, no pipeline, no DistributedOptimizer):
// forward, loss, backward, clip, AdamW. Prints "RESULT_PLAIN tokens_per_s=<x>".
//   plain_loop <run.json>    (the same run configuration smp-train reads)
#include <chrono>
#include <cstdio>

#include <ATen/ATen.h>
#include <torch/nn/utils/clip_grad.h>
#include <torch/optim/adamw.h>

#include "smp/models/gpt.h"
#include "smp/train/data_loader.h"
#include "smp/train/tokenizer.h"
#include "smp/train/token_shards.h"
#include "smp/train/train_config.h"

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: plain_loop run.json\n");
    return 2;
  }
  using namespace smp;
  const train::TrainConfig c = train::TrainConfig::from_json_file(argv[1]);
  const auto& t = c.training;
  const auto tokenizer = train::make_tokenizer();
  const auto data = train::prepare_text(c.data.text, c.run_dir + "-plain-data", *tokenizer,
                                        c.data.val_fraction);
  train::DataLoader loader(data.train_shards, t.seq_len, t.global_batch, t.seed, 0, 1);

  at::manual_seed(t.seed);
  models::Model model = models::build_model(c.model, tp::TpGroup{}, false);
  std::vector<at::Tensor> params;
  for (const auto& layer : model.layers) {
    for (const auto& p : layer.parameters) {
      bool seen = false;
      for (const auto& q : params) seen = seen || q.is_same(p);
      if (!seen) params.push_back(p);
    }
  }
  torch::optim::AdamW optimizer(params, torch::optim::AdamWOptions(t.lr).betas({t.beta1, t.beta2})
                                            .weight_decay(t.weight_decay));
  using Clock = std::chrono::steady_clock;
  Clock::time_point start;
  for (int64_t step = 0; step < t.steps; ++step) {
    if (step == 1) start = Clock::now();  // the first step warms up
    auto [x, y] = loader.next();
    smp::Values h = {x};
    for (const auto& layer : model.layers) h = layer.forward(h);
    at::Tensor loss = model.loss(h, {y})[0];
    loss.backward();
    torch::nn::utils::clip_grad_norm_(params, t.grad_clip);
    optimizer.step();
    optimizer.zero_grad();
  }
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  std::printf("RESULT_PLAIN tokens_per_s=%.1f\n",
              static_cast<double>(t.global_batch * t.seq_len * (t.steps - 1)) / seconds);
  return 0;
}
