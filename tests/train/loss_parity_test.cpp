// The strongest test of the whole system: a tiny GPT trained 20 steps (fp32, deterministic)
// under every parallel layout gives the same loss and gradient-norm curves as one process,
// within 1e-4 relative (pp2 x tp2 and sharded data parallelism dp4_sdp4 also with activation
// checkpointing; tensor parallelism in SMP's prescaled and non-prescaled batch flows), with
// AdamW and clipping, and on the layouts with the most gradient machinery also with SGD without
// clipping, where a wrong gradient cannot hide. The one-process curves are a golden file, tests/train/golden/tiny_gpt_losses.json; it is
// rewritten only on purpose: SMP_REGENERATE_GOLDEN=1 with one rank.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <cmath>
#include <fstream>
#include <memory>
#include <random>
#include <tuple>

#include <ATen/Context.h>
#include <nlohmann/json.hpp>

#include "smp/smp.h"
#include "smp/train/trainer.h"
#include "testing/temp_dir.h"

namespace smp::train {
namespace {

const std::string kGolden = std::string(SMP_SOURCE_DIR) + "/tests/train/golden/tiny_gpt_losses.json";

// A made-up text with structure to learn: words from a small vocabulary in a seeded order.
std::string make_text() {
  const std::vector<std::string> words = {"the", "lord", "said", "unto", "moses", "and",
                                          "light", "was", "good", "in", "beginning", "earth"};
  std::mt19937 rng(3);
  std::string text;
  while (text.size() < 60000) {
    text += words[rng() % words.size()];
    text += (rng() % 9 == 0) ? ".\n" : " ";
  }
  return text;
}

// The work dir below; empty until first used.
std::unique_ptr<smp::testing::TempDir>& work_dir_holder() {
  static std::unique_ptr<smp::testing::TempDir> dir;
  return dir;
}

// A temporary folder shared by all ranks, with the text in it: made on first use (every rank
// calls this together the first time) and removed when the tests end (WorkDirCleanup).
std::string work_dir() {
  std::unique_ptr<smp::testing::TempDir>& dir = work_dir_holder();
  if (!dir) {
    comm::Communicator& world = smp::testing::world();
    dir = std::make_unique<smp::testing::TempDir>("smp_parity", world);
    if (world.rank() == 0) std::ofstream(dir->file("text.txt")) << make_text();
    world.barrier().wait();
  }
  return dir->path();
}

// Removes the work dir after the last test, while MPI still runs (every rank tears down).
class WorkDirCleanup : public ::testing::Environment {
 public:
  void TearDown() override { work_dir_holder().reset(); }
};
::testing::Environment* const kWorkDirCleanup =
    ::testing::AddGlobalTestEnvironment(new WorkDirCleanup);

// `training` adds keys to the training section (e.g. R"(, "device": "cuda")").
TrainConfig tiny_config(const std::string& smp_json, const std::string& name,
                        const std::string& training = "", const std::string& checkpoint = "{}") {
  TrainConfig c = TrainConfig::from_json_string(R"({
    "model": {"name": "tiny", "num_layers": 4, "hidden": 32, "num_heads": 4, "max_seq_len": 32},
    "data": {"text": ")" + work_dir() + R"(/text.txt", "val_fraction": 0.1},
    "training": {"steps": 20, "global_batch": 8, "seq_len": 32, "lr": 0.003, "warmup_steps": 3,
                 "val_every": 0, "val_batches": 1, "sample_tokens": 4, "seed": 5)" + training + R"(},
    "checkpoint": )" + checkpoint + R"(, "smp": )" + smp_json + R"(,
    "run_dir": ")" + work_dir() + "/" + name + R"("})");
  return c;
}

// A run's curves: the loss and the gradient norm before clipping, per step.
struct Curves {
  std::vector<double> losses, norms;
};

Curves train_layout(const std::string& smp_json, const std::string& name,
                    const std::string& training = "", const std::string& checkpoint = "{}") {
  const TrainConfig c = tiny_config(smp_json, name, training, checkpoint);
  init(c.smp);
  const TrainSummary summary = train(c);
  shutdown();
  return {summary.train_losses, summary.grad_norms};
}

// SGD without clipping or weight decay: a gradient off by a constant factor moves the weights,
// and so the loss, by that factor (Adam's normalisation and clipping would hide it).
const std::string kSgd = R"(, "optimizer": "sgd", "lr": 0.5, "weight_decay": 0, "grad_clip": 0)";

// The golden one-process curves of an optimizer ("adamw": the top level, "sgd": its member).
Curves golden(const std::string& optimizer) {
  std::ifstream in(kGolden);
  if (!in.good()) {
    ADD_FAILURE() << "no golden file " << kGolden << "; make it with SMP_REGENERATE_GOLDEN=1 on one rank";
    return {};
  }
  nlohmann::json g = nlohmann::json::parse(in);
  if (optimizer == "sgd") g = g.at("sgd");
  return {g.at("losses").get<std::vector<double>>(), g.at("grad_norms").get<std::vector<double>>()};
}

// Each step's loss and gradient norm within `tolerance` relative of the reference's (the golden
// AdamW curves when none is given); a run that resumed part-way is compared on its own steps,
// the last ones. A gradient off by a constant factor shows in the norm from the first step,
// where Adam's loss curve would hide it.
void expect_matches_golden(const Curves& got, const std::string& layout, double tolerance = 1e-4,
                           Curves reference = {}) {
  if (reference.losses.empty()) reference = golden("adamw");
  for (const auto& [what, values, want_values] :
       {std::tuple{"loss", &got.losses, &reference.losses},
        std::tuple{"gradient norm", &got.norms, &reference.norms}}) {
    ASSERT_LE(values->size(), want_values->size()) << layout;
    ASSERT_FALSE(values->empty()) << layout;
    const size_t first = want_values->size() - values->size();
    for (size_t i = 0; i < values->size(); ++i) {
      const double want = (*want_values)[first + i];
      EXPECT_LE(std::fabs((*values)[i] - want), tolerance * std::fabs(want))
          << layout << ": step " << first + i + 1 << " " << what << " " << (*values)[i] << " vs "
          << want;
    }
  }
}

bool have_cuda() { return at::hasCUDA(); }

// What runs only on a CUDA machine (skipped elsewhere): the same tiny GPT on one GPU.
// fp32 follows the golden CPU curve within the layouts' 1e-4 (TF32 is off in libtorch by
// default). bf16 (bf16 weights and activations, fp32 masters) rounds to 8 mantissa bits: on the
// CPU it stays within 4.8e-4 of the fp32 curve over these 20 steps, so 5e-3 leaves 10x room.
TEST(LossParity, OnOneGpu) {
  if (comm::world_size() != 1) GTEST_SKIP() << "one rank";
  if (!have_cuda()) GTEST_SKIP() << "no CUDA device here";
  expect_matches_golden(train_layout("{}", "cuda_fp32", R"(, "device": "cuda")"), "cuda fp32");
  expect_matches_golden(train_layout("{}", "cuda_bf16", R"(, "device": "cuda", "precision": "bf16")"),
                        "cuda bf16", 5e-3);
}

// A checkpoint saved from GPU tensors resumes on the GPU and on the CPU. The GPU's attention
// backward may accumulate in another order between runs, so both sides get the layouts' 1e-4.
TEST(LossParity, GpuCheckpointResumesOnGpuAndCpu) {
  if (comm::world_size() != 1) GTEST_SKIP() << "one rank";
  if (!have_cuda()) GTEST_SKIP() << "no CUDA device here";
  const std::string dir = work_dir() + "/cuda_checkpoints";
  const std::string cuda = R"(, "device": "cuda")";
  const Curves full =
      train_layout("{}", "cuda_saving", cuda, R"({"every": 10, "keep": 0, "dir": ")" + dir + R"("})");
  const std::string resume = R"({"resume": "step_10", "dir": ")" + dir + R"("})";
  expect_matches_golden(train_layout("{}", "cuda_resumed", cuda, resume), "resumed on the GPU",
                        1e-4, full);
  expect_matches_golden(train_layout("{}", "cpu_resumed", "", resume), "resumed on the CPU",
                        1e-4, full);
}

TEST(LossParity, EveryLayoutFollowsTheOneProcessCurve) {
  const int world = comm::world_size();
  std::vector<std::pair<std::string, std::string>> layouts;  // (smp json, name)
  if (world == 1) layouts = {{"{}", "one_rank"}};
  if (world == 2) {
    layouts = {{R"({"pipeline_parallel_degree": 2, "microbatches": 2})", "pp2"},
               // SMP's default flow (prescaled_batch false): the two ranks, one TP group, train
               // on different samples; and the prescaled flow, the same samples on both
               {R"({"tensor_parallel_degree": 2, "ddp": true})", "tp2"},
               {R"({"tensor_parallel_degree": 2, "ddp": true, "prescaled_batch": true})",
                "tp2_prescaled"},
               {R"({"ddp": true})", "dp2"},
               {R"({"pipeline_parallel_degree": 2, "microbatches": 2, "pipeline": "zero_bubble"})",
                "pp2_zero_bubble"},
               {R"({"ddp": true, "sharded_data_parallel_degree": 2,
                   "sdp_param_persistence_threshold": 0})", "sdp2"},
               {R"({"ddp": true, "sharded_data_parallel_degree": 2, "sdp_param_persistence_threshold": 0,
                   "delayed_parameter_initialization": true})", "sdp2_delayed_init"}};
  }
  if (world == 4) {
    layouts = {{R"({"pipeline_parallel_degree": 2, "tensor_parallel_degree": 2, "ddp": true,
                   "microbatches": 2})", "pp2_tp2"},
               {R"({"pipeline_parallel_degree": 2, "ddp": true, "microbatches": 2})", "pp2_dp2"},
               {R"({"tensor_parallel_degree": 4, "ddp": true})", "tp4"},
               {R"({"tensor_parallel_degree": 4, "ddp": true, "prescaled_batch": true,
                   "optimize": "speed"})", "tp4_prescaled_speed"},
               {R"({"pipeline_parallel_degree": 2, "tensor_parallel_degree": 2, "ddp": true,
                   "microbatches": 2, "prescaled_batch": true})", "pp2_tp2_prescaled"},
               {R"({"pipeline_parallel_degree": 2, "ddp": true, "microbatches": 2,
                   "shard_optimizer_state": true})", "pp2_dp2_zero1_tied_head"},
               {R"({"tensor_parallel_degree": 2, "ddp": true, "shard_optimizer_state": true})",
                "tp2_dp2_zero1"},
               {R"({"pipeline_parallel_degree": 2, "ddp": true, "microbatches": 2,
                   "shard_optimizer_state": true, "pipeline": "zero_bubble"})",
                "pp2_dp2_zero1_zero_bubble"},
               {R"({"ddp": true, "sharded_data_parallel_degree": 2, "microbatches": 2,
                   "sdp_param_persistence_threshold": 0})", "dp4_sdp2"},
               {R"({"tensor_parallel_degree": 2, "ddp": true, "sharded_data_parallel_degree": 2,
                   "microbatches": 2, "sdp_param_persistence_threshold": 0})", "tp2_sdp2"},
               {R"({"tensor_parallel_degree": 2, "ddp": true, "sharded_data_parallel_degree": 2,
                   "delayed_parameter_initialization": true})", "tp2_sdp2_delayed_init_persistent"}};
  }
  work_dir();
  const char* regenerate = std::getenv("SMP_REGENERATE_GOLDEN");
  if (world == 1 && regenerate && std::string(regenerate) == "1") {
    const Curves adamw = train_layout("{}", "golden_adamw");
    const Curves sgd = train_layout("{}", "golden_sgd", kSgd);
    std::ofstream(kGolden) << nlohmann::json{
        {"what", "tiny GPT, 20 steps, fp32, one process; AdamW with clipping, and SGD without (sgd)"},
        {"losses", adamw.losses},
        {"grad_norms", adamw.norms},
        {"sgd", {{"losses", sgd.losses}, {"grad_norms", sgd.norms}}}}.dump(2) << "\n";
    GTEST_SKIP() << "golden file rewritten: " << kGolden;
  }
  for (const auto& [smp_json, name] : layouts) expect_matches_golden(train_layout(smp_json, name), name);
  if (world == 4) {  // with the blocks recomputed in backward (activation checkpointing)
    expect_matches_golden(
        train_layout(R"({"pipeline_parallel_degree": 2, "tensor_parallel_degree": 2, "ddp": true,
                        "microbatches": 2})", "pp2_tp2_recomputed",
                     R"(, "activation_checkpointing": "each")"),
        "pp2_tp2 with activation checkpointing");
    expect_matches_golden(
        train_layout(R"({"ddp": true, "sharded_data_parallel_degree": 4,
                        "sdp_param_persistence_threshold": 0})", "dp4_sdp4_recomputed",
                     R"(, "activation_checkpointing": "each")"),
        "dp4_sdp4 with activation checkpointing");
  }
}

