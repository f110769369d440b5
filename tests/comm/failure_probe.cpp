// A small smp program whose rank 1 dies or hangs, for failure_test.sh.
//   failure_probe <mode> <timeout_s>
//   kill      rank 1 SIGKILLs itself before an all_reduce over WORLD
//   hang      rank 1 sleeps instead of joining the all_reduce
//   p2p-hang  rank 1 sleeps; rank 0 waits to receive from it; the others wait in a barrier
//   init-hang rank 1 never calls smp::init; the others wait in theirs
//   init-disagree  rank 1 inits with pipeline_parallel_degree 3, the others with 1
//   stall:<call>  rank 1 stalls forever in smp::init's call named <call> (SMP_TEST_STALL): the
//             others' same call must time out, naming it
//   shutdown-after-failure  rank 1 dies; the others' all_reduce fails and they call
//             smp::shutdown(), which must not hang (its barrier is bounded too)
//   step-throws  comm_timeout_s 60 (not the argument): pp 3, the last stage's layer throws in
//             its second step's forward; the earlier stages, waiting on it inside the step, must
//             stop at once with its error (PeerFailedError), long before the timeout
//   phases    phase_timeout_s 6: rank 0 works 4 s alone (on_rank0), longer than the 3 s
//             comm_timeout_s, which must pass; then rank 2 never finishes its part of an
//             on_every_rank phase, which must end the others after phase_timeout_s
// Survivors must print the timeout message and abort the job, as a real main does.
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <string>

#include <ATen/ATen.h>
#include <torch/torch.h>

#include "smp/smp.h"

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: failure_probe kill|hang|p2p-hang <timeout_s>\n");
    return 2;
  }
  const std::string mode = argv[1];
  const std::string config = std::string("{\"ddp\": true, \"comm_timeout_s\": ") + argv[2];
  try {
    if (mode.rfind("stall:", 0) == 0) {
      setenv("SMP_TEST_STALL", ("1:" + mode.substr(6)).c_str(), 1);
      smp::init(smp::Config::from_json_string(config + "}"));
      std::fprintf(stderr, "[rank %d] init returned\n", smp::rank());
      return 3;
    }
    if (mode == "init-hang" || mode == "init-disagree") {
      smp::comm::init_mpi();
      if (smp::comm::world_rank() == 1 && mode == "init-hang") sleep(3600);
      const bool odd = smp::comm::world_rank() == 1;
      smp::init(smp::Config::from_json_string(config + (odd ? ", \"pipeline_parallel_degree\": 3}" : "}")));
      std::fprintf(stderr, "[rank %d] init returned\n", smp::rank());
      return 3;
    }
    if (mode == "phases") {
      smp::init(smp::Config::from_json_string(config + ", \"phase_timeout_s\": 6}"));
      smp::on_rank0("preparing the run (4 s)", [] {
        sleep(4);
        return std::string();
      });
      std::fprintf(stderr, "[rank %d] the 4 s phase passed\n", smp::rank());
      smp::on_every_rank("writing the checkpoint", [] {
        if (smp::rank() == 2) sleep(3600);
      });
      return 3;
    }
    if (mode == "step-throws") {
      smp::init(smp::Config::from_json_string(
          R"({"pipeline_parallel_degree": 3, "microbatches": 3, "comm_timeout_s": 60, "auto_partition": false})"));
      std::vector<smp::Layer> layers;
      int steps = 0;
      for (int i = 0; i < 3; ++i) {
        auto linear = std::make_shared<torch::nn::LinearImpl>(4, 4);
        layers.push_back(smp::module_layer("fc" + std::to_string(i), linear, [linear, i, &steps](const smp::Values& x) {
          if (i == 2 && steps == 1) throw std::runtime_error("injected failure in fc2's forward");
          return smp::Values{linear->forward(x[0])};
        }));
      }
      smp::DistributedModel model(layers);
      for (int i = 0; i < 3; ++i) model.set_partition("fc" + std::to_string(i), i);
      const smp::LossFn loss = [](const smp::Values& out, const smp::Values&) -> smp::Values {
        return {out[0].pow(2).mean()};
      };
      for (steps = 0; steps < 2; ++steps) smp::step(model, {at::ones({6, 4})}, {at::ones({6, 1})}, loss);
      return 3;
    }
    smp::init(smp::Config::from_json_string(config + "}"));
    smp::barrier();
    if (mode == "shutdown-after-failure") {
      if (smp::rank() == 1) std::raise(SIGKILL);
      try {
        at::Tensor t = at::ones({4});
        smp::process_group(smp::CommGroup::WORLD).all_reduce(t).wait();
      } catch (const smp::Error& e) {
        std::fprintf(stderr, "[rank %d] %s\n", smp::rank(), e.what());
      }
      smp::shutdown();  // throws (its barrier times out) rather than hanging
      std::fprintf(stderr, "[rank %d] shutdown returned\n", smp::comm::world_rank());
      return 3;
    }
    if (smp::rank() == 1) {
      if (mode == "kill") std::raise(SIGKILL);
      sleep(3600);
    }
    if (mode == "p2p-hang" && smp::rank() == 0) {
      smp::process_group(smp::CommGroup::WORLD).recv(1).wait();
    } else if (mode == "p2p-hang") {
      smp::barrier();
    } else {
      at::Tensor t = at::ones({4});
      smp::process_group(smp::CommGroup::WORLD).all_reduce(t).wait();
    }
    smp::shutdown();
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "[rank %d] %s\n", smp::comm::world_rank(), e.what());
    smp::comm::abort_world(1);
  }
}
