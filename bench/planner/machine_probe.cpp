// machine_probe: measures this machine for smp-plan's cost model and writes a cluster file.
//
//   mpirun -np 2 build/bench/planner/machine_probe [--out cluster.json]
//
// The JSON goes to stdout (rank 0) and, with --out, to that file too. What is measured, with
// one intra-op thread per rank (at::set_num_threads(1)):
//
//   rank 0 alone (the other ranks wait without spinning):
//     peak_tflops.fp32   the best fp32 at::mm throughput seen over the GEMM classes below
//     gemm_efficiency    per class d (16, 32, ..., 1024): the mean throughput of the shapes
//                        (M=2048, K=d, N=d) and (M=d, K=d, N=d), over peak_tflops.fp32
//     peak_tflops.bf16   the best bf16 at::mm throughput at d = 1024 (as measured: a CPU
//                        without bf16 kernels reports its slow figure)
//     memory_bandwidth_gb_s   at::add_out over 64 MiB fp32 tensors, bytes = 3 x 64 MiB
//     softmax_bandwidth_gb_s  at::softmax over the last dim of (64, 128, 128) fp32 (B*heads =
//                        16*4, S = 128: a tiny GPT-2's attention scores; 4 MiB, so it runs
//                        partly from cache), bytes = read + write = 2 x 4 MiB
//   ranks 0 and 1 (plain MPI on raw buffers, nonblocking calls polled with a yield):
//     intra_node.latency_us      8-byte ping-pong, round trip / 2
//     intra_node.p2p_bandwidth_gb_s  16 MiB ping-pong, bytes / (round trip / 2)
//     intra_node.bandwidth_gb_s  MPI_Allreduce (sum) of 16 MiB fp32 over the world, as the
//                        ring's bus bandwidth: bytes / time x 2 (n - 1) / n
//   every rank:
//     runtime_overhead_gb  the largest VmRSS over the ranks right after MPI init and one tiny
//                        torch op (what a rank holds before any model), GB = 1e9 bytes
//
// Every figure is the best (compute) or the median (communication) of timed trials after a
// warm-up; each compute measurement stays under ~0.3 s. The machine's own fields:
// gpus_per_node = kRanksPerNode, compute_slots_per_node = std::thread::hardware_concurrency(),
// memory_gb = MemTotal / 1e9 / kRanksPerNode; inter_node = intra_node (one node).
// Exit status: 0; 2 for bad arguments (the message names the flag); 1 when something fails.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <mpi.h>

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

// The value (in kB) of a "Key:   123 kB" line of a /proc file; 0 when absent.
double proc_kb(const std::string& path, const std::string& key) {
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(key + ":", 0) == 0) {
      std::istringstream fields(line.substr(key.size() + 1));
      double kb = 0;
      fields >> kb;
      return kb;
    }
  }
  return 0;
}

// Completes a nonblocking request, yielding the core meanwhile: ranks share cores here.
void wait_yielding(MPI_Request* request) {
  int done = 0;
  for (int polls = 0;; ++polls) {
    MPI_Test(request, &done, MPI_STATUS_IGNORE);
    if (done) return;
    if (polls < 64) {
      std::this_thread::yield();
    } else {
      std::this_thread::sleep_for(std::chrono::microseconds(polls < 4096 ? 20 : 500));
    }
  }
}

void barrier_yielding() {
  MPI_Request request;
  MPI_Ibarrier(MPI_COMM_WORLD, &request);
  wait_yielding(&request);
}

// ---- compute (rank 0) ----------------------------------------------------------------------

// Best seconds per call of fn: a warm-up, then trials of `iters` calls each sized to ~30 ms,
// as many trials as fit in `budget_s` (2 to 7).
template <class Fn>
double best_seconds(Fn&& fn, double budget_s = 0.25) {
  fn();  // first touch, kernel selection
  auto start = Clock::now();
  fn();
  const double once = std::max(seconds_since(start), 1e-7);
  const int64_t iters = std::max<int64_t>(1, static_cast<int64_t>(0.03 / once));
  const int trials = static_cast<int>(
      std::clamp(budget_s / (static_cast<double>(iters) * once), 2.0, 7.0));
  double best = 1e30;
  for (int t = 0; t < trials; ++t) {
    start = Clock::now();
    for (int64_t i = 0; i < iters; ++i) fn();
    best = std::min(best, seconds_since(start) / static_cast<double>(iters));
  }
  return best;
}