// smp-train's virtual stages: pp2 with chunks_per_rank 2 (four stages, the interleaved
// schedule) follows the one-process curve and pp2's one stage per rank, also with the blocks
// checkpointed by group (a group of two recomputed as one run, one block alone, one not).
TEST(LossParity, VirtualStagesFollowOneStagePerRank) {
  if (comm::world_size() != 2) GTEST_SKIP() << "two ranks";
  work_dir();
  const std::string pp2 = R"({"pipeline_parallel_degree": 2, "microbatches": 2})";
  const Curves one_stage = train_layout(pp2, "pp2_one_chunk");
  const Curves chunks = train_layout(pp2, "pp2_chunks2", R"(, "chunks_per_rank": 2)");
  expect_matches_golden(chunks, "pp2 chunks_per_rank 2");
  expect_matches_golden(chunks, "pp2 chunks_per_rank 2 against 1", 1e-4, one_stage);
  const Curves grouped = train_layout(pp2, "pp2_chunks2_grouped", R"(, "chunks_per_rank": 2,
      "activation_checkpointing": {"block.0-1": "contiguous", "block.2": "each", "block.3": "none"})");
  expect_matches_golden(grouped, "pp2 chunks_per_rank 2, checkpointed by block group", 1e-4, one_stage);
}

