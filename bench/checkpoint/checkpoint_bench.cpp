// Checkpoint throughput: save_checkpoint and resume_from_checkpoint of a gpt2-124m model with
// its AdamW state (fp32: weights + two moments, ~1.5 GB), on one or more ranks.
//
//   checkpoint_bench <dir> [rounds]
//
// Each round saves and resumes, then (rank 0) has dd write and read a file of the same size in
// the same folder, so each round pairs smp with the disk as it is at that moment. Prints, from
// rank 0, one line per round:
//   save_s=<s> load_s=<s> bytes=<n> dd_write_s=<s> dd_read_s=<s>
// (bytes: every rank's checkpoint files together). bench/checkpoint.sh reduces them.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>

#include <ATen/ATen.h>
#include <torch/optim/adamw.h>

#include "smp/core/files.h"
#include "smp/models/gpt.h"
#include "smp/smp.h"

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: checkpoint_bench <dir> [rounds]\n");
    return 2;
  }
  const std::string dir = argv[1];
  const int rounds = argc > 2 ? std::atoi(argv[2]) : 3;
  smp::comm::init_mpi();
  smp::init(smp::Config::from_json_string(R"({"ddp": true})"));
  using Clock = std::chrono::steady_clock;
  at::manual_seed(1);
  smp::models::Model model = smp::models::build_model(
      smp::models::named_model("gpt2-124m"), smp::tp::TpGroup(smp::process_group(smp::CommGroup::TP_GROUP)),
      smp::pp_size() > 1);
  smp::DistributedModel dmodel(std::move(model.layers));
  dmodel.partition({at::zeros({1, 8}, at::kLong)});
  smp::DistributedOptimizer optimizer(
      dmodel, std::make_unique<torch::optim::AdamW>(dmodel.local_parameters(),
                                                     torch::optim::AdamWOptions(1e-4)));
  for (auto& s : optimizer.state_slices()) s.values.normal_();  // state as after training

  const std::string folder = dir + "/bench_partial";
  for (int r = 0; r < rounds; ++r) {
    if (smp::rank() == 0) smp::files::remove_tree(folder);  // as dd writes a new file
    smp::barrier();
    auto start = Clock::now();
    smp::save_checkpoint(dir, "bench", true, dmodel, &optimizer);
    const double save_s = std::chrono::duration<double>(Clock::now() - start).count();
    // Read from the disk, not the page cache: the files are fsynced (clean), so this evicts them.
    for (const auto& name : smp::files::list_dir(folder)) {
      const int fd = ::open((folder + "/" + name).c_str(), O_RDONLY);
      if (fd >= 0) ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED), ::close(fd);
    }
    smp::barrier();
    start = Clock::now();
    smp::resume_from_checkpoint(dir, dmodel, &optimizer, "bench");
    smp::barrier();
    const double load_s = std::chrono::duration<double>(Clock::now() - start).count();
    if (smp::rank() == 0) {
      long long bytes = 0;
      for (const auto& name : smp::files::list_dir(folder)) {
        struct stat st {};
        if (::stat((folder + "/" + name).c_str(), &st) == 0) bytes += st.st_size;
      }
      const std::string file = dir + "/dd.bin";
      const std::string count = std::to_string((bytes + (1 << 20) - 1) >> 20);
      start = Clock::now();
      const int w = std::system(("dd if=/dev/zero of=" + file + " bs=1M count=" + count +
                                 " conv=fdatasync status=none").c_str());
      const double write_s = std::chrono::duration<double>(Clock::now() - start).count();
      std::system(("dd if=" + file + " iflag=nocache count=0 status=none").c_str());  // evict
      start = Clock::now();
      const int rd = std::system(("dd if=" + file + " of=/dev/null bs=1M status=none").c_str());
      const double read_s = std::chrono::duration<double>(Clock::now() - start).count();
      smp::files::remove_tree(file);
      if (w != 0 || rd != 0) std::fprintf(stderr, "checkpoint_bench: dd failed\n");
      std::printf("save_s=%.4f load_s=%.4f bytes=%lld dd_write_s=%.4f dd_read_s=%.4f\n", save_s,
                  load_s, bytes, write_s, read_s);
      std::fflush(stdout);
    }
  }
  smp::barrier();
  if (smp::rank() == 0) smp::files::remove_tree(folder);
  smp::shutdown();
  smp::comm::finalize_mpi();
  return 0;
}
