// The smp side of bench/activation_checkpointing.sh: a GPT's training steps (forward and
// backward through smp::step on one rank) with the transformer blocks recomputed under
// `strategy` ("none": every activation kept). Prints
//   RESULT_SMP activation_mb=<peak RSS during the steps minus RSS before them> step_s=<median>
// Weights and gradient buffers exist before the first step, so the difference is what the steps
// hold: activations and temporaries. One process per measurement (the peak RSS only grows).
//   recompute_bench <strategy> <hidden> <layers> <heads> <seq> <batch> <steps>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include <ATen/ATen.h>

#include "smp/models/gpt.h"
#include "smp/smp.h"

namespace {

// A line of /proc/self/status ("VmRSS", "VmHWM") in MiB.
double status_mb(const std::string& field) {
  std::ifstream status("/proc/self/status");
  std::string key;
  double kb = 0;
  while (status >> key) {
    if (key == field + ":") {
      status >> kb;
      return kb / 1024;
    }
    status.ignore(1 << 12, '\n');
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 8) {
    std::fprintf(stderr,
                 "usage: recompute_bench <strategy> <hidden> <layers> <heads> <seq> <batch> <steps>\n");
    return 2;
  }
  using namespace smp;
  const std::string strategy = argv[1];
  models::ModelConfig c = models::named_model("tiny");
  c.hidden = std::atoi(argv[2]);
  c.num_layers = std::atoi(argv[3]);
  c.num_heads = std::atoi(argv[4]);
  c.ffn_hidden = 4 * c.hidden;
  c.max_seq_len = std::atoi(argv[5]);
  c.vocab_size = 257;
  const int64_t seq = c.max_seq_len;
  const int64_t batch = std::atoi(argv[6]);
  const int steps = std::atoi(argv[7]);

  init(Config{});
  at::manual_seed(1);
  models::Model model = models::build_model(c, tp::TpGroup{}, false);
  DistributedModel dmodel(std::move(model.layers));
  if (strategy != "none") dmodel.set_activation_checkpointing("block", {strategy});
  dmodel.set_partition_assignment(std::vector<int>(dmodel.layer_names().size(), 0));
  const LossFn loss_fn = [&model](const Values& out, const Values& y) { return model.loss(out, y); };
  const at::Tensor tokens = at::randint(0, c.vocab_size, {batch, seq + 1}, at::kLong);
  const at::Tensor x = tokens.narrow(1, 0, seq).contiguous();
  const at::Tensor y = tokens.narrow(1, 1, seq).contiguous();

  const double before_mb = status_mb("VmRSS");
  std::vector<double> seconds;
  for (int s = 0; s < steps; ++s) {
    const auto start = std::chrono::steady_clock::now();
    step(dmodel, {x}, {y}, loss_fn);
    const auto end = std::chrono::steady_clock::now();
    seconds.push_back(std::chrono::duration<double>(end - start).count());
    for (const at::Tensor& p : dmodel.local_parameters()) {
      if (p.grad().defined()) p.mutable_grad().zero_();
    }
  }
  const double peak_mb = status_mb("VmHWM");
  seconds.erase(seconds.begin());  // the first step warms up
  std::sort(seconds.begin(), seconds.end());
  std::printf("RESULT_SMP activation_mb=%.1f step_s=%.4f\n", peak_mb - before_mb,
              seconds[seconds.size() / 2]);
  shutdown();
  return 0;
}
