// Tensor-parallel benchmark, smp side (bench/tensor_parallel.sh runs it under mpirun -np 2).
//
// The pre-LayerNorm causal transformer layer of bench/tensor_parallel/torch_tp.py, as
// smp::tp::ParallelTransformerLayer (Megatron TP, no sequence parallelism: config optimize
// "speed"), alone and as a 4-layer stack. Method (identical in torch_tp.py): 2 warm-up steps,
// then 6 timed trials of `iters` forward+backward steps each; the best trial counts. One step is
// forward, mean of the output, backward. Communication is counted on the TP group for one step;
// theory is 4 all-reduces of b*s*h fp32 per layer (2 forward, 2 backward). Rank 0 prints:
//
//   smp layers=4 tokens_per_s=1234.5 step_ms=12.3 comm_bytes=8388608 theory_bytes=8388608
//
// Usage: mpirun -np <tp> tp_bench [batch seq hidden heads intermediate iters]
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "smp/smp.h"
#include "smp/tensor_parallel/transformer.h"

namespace {

struct Shape {
  int64_t batch = 4, seq = 128, hidden = 256, heads = 8, intermediate = 1024, iters = 3;
};

double now_s() {
  using Clock = std::chrono::steady_clock;
  return std::chrono::duration<double>(Clock::now().time_since_epoch()).count();
}

void bench(const Shape& shape, int num_layers) {
  smp::tp::TransformerOptions o;
  o.hidden_size = shape.hidden;
  o.num_attention_heads = shape.heads;
  o.attention_head_size = shape.hidden / shape.heads;
  o.intermediate_size = shape.intermediate;
  o.attention_dropout_prob = 0;
  o.hidden_dropout_prob = 0;
  o.pre_layernorm = true;
  o.post_layernorm = false;
  o.causal = true;
  o.init = smp::tp::Init::normal(0.02);
  smp::comm::Communicator& group = smp::process_group(smp::CommGroup::TP_GROUP);
  at::manual_seed(0);
  std::vector<std::shared_ptr<smp::tp::ParallelTransformerLayer>> layers;
  for (int i = 0; i < num_layers; ++i) {
    layers.push_back(
        std::make_shared<smp::tp::ParallelTransformerLayer>(o, smp::tp::TpGroup(group)));
  }
  const at::Tensor x = at::randn({shape.batch, shape.seq, shape.hidden});
  auto step = [&] {
    for (auto& layer : layers) layer->zero_grad();
    at::Tensor h = x;
    for (auto& layer : layers) h = layer->forward(h, {});
    h.mean().backward();
  };
  for (int i = 0; i < 2; ++i) step();
  group.reset_counters();
  step();
  const int64_t comm_bytes = group.counters().total().bytes;
  double best = 1e30;
  for (int trial = 0; trial < 6; ++trial) {
    smp::barrier();
    const double start = now_s();
    for (int i = 0; i < shape.iters; ++i) step();
    smp::barrier();
    best = std::min(best, (now_s() - start) / shape.iters);
  }
  const int64_t theory = num_layers * 4 * shape.batch * shape.seq * shape.hidden * 4;
  if (smp::rank() == 0) {
    std::printf("smp layers=%d tokens_per_s=%.1f step_ms=%.2f comm_bytes=%lld theory_bytes=%lld\n",
                num_layers, shape.batch * shape.seq / best, best * 1e3,
                static_cast<long long>(comm_bytes), static_cast<long long>(theory));
    std::fflush(stdout);
  }
}

}  // namespace

int main(int argc, char** argv) {
  try {
    Shape shape;
    int64_t* fields[] = {&shape.batch, &shape.seq,          &shape.hidden,
                         &shape.heads, &shape.intermediate, &shape.iters};
    for (int i = 1; i < argc && i <= 6; ++i) *fields[i - 1] = std::atoll(argv[i]);
    at::set_num_threads(1);
    smp::comm::init_mpi();  // tp = the world size (2 in the benchmark)
    smp::init(smp::Config::from_json_string(
        "{\"tensor_parallel_degree\": " + std::to_string(smp::comm::world_size()) +
        ", \"ddp\": true, \"optimize\": \"speed\"}"));
    for (int layers : {1, 4}) bench(shape, layers);
    smp::shutdown();
    smp::comm::finalize_mpi();  // we started MPI, so we end it
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "tp_bench: %s\n", e.what());
    smp::comm::abort_world(1);
    return 1;
  }
}
