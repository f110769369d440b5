// pipeline_bench: smp's pipeline (DistributedModel + smp::step) on a compute-heavy MLP, timed.
//
// Run under mpirun with 2 ranks; bench/pipeline.sh runs it beside bench/pipeline/torch_pipeline.py,
// which runs the same model, batch and method on torch.distributed.pipelining (gloo).
//
//   model    --layers (8) blocks of Linear(--hidden, --hidden) + GELU (1024), built on every rank
//            from torch::manual_seed(1) (libtorch's Linear init draws exactly what PyTorch's
//            does, so both sides hold the same weights); split evenly, the first half on pipeline
//            rank 0 (manual partition, as the torch peer splits it).
//   data     x, y = randn(--batch, --hidden) (256) after torch::manual_seed(7); loss MSE (mean);
//            --microbatches (8) microbatches; gradients averaged over microbatches.
//   step     smp::step, forward + backward, no optimizer; the parameters' grads are dropped
//            after each step (as zero_grad(set_to_none=True) would) outside the timed region.
//   method   --warmup (3) untimed steps, then --steps (30) timed steps, each after a barrier;
//            a step's time is the slowest rank's time around smp::step. Per step also the
//            compute time of each rank (step_stats().busy_s: the executor's forward/backward
//            actions), the CPU time each rank's process used in the step (all its threads;
//            the cost of waiting, next to busy) and the schedule's theoretical bubble.
//   memory   VmHWM (peak RSS) of each rank at the end, and VmRSS right before the first step;
//            run one schedule per process for a clean peak.
//
// Output (rank 0), one line with key=value pairs, all times in ms:
//   smp pipeline=interleaved step_ms=<median> step_min_ms=... busy_ms=<median of slowest rank>
//       busy_ranks_ms=<median of each rank> ideal_ms=...
//       efficiency=<median per-step ideal / wall> bubble_theory=...
//       bubble_measured=... cpu_ms=<r0>,<r1> rss_mb=<r0>,<r1> base_rss_mb=<r0>,<r1>
//       loss=<step 0 loss>
// Efficiency of one step = ideal / wall, ideal = (max over ranks of busy) * (m + p - 1) / m
// (= busy / (1 - theoretical bubble)); the median over the timed steps is reported.
// bubble_measured = 1 - (mean over ranks of busy) / wall, median over the timed steps.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <time.h>

#include <ATen/Parallel.h>
#include <torch/torch.h>

#include "smp/smp.h"

namespace {

using Clock = std::chrono::steady_clock;
using smp::Layer;
using smp::Values;

struct Args {
  std::string pipeline = "interleaved";
  int layers = 8;
  int hidden = 1024;
  int batch = 256;
  int microbatches = 8;
  int warmup = 3;
  int steps = 30;
};

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string key = argv[i];
    if (i + 1 >= argc) throw std::runtime_error("pipeline_bench: " + key + " needs a value");
    const std::string value = argv[++i];
    if (key == "--pipeline") a.pipeline = value;
    else if (key == "--layers") a.layers = std::stoi(value);
    else if (key == "--hidden") a.hidden = std::stoi(value);
    else if (key == "--batch") a.batch = std::stoi(value);
    else if (key == "--microbatches") a.microbatches = std::stoi(value);
    else if (key == "--warmup") a.warmup = std::stoi(value);
    else if (key == "--steps") a.steps = std::stoi(value);
    else throw std::runtime_error("pipeline_bench: unknown option " + key);
  }
  return a;
}

std::vector<Layer> make_model(const Args& a) {
  torch::manual_seed(1);
  std::vector<Layer> layers;
  for (int i = 0; i < a.layers; ++i) {
    auto linear = std::make_shared<torch::nn::LinearImpl>(a.hidden, a.hidden);
    layers.push_back(smp::module_layer(
        "block" + std::to_string(i), linear,
        [linear](const Values& in) -> Values { return {torch::gelu(linear->forward(in[0]))}; }));
  }
  return layers;
}

// A field of /proc/self/status in MiB ("VmHWM", "VmRSS").
double proc_status_mb(const std::string& field) {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(field + ":", 0) == 0) {
      std::istringstream fields(line.substr(field.size() + 1));
      double kb = 0;
      fields >> kb;
      return kb / 1024.0;
    }
  }
  return -1;
}

// CPU time of the whole process (every thread), in seconds.
double process_cpu_s() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

// Every rank's vector, concatenated in rank order (same length on every rank).
std::vector<double> gather(const std::vector<double>& mine) {
  std::string bytes(reinterpret_cast<const char*>(mine.data()), mine.size() * sizeof(double));
  std::vector<std::string> all = smp::allgather(bytes, smp::CommGroup::WORLD);
  std::vector<double> out;
  for (const std::string& b : all) {
    const double* p = reinterpret_cast<const double*>(b.data());
    out.insert(out.end(), p, p + b.size() / sizeof(double));
  }
  return out;
}

