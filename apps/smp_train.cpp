// smp-train: train a GPT-2 or LLaMA-style model with SMP's parallelism.
//
//   mpirun -np 4 build/apps/smp-train --config run.json      (or: srun -n 4 build/apps/smp-train ...)
//   mpirun -np 4 build/apps/smp-train --config run.json --resume [tag]   (default: the newest)
//
// The run configuration is described in include/smp/train/train_config.h; what a run writes,
// in include/smp/train/trainer.h.
#include <cstdio>
#include <string>
#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include "smp/smp.h"
#include "smp/train/trainer.h"

int main(int argc, char** argv) {
  const bool resume = argc >= 4 && std::string(argv[3]) == "--resume";
  if (argc < 3 || argc > 5 || std::string(argv[1]) != "--config" || (argc > 3 && !resume)) {
    std::fprintf(stderr, "usage: smp-train --config run.json [--resume [tag]]\n");
    return 2;
  }
  try {
    smp::comm::init_mpi();  // first, so that only rank 0 reports a bad configuration
    smp::train::TrainConfig config = smp::train::TrainConfig::from_json_file(argv[2]);
    if (resume) config.checkpoint.resume = argc == 5 ? argv[4] : "newest";
#if defined(__GLIBC__)
    // Under sharded data parallelism, blocks of 64 KiB and more are mapped and unmapped, not
    // carved from glibc's heap: a step's freed buckets, packs and optimizer temporaries go back
    // to the system instead of staying in a heap that fragments (GPT-2 124M, sdp 4 on 4 ranks:
    // peak 2322 -> 1649 MB a rank). Not otherwise: every activation would then be a fresh
    // mapping, faulted in page by page (bench/train.sh: 0.70 of a plain libtorch loop, 0.98
    // without).
    if (config.smp.sharded_data_parallel_degree > 1) mallopt(M_MMAP_THRESHOLD, 64 * 1024);
#endif
    smp::init(config.smp);
    smp::train::train(config);
    smp::shutdown();
    smp::comm::finalize_mpi();
    return 0;
  } catch (const smp::ConfigError& e) {
    // Configuration and data errors are raised on every rank alike: each ends on its own.
    if (!smp::comm::mpi_initialized() || smp::comm::world_rank() == 0) {
      std::fprintf(stderr, "smp-train: %s\n", e.what());
    }
    smp::shutdown();
    smp::comm::finalize_mpi();
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "smp-train (rank %d): %s\n",
                 smp::comm::mpi_initialized() ? smp::comm::world_rank() : 0, e.what());
    smp::comm::abort_world(1);
  }
}
