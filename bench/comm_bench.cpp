// comm_bench: point-to-point and all-reduce speed of smp's host (MPI) transport.
//
// Run under mpirun with 2 (or more) ranks; bench/comm.sh runs it beside bench/torch_comm.py,
// which measures torch.distributed (gloo) with exactly the same method:
//
//   sizes    float32 tensors of 1 KiB, 4 KiB, ..., 64 MiB (powers of 4; 16 MiB is one of them)
//   p2p      ping-pong between world ranks 0 and 1 with send(...).wait() then
//            recv_into(...).wait() (rank 1 the other way round). One-way latency = round
//            trip / 2; bandwidth = bytes / one-way time.
//   all_reduce  sum over the world, in place, back to back. Time = per call; bandwidth is the
//            algorithm bandwidth = bytes / time (not the bus bandwidth).
//   method   warm-up calls, then as many again timed, from which rank 0 picks the calls per
//            trial so that one trial lasts about kTrialSeconds (and broadcasts it), then
//            kTrials timed trials, each after a barrier; the figure reported is the median
//            trial. Times are rank 0's.
//
// Output: one line per (op, size), e.g.
//   smp p2p 16777216 lat_us=4012.3 GBps=4.181 iters=25 trials=5
// with GBps = 1e9 bytes per second.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "smp/comm/communicator.h"
#include "smp/core/error.h"
#include "smp/comm/launch.h"
#include "smp/comm/process_groups.h"
#include "smp/core/topology.h"