int run(const Args& a) {
  at::set_num_threads(1);
  smp::init(smp::Config::from_json_string(
      "{\"pipeline_parallel_degree\": 2, \"microbatches\": " + std::to_string(a.microbatches) +
      ", \"pipeline\": \"" + a.pipeline + "\", \"auto_partition\": false}"));
  const int world = smp::size();
  if (world != 2) throw std::runtime_error("pipeline_bench: run it on 2 ranks (pp = 2)");
  const int p = smp::pp_size();
  const int m = a.microbatches;

  smp::DistributedModel model(make_model(a));
  for (int i = 0; i < a.layers; ++i) {
    model.set_partition("block" + std::to_string(i), i < a.layers / 2 ? 0 : 1);
  }
  torch::manual_seed(7);
  const at::Tensor x = torch::randn({a.batch, a.hidden});
  const at::Tensor y = torch::randn({a.batch, a.hidden});
  auto loss_fn = [](const Values& out, const Values& targets) -> Values {
    return {torch::mse_loss(out[0], targets[0])};
  };

  const double base_rss = proc_status_mb("VmRSS");
  double first_loss = 0;
  std::vector<double> wall, busy, cpu;
  double bubble_theory = 0;
  for (int it = 0; it < a.warmup + a.steps; ++it) {
    smp::barrier();
    const double cpu0 = process_cpu_s();
    const auto t0 = Clock::now();
    std::vector<smp::StepOutput> out = smp::step(model, {x}, {y}, loss_fn);
    const double seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    const double cpu_seconds = process_cpu_s() - cpu0;
    if (it == 0) {
      first_loss = out.at(0).reduce_mean().item<double>();
      // The split both sides use: half the blocks (weight + bias each) on each rank.
      if (model.local_parameters().size() != static_cast<size_t>(a.layers)) {
        throw std::runtime_error("pipeline_bench: expected " + std::to_string(a.layers / 2) +
                                 " blocks on each rank");
      }
    }
    for (at::Tensor& param : model.local_parameters()) param.mutable_grad() = at::Tensor();
    if (it < a.warmup) continue;
    wall.push_back(seconds);
    cpu.push_back(cpu_seconds);
    busy.push_back(model.step_stats().busy_s);
    bubble_theory = model.step_stats().theoretical_bubble;
  }
  const double hwm = proc_status_mb("VmHWM");

  const std::vector<double> all_wall = gather(wall);
  const std::vector<double> all_busy = gather(busy);
  const std::vector<double> all_cpu = gather(cpu);
  const std::vector<double> all_rss = gather({hwm, base_rss});
  if (smp::rank() == 0) {
    const int n = a.steps;
    std::vector<double> step_wall, step_busy, step_eff, step_bubble;
    for (int i = 0; i < n; ++i) {
      double w = 0, b = 0, b_sum = 0;
      for (int r = 0; r < world; ++r) {
        w = std::max(w, all_wall[r * n + i]);
        b = std::max(b, all_busy[r * n + i]);
        b_sum += all_busy[r * n + i];
      }
      step_wall.push_back(w);
      step_busy.push_back(b);
      step_eff.push_back(b / (1 - bubble_theory) / w);
      step_bubble.push_back(1 - b_sum / world / w);
    }
    const double ideal_factor = 1 / (1 - bubble_theory);  // (m + p - 1) / m
    // Per rank, the median over steps, as "<r0>,<r1>" in ms.
    auto per_rank = [&](const std::vector<double>& all) {
      std::string text;
      for (int r = 0; r < world; ++r) {
        const std::vector<double> mine(all.begin() + r * n, all.begin() + (r + 1) * n);
        char field[32];
        std::snprintf(field, sizeof field, "%s%.3f", r ? "," : "", median(mine) * 1e3);
        text += field;
      }
      return text;
    };
    const std::string busy_ranks = per_rank(all_busy);
    const std::string cpu_ranks = per_rank(all_cpu);
    std::printf(
        "smp pipeline=%s p=%d m=%d layers=%d hidden=%d batch=%d steps=%d step_ms=%.3f "
        "step_min_ms=%.3f busy_ms=%.3f busy_ranks_ms=%s ideal_ms=%.3f efficiency=%.4f "
        "bubble_theory=%.4f bubble_measured=%.4f cpu_ms=%s rss_mb=%.1f,%.1f "
        "base_rss_mb=%.1f,%.1f loss=%.6f\n",
        a.pipeline.c_str(), p, m, a.layers, a.hidden, a.batch, n, median(step_wall) * 1e3,
        *std::min_element(step_wall.begin(), step_wall.end()) * 1e3, median(step_busy) * 1e3,
        busy_ranks.c_str(), median(step_busy) * ideal_factor * 1e3, median(step_eff), bubble_theory,
        median(step_bubble), cpu_ranks.c_str(), all_rss[0], all_rss[2], all_rss[1], all_rss[3], first_loss);
    std::fflush(stdout);
  }
  smp::shutdown();
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(parse(argc, argv));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "pipeline_bench: %s\n", e.what());
    return 1;
  }
}