// GFLOP/s of at::mm for (M x K) @ (K x N).
double gemm_gflops(int64_t m, int64_t k, int64_t n, at::ScalarType dtype) {
  const at::Tensor a = at::randn({m, k}).to(dtype);
  const at::Tensor b = at::randn({k, n}).to(dtype);
  const double s = best_seconds([&] { at::Tensor c = at::mm(a, b); });
  return 2.0 * static_cast<double>(m) * static_cast<double>(k) * static_cast<double>(n) / s / 1e9;
}

struct ComputeFigures {
  double fp32_tflops = 0;
  double bf16_tflops = 0;
  std::vector<std::pair<int64_t, double>> efficiency;  // (min dim, fraction of fp32 peak)
  double memory_gb_s = 0;
  double softmax_gb_s = 0;
};

ComputeFigures measure_compute() {
  ComputeFigures f;
  const std::vector<int64_t> classes = {16, 32, 64, 128, 256, 512, 1024};
  std::vector<double> class_gflops;
  double best = 0;
  for (int64_t d : classes) {
    const double tall = gemm_gflops(2048, d, d, at::kFloat);
    const double square = gemm_gflops(d, d, d, at::kFloat);
    class_gflops.push_back((tall + square) / 2);
    best = std::max({best, tall, square});
  }
  f.fp32_tflops = best / 1e3;
  for (size_t i = 0; i < classes.size(); ++i) {
    f.efficiency.emplace_back(classes[i], class_gflops[i] / best);
  }
  const int64_t top = classes.back();
  f.bf16_tflops = std::max(gemm_gflops(2048, top, top, at::kBFloat16),
                           gemm_gflops(top, top, top, at::kBFloat16)) / 1e3;

  // Streaming: c = a + b over 64 MiB fp32 tensors (beyond any cache here).
  const int64_t numel = (int64_t{64} << 20) / 4;
  const at::Tensor a = at::randn({numel});
  const at::Tensor b = at::randn({numel});
  at::Tensor c = at::empty({numel});
  const double add_s = best_seconds([&] { at::add_out(c, a, b); });
  f.memory_gb_s = 3.0 * static_cast<double>(numel) * 4 / add_s / 1e9;

  // Softmax over attention-score rows: (B*heads, S, S), S = 128.
  const at::Tensor scores = at::randn({64, 128, 128});
  const double softmax_s = best_seconds([&] { at::Tensor p = at::softmax(scores, -1); });
  f.softmax_gb_s = 2.0 * static_cast<double>(scores.numel()) * 4 / softmax_s / 1e9;
  return f;
}

// ---- communication (ranks 0 and 1) ---------------------------------------------------------

struct CommFigures {
  double latency_us = 0;
  double bandwidth_gb_s = 0;
  double allreduce_gb_s = 0;
};

// Median seconds per round trip between ranks 0 and 1 for `bytes`-byte messages.
double ping_pong_seconds(int rank, int64_t bytes, int64_t iters, int trials) {
  std::vector<char> out(static_cast<size_t>(bytes), static_cast<char>(rank + 1));
  std::vector<char> in(static_cast<size_t>(bytes), 0);
  const int count = static_cast<int>(bytes);
  auto round_trip = [&] {
    MPI_Request request;
    if (rank == 0) {
      MPI_Isend(out.data(), count, MPI_BYTE, 1, 7, MPI_COMM_WORLD, &request);
      wait_yielding(&request);
      MPI_Irecv(in.data(), count, MPI_BYTE, 1, 7, MPI_COMM_WORLD, &request);
      wait_yielding(&request);
    } else if (rank == 1) {
      MPI_Irecv(in.data(), count, MPI_BYTE, 0, 7, MPI_COMM_WORLD, &request);
      wait_yielding(&request);
      MPI_Isend(out.data(), count, MPI_BYTE, 0, 7, MPI_COMM_WORLD, &request);
      wait_yielding(&request);
    }
  };
  for (int64_t i = 0; i < std::min<int64_t>(iters, 50); ++i) round_trip();
  if (rank <= 1 && in[0] != static_cast<char>(2 - rank)) {
    throw std::runtime_error("ping-pong payload is not the peer's");
  }
  std::vector<double> times;
  for (int t = 0; t < trials; ++t) {
    barrier_yielding();
    const auto start = Clock::now();
    for (int64_t i = 0; i < iters; ++i) round_trip();
    times.push_back(seconds_since(start) / static_cast<double>(iters));
  }
  return median(times);
}