namespace {

using Clock = std::chrono::steady_clock;
using smp::comm::Communicator;

constexpr int kTrials = 5;
constexpr double kTrialSeconds = 0.08;  // 5 trials: >= ~0.4 s per (op, size)
constexpr int64_t kMinIters = 2;
constexpr int64_t kMaxIters = 20000;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

std::vector<int64_t> sizes_bytes() {
  std::vector<int64_t> sizes;
  for (int64_t bytes = 1 << 10; bytes <= (int64_t{64} << 20); bytes *= 4) sizes.push_back(bytes);
  return sizes;
}

int64_t warmup_iters(int64_t bytes) { return bytes >= (int64_t{4} << 20) ? 3 : 20; }

// Rank 0 decides how many calls one trial makes from the warm-up's time per call; every
// rank gets the same number.
int64_t agree_iters(Communicator& world, double seconds_per_call) {
  at::Tensor n = at::zeros({1}, at::kLong);
  if (world.rank() == 0) {
    const double want = kTrialSeconds / std::max(seconds_per_call, 1e-9);
    n.fill_(std::clamp(static_cast<int64_t>(want), kMinIters, kMaxIters));
  }
  world.broadcast(n, 0).wait();
  return n.item<int64_t>();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

// One round trip (rank 0's view): 0 sends, 1 receives and sends back, 0 receives.
void ping_pong(Communicator& world, at::Tensor& out, at::Tensor& in) {
  const int rank = world.rank();
  if (rank == 0) {
    world.send(out, 1).wait();
    world.recv_into(in, 1).wait();
  } else if (rank == 1) {
    world.recv_into(in, 0).wait();
    world.send(out, 0).wait();
  }
}

void bench_p2p(Communicator& world, int64_t bytes) {
  const int64_t numel = bytes / 4;
  at::Tensor out = at::full({numel}, static_cast<float>(world.rank() + 1), at::kFloat);
  at::Tensor in = at::zeros({numel}, at::kFloat);
  // Warm-up (and a check that the payload is the peer's).
  const int64_t warm = warmup_iters(bytes);
  for (int64_t i = 0; i < warm; ++i) ping_pong(world, out, in);
  // A second, timed pass sizes the trials (the first one paid for first-touch and set-up).
  auto start = Clock::now();
  for (int64_t i = 0; i < warm; ++i) ping_pong(world, out, in);
  const double per_call = seconds_since(start) / static_cast<double>(warm);
  if (world.rank() <= 1) {
    const float want = static_cast<float>(2 - world.rank());  // the other rank's rank + 1
    if (in[0].item<float>() != want || in[numel - 1].item<float>() != want) {
      throw smp::InternalError("comm_bench: p2p payload is wrong");
    }
  }
  const int64_t iters = agree_iters(world, per_call);
  std::vector<double> trials;
  for (int t = 0; t < kTrials; ++t) {
    world.barrier().wait();
    start = Clock::now();
    for (int64_t i = 0; i < iters; ++i) ping_pong(world, out, in);
    trials.push_back(seconds_since(start) / static_cast<double>(iters));
  }
  if (world.rank() == 0) {
    const double one_way = median(trials) / 2;
    std::printf("smp p2p %lld lat_us=%.2f GBps=%.4f iters=%lld trials=%d\n",
                static_cast<long long>(bytes), one_way * 1e6,
                static_cast<double>(bytes) / one_way / 1e9, static_cast<long long>(iters),
                kTrials);
    std::fflush(stdout);
  }
}

void bench_all_reduce(Communicator& world, int64_t bytes) {
  const int64_t numel = bytes / 4;
  // A check first: ones sum to the world size.
  at::Tensor t = at::ones({numel}, at::kFloat);
  world.all_reduce(t).wait();
  const float want = static_cast<float>(world.size());
  if (t[0].item<float>() != want || t[numel - 1].item<float>() != want) {
    throw smp::InternalError("comm_bench: all_reduce result is wrong");
  }
  t.zero_();  // zeros stay zeros: no overflow, no denormals, whatever the call count
  const int64_t warm = warmup_iters(bytes);
  for (int64_t i = 0; i < warm; ++i) world.all_reduce(t).wait();
  auto start = Clock::now();
  for (int64_t i = 0; i < warm; ++i) world.all_reduce(t).wait();
  const double per_call = seconds_since(start) / static_cast<double>(warm);
  const int64_t iters = agree_iters(world, per_call);
  std::vector<double> trials;
  for (int trial = 0; trial < kTrials; ++trial) {
    world.barrier().wait();
    start = Clock::now();
    for (int64_t i = 0; i < iters; ++i) world.all_reduce(t).wait();
    trials.push_back(seconds_since(start) / static_cast<double>(iters));
  }
  if (world.rank() == 0) {
    const double time = median(trials);
    std::printf("smp allreduce %lld lat_us=%.2f GBps=%.4f iters=%lld trials=%d\n",
                static_cast<long long>(bytes), time * 1e6,
                static_cast<double>(bytes) / time / 1e9, static_cast<long long>(iters), kTrials);
    std::fflush(stdout);
  }
}

int run() {
  const int world_size = smp::comm::world_size();
  if (world_size < 2) {
    std::fprintf(stderr, "comm_bench: needs at least 2 ranks (mpirun -np 2); got %d\n",
                 world_size);
    return 2;
  }
  at::set_num_threads(1);
  smp::comm::ProcessGroups groups(smp::Topology(world_size, 1, 1, "cluster"), 60);
  Communicator& world = groups.get(smp::CommGroup::WORLD);
  if (world.rank() == 0) {
    std::printf("# smp comm_bench: %d ranks, float32, median of %d trials; p2p lat_us is "
                "one-way (round trip / 2), allreduce GBps is algorithm bandwidth (bytes / time)\n",
                world_size, kTrials);
    std::fflush(stdout);
  }
  for (int64_t bytes : sizes_bytes()) bench_p2p(world, bytes);
  for (int64_t bytes : sizes_bytes()) bench_all_reduce(world, bytes);
  world.barrier().wait();
  return 0;
}

}  // namespace

int main() {
  int rc = 0;
  try {
    smp::comm::init_mpi();
    rc = run();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "comm_bench: %s\n", e.what());
    smp::comm::abort_world(1);
  }
  smp::comm::finalize_mpi();
  return rc;
}
