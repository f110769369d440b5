// smp-comm-demo: the README's first command until smp-train exists.
//
//   mpirun -np 4 build/apps/smp-comm-demo [--config run.json]
//
// Starts smp with a pp=2 x tp=2 layout (or the config given), prints which rank holds which
// coordinate and group, then exercises each group the way training will: an all-reduce over
// every group kind (checked against its closed form), a bf16 all-reduce, and a pipeline hand-off
// of an activation whose shape the receiver does not know. Ends with the traffic counters.
#include <cstdio>
#include <sstream>
#include <string>

#include <ATen/ATen.h>

#include "smp/smp.h"

namespace {

void say(const std::string& line) {
  if (smp::rank() == 0) std::printf("%s\n", line.c_str());
  std::fflush(stdout);
}

std::string join(const std::vector<int>& ranks) {
  std::ostringstream out;
  out << "[";
  for (size_t i = 0; i < ranks.size(); ++i) out << (i ? "," : "") << ranks[i];
  out << "]";
  return out.str();
}

void print_layout() {
  std::ostringstream mine;
  mine << "  " << smp::rank() << "    " << smp::pp_rank() << "   " << smp::tp_rank() << "   "
       << smp::rdp_rank() << "    " << smp::dp_rank() << "    " << smp::mp_rank() << "    "
       << join(smp::get_pp_group()) << " " << join(smp::get_tp_group()) << " "
       << join(smp::get_dp_group()) << " " << join(smp::get_mp_group());
  const auto rows = smp::allgather(mine.str(), smp::CommGroup::WORLD);
  say("rank  pp  tp  rdp  dp   mp   pp_group tp_group dp_group mp_group");
  for (const auto& row : rows) say(row);
}

// Every group kind sums its members' world ranks; each rank checks the closed form.
int check_group_sums() {
  int wrong = 0;
  for (smp::CommGroup kind : smp::all_comm_groups()) {
    smp::comm::Communicator& group = smp::process_group(kind);
    at::Tensor t = at::full({1024}, static_cast<float>(smp::rank()));
    group.all_reduce(t).wait();
    float want = 0;
    for (int r : group.world_ranks()) want += r;
    wrong += !at::equal(t, at::full({1024}, want));
    say(std::string("all_reduce over ") + smp::to_string(kind) + " of rank 0's group " +
        join(group.world_ranks()) + " = " + std::to_string(t[0].item<float>()));
  }
  at::Tensor half = at::full({1000}, 1.5, at::kBFloat16);
  smp::process_group(smp::CommGroup::WORLD).all_reduce(half, smp::comm::ReduceOp::kAvg).wait();
  wrong += !at::equal(half, at::full({1000}, 1.5, at::kBFloat16));
  say("bf16 average over WORLD = " + std::to_string(half[0].item<float>()));
  return wrong;
}

// Stage s sends a (batch, seq, hidden) activation to stage s + 1, which learns its shape from
// the message.
int pipeline_handoff() {
  smp::comm::Communicator& pipe = smp::process_group(smp::CommGroup::PP_GROUP);
  int wrong = 0;
  if (pipe.rank() + 1 < pipe.size()) {
    at::Tensor activation = at::full({4, 16, 32}, static_cast<float>(pipe.rank() + 1));
    pipe.send(activation, pipe.rank() + 1).wait();
  }
  if (pipe.rank() > 0) {
    smp::comm::Work got = pipe.recv(pipe.rank() - 1);
    got.wait();
    wrong += !at::equal(got.result(), at::full({4, 16, 32}, static_cast<float>(pipe.rank())));
  }
  say("pipeline hand-off of a (4, 16, 32) activation from each stage to the next: done");
  return wrong;
}

void print_counters() {
  say("traffic of rank 0 per group (calls, payload bytes):");
  for (smp::CommGroup kind : smp::all_comm_groups()) {
    const auto total = smp::process_group(kind).counters().total();
    say(std::string("  ") + smp::to_string(kind) + ": " + std::to_string(total.calls) +
        " calls, " + std::to_string(total.bytes) + " bytes");
  }
}

}  // namespace

int main(int argc, char** argv) {
  try {
    smp::Config config;
    if (argc == 3 && std::string(argv[1]) == "--config") {
      config = smp::Config::from_json_file(argv[2]);
    } else if (argc != 1) {
      std::fprintf(stderr, "usage: smp-comm-demo [--config run.json]\n");
      return 2;
    } else {
      smp::comm::init_mpi();
      const int world = smp::comm::world_size();
      const int pp = world % 2 == 0 ? 2 : 1;
      const int tp = world % 4 == 0 ? 2 : 1;
      config = smp::Config::from_json_string("{\"pipeline_parallel_degree\": " +
                                             std::to_string(pp) + ", \"tensor_parallel_degree\": " +
                                             std::to_string(tp) + ", \"ddp\": true}");
    }
    smp::init(config);
    say("smp communication demo: " + std::to_string(smp::size()) + " ranks, pp=" +
        std::to_string(smp::pp_size()) + " tp=" + std::to_string(smp::tp_size()) +
        " rdp=" + std::to_string(smp::rdp_size()) + ", placement " + smp::topology().placement());
    print_layout();
    int wrong = check_group_sums() + pipeline_handoff();
    at::Tensor all_wrong = at::full({1}, wrong, at::kInt);
    smp::process_group(smp::CommGroup::WORLD).all_reduce(all_wrong).wait();
    print_counters();
    const bool ok = all_wrong.item<int>() == 0;
    say(ok ? "demo OK: every result matched its closed form" : "demo FAILED: wrong results");
    smp::shutdown();
    return ok ? 0 : 1;
  } catch (const smp::Error& e) {
    std::fprintf(stderr, "smp-comm-demo: %s\n", e.what());
    if (smp::comm::mpi_initialized() && smp::comm::world_size() > 1) smp::comm::abort_world(1);
    return 1;
  }
}