// The same one-process curve under SGD without clipping, on the layouts whose gradients pass
// through the most machinery: TP in SMP's non-prescaled flow, pipeline stages, sharded data
// parallelism (with delayed initialisation), ZeRO-1 with the tied head across stages. Sharded
// data parallelism always clips (SMP's sdp_gradient_clipping, 1.0 by default): set out of reach.
TEST(LossParity, SgdWithoutClippingFollowsTheOneProcessCurve) {
  const int world = comm::world_size();
  std::vector<std::pair<std::string, std::string>> layouts;  // (smp json, name)
  if (world == 1) layouts = {{"{}", "sgd_one_rank"}};
  if (world == 2) {
    layouts = {{R"({"tensor_parallel_degree": 2, "ddp": true})", "sgd_tp2"},
               {R"({"pipeline_parallel_degree": 2, "microbatches": 2})", "sgd_pp2"},
               {R"({"ddp": true, "sharded_data_parallel_degree": 2, "sdp_param_persistence_threshold": 0,
                   "delayed_parameter_initialization": true, "sdp_gradient_clipping": 1e9})",
                "sgd_sdp2_delayed_init"}};
  }
  if (world == 4) {
    layouts = {{R"({"pipeline_parallel_degree": 2, "tensor_parallel_degree": 2, "ddp": true,
                   "microbatches": 2})", "sgd_pp2_tp2"},
               {R"({"tensor_parallel_degree": 2, "ddp": true, "sharded_data_parallel_degree": 2,
                   "sdp_param_persistence_threshold": 0, "sdp_gradient_clipping": 1e9})",
                "sgd_tp2_sdp2"},
               {R"({"pipeline_parallel_degree": 2, "ddp": true, "microbatches": 2,
                   "shard_optimizer_state": true, "pipeline": "zero_bubble"})",
                "sgd_pp2_dp2_zero1_tied_head_zero_bubble"}};
  }
  work_dir();
  const Curves reference = golden("sgd");
  for (const auto& [smp_json, name] : layouts) {
    expect_matches_golden(train_layout(smp_json, name, kSgd), name, 1e-4, reference);
  }
}

}  // namespace
}  // namespace smp::train