double allreduce_seconds(int world_size, int64_t bytes, int64_t iters, int trials) {
  const int count = static_cast<int>(bytes / 4);
  std::vector<float> buffer(static_cast<size_t>(count), 1.0f);
  MPI_Request request;
  MPI_Iallreduce(MPI_IN_PLACE, buffer.data(), count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD, &request);
  wait_yielding(&request);
  if (buffer[0] != static_cast<float>(world_size)) {
    throw std::runtime_error("allreduce result is wrong");
  }
  std::fill(buffer.begin(), buffer.end(), 0.0f);
  std::vector<double> times;
  for (int t = 0; t < trials; ++t) {
    barrier_yielding();
    const auto start = Clock::now();
    for (int64_t i = 0; i < iters; ++i) {
      // Blocking MPI_Allreduce: what a planner's all-reduce costs with Open MPI's algorithms
      // (MPI_Iallreduce goes through libnbc, which is slower for large messages).
      MPI_Allreduce(MPI_IN_PLACE, buffer.data(), count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
    }
    times.push_back(seconds_since(start) / static_cast<double>(iters));
  }
  return median(times);
}

CommFigures measure_comm(int rank, int world_size) {
  CommFigures f;
  const int64_t big = int64_t{16} << 20;
  f.latency_us = ping_pong_seconds(rank, 8, 2000, 5) / 2 * 1e6;
  f.bandwidth_gb_s = static_cast<double>(big) / (ping_pong_seconds(rank, big, 8, 5) / 2) / 1e9;
  f.allreduce_gb_s = static_cast<double>(big) / allreduce_seconds(world_size, big, 6, 5) / 1e9;
  return f;
}

// ---- output --------------------------------------------------------------------------------

std::string fmt(double value, int significant = 4) {
  char buffer[64];
  std::snprintf(buffer, sizeof(buffer), "%.*g", significant, value);
  return buffer;
}

// The planner's "devices" here are ranks: up to this many run on this one node (sharing its
// cores, compute_slots_per_node, and its memory, memory_gb each).
constexpr int kRanksPerNode = 4;

std::string cluster_json(int world_size, double overhead_gb, const ComputeFigures& c,
                         const CommFigures& m) {
  const double memory_gb = proc_kb("/proc/meminfo", "MemTotal") * 1024 / 1e9;
  std::string efficiency;
  for (const auto& [dim, fraction] : c.efficiency) {
    if (!efficiency.empty()) efficiency += ", ";
    efficiency += "[" + std::to_string(dim) + ", " + fmt(fraction, 3) + "]";
  }
  // The planner's collectives take the ring's bus bandwidth (algorithm bandwidth x 2(n-1)/n);
  // its pipeline sends the point-to-point figure.
  const double bus = m.allreduce_gb_s * 2.0 * (world_size - 1) / world_size;
  const std::string link = "{\"bandwidth_gb_s\": " + fmt(bus) +
                           ", \"latency_us\": " + fmt(m.latency_us) +
                           ", \"p2p_bandwidth_gb_s\": " + fmt(m.bandwidth_gb_s) + "}";
  std::ostringstream out;
  out << "{\"name\": \"local\", \"description\": \"this machine, measured by "
         "bench/planner/machine_probe\",\n"
      << " \"gpus_per_node\": " << kRanksPerNode
      << ", \"compute_slots_per_node\": " << std::thread::hardware_concurrency()
      << ", \"memory_gb\": " << fmt(memory_gb / kRanksPerNode, 3) << ",\n"
      << " \"peak_tflops\": {\"fp32\": " << fmt(c.fp32_tflops) << ", \"bf16\": "
      << fmt(c.bf16_tflops) << "},\n"
      << " \"gemm_efficiency\": [" << efficiency << "],\n"
      << " \"memory_bandwidth_gb_s\": " << fmt(c.memory_gb_s)
      << ", \"softmax_bandwidth_gb_s\": " << fmt(c.softmax_gb_s) << ",\n"
      << " \"intra_node\": " << link << ",\n"
      << " \"inter_node\": " << link << ",\n"
      << " \"runtime_overhead_gb\": " << fmt(overhead_gb, 3) << "}\n";
  return out.str();
}

// argv: [--out PATH] [--help]. Returns false (after saying why on rank 0) when it is wrong.
bool parse_args(int argc, char** argv, bool lead, std::string* out_path) {
  const char* usage = "usage: mpirun -np 2 machine_probe [--out cluster.json]\n";
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--out") {
      if (i + 1 >= argc || std::strncmp(argv[i + 1], "--", 2) == 0) {
        if (lead) std::fprintf(stderr, "machine_probe: flag --out needs a file path\n%s", usage);
        return false;
      }
      *out_path = argv[++i];
    } else if (arg.rfind("--out=", 0) == 0 && arg.size() > 6) {
      *out_path = arg.substr(6);
    } else {
      if (lead) {
        std::fprintf(stderr, "machine_probe: unknown flag \"%s\" (allowed: --out PATH)\n%s",
                     arg.c_str(), usage);
      }
      return false;
    }
  }
  return true;
}

int run(int argc, char** argv) {
  int rank = 0, world_size = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &world_size);
  std::string out_path;
  if (!parse_args(argc, argv, rank == 0, &out_path)) return 2;
  if (world_size < 2) {
    if (rank == 0) {
      std::fprintf(stderr, "machine_probe: needs at least 2 ranks (mpirun -np 2); got %d\n",
                   world_size);
    }
    return 2;
  }
  at::set_num_threads(1);
  // The runtime's own resident set: MPI is up; one tiny op has loaded torch's CPU kernels.
  const at::Tensor tiny = at::ones({4}) + 1;
  double rss_gb = proc_kb("/proc/self/status", "VmRSS") * 1024 / 1e9;
  double overhead_gb = 0;
  MPI_Reduce(&rss_gb, &overhead_gb, 1, MPI_DOUBLE, MPI_MAX, 0, MPI_COMM_WORLD);

  // The output file is opened first, so that a bad path fails before the measurements.
  std::ofstream file;
  if (rank == 0 && !out_path.empty()) {
    file.open(out_path);
    if (!file) {
      std::fprintf(stderr, "machine_probe: flag --out: cannot write \"%s\"\n", out_path.c_str());
    }
  }
  int file_ok = rank != 0 || out_path.empty() || static_cast<bool>(file);
  MPI_Bcast(&file_ok, 1, MPI_INT, 0, MPI_COMM_WORLD);
  if (!file_ok) return 2;

  // Rank 0 computes while the others wait without taking a core.
  ComputeFigures compute;
  if (rank == 0) compute = measure_compute();
  barrier_yielding();
  const CommFigures comm = measure_comm(rank, world_size);
  barrier_yielding();

  if (rank == 0) {
    const std::string json = cluster_json(world_size, overhead_gb, compute, comm);
    std::fputs(json.c_str(), stdout);
    std::fflush(stdout);
    if (!out_path.empty()) {
      file << json;
      file.close();
      if (!file) throw std::runtime_error("cannot write --out file \"" + out_path + "\"");
    }
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  int provided = 0;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
  int rc = 0;
  try {
    rc = run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "machine_probe: %s\n", e.what());
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
  MPI_Finalize();
  return rc;
}
