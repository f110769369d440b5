// save_checkpoint / resume_from_checkpoint on one layout at a time (1, 2 and 4 ranks): a
// partial checkpoint restores every parameter and every optimizer state bit for bit; a full
// one holds the whole tensors of the single-device model; corrupt and truncated files are
// named; an unfinished save is skipped; old checkpoints are pruned; bad input is refused; a
// folder not shared by every rank is refused at the first save.
// (Resharding across layouts and killed saves: checkpoint_resume_test.sh, through smp-train.)
#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>

#include <ATen/ATen.h>

#include "smp/checkpoint/safetensors.h"
#include "smp/core/files.h"
#include "smp/models/gpt.h"
#include "smp/models/hf.h"
#include "smp/smp.h"
#include "testing/temp_dir.h"
#include "trainee.h"

namespace smp {
namespace {

using nlohmann::json;

using smp::testing::tiny;
using smp::testing::Trainee;

// A folder every rank shares, fresh per test, removed when it goes out of scope. Over
// smp::testing::world(), which the tests' init and shutdown leave alone.
smp::testing::TempDir shared_dir() {
  return smp::testing::TempDir("smp_checkpoint", smp::testing::world());
}

std::vector<std::string> layouts() {
  switch (comm::world_size()) {
    case 1: return {"{}"};
    case 2: return {R"({"pipeline_parallel_degree": 2, "microbatches": 2})",
                    R"({"tensor_parallel_degree": 2, "ddp": true})",
                    R"({"ddp": true, "shard_optimizer_state": true})",
                    R"({"ddp": true, "shard_optimizer_state": true, "bf16": true})"};
    default: return {R"({"pipeline_parallel_degree": 2, "tensor_parallel_degree": 2, "ddp": true,
                         "microbatches": 2})",
                     R"({"tensor_parallel_degree": 2, "ddp": true, "shard_optimizer_state": true})",
                     R"({"pipeline_parallel_degree": 2, "ddp": true, "microbatches": 2})"};
  }
}

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

// With dropout on, so the dropout streams must be restored too.
TEST(Checkpoint, PartialRoundTripIsBitExact) {
  models::ModelConfig config = tiny();
  config.dropout = 0.1;
  for (const std::string& layout : layouts()) {
    SCOPED_TRACE(layout);
    init(Config::from_json_string(layout));
    const smp::testing::TempDir tmp = shared_dir();
    const std::string& dir = tmp.path();
    Trainee run(1, config);
    run.train(3);
    save_checkpoint(dir, "a", true, *run.dmodel, run.optimizer.get(), {{"step", 3}});
    const std::vector<at::Tensor> saved = run.snapshot();
    const json meta = run.optimizer->state_meta();
    run.train(2);  // moves everything away from the checkpoint

    Trainee fresh(7, config);  // other initial weights and dropout seeds
    const json user = resume_from_checkpoint(dir, *fresh.dmodel, fresh.optimizer.get());
    EXPECT_EQ(user["step"], 3);
    const std::vector<at::Tensor> loaded = fresh.snapshot();
    ASSERT_EQ(loaded.size(), saved.size());
    for (size_t i = 0; i < saved.size(); ++i) EXPECT_TRUE(at::equal(loaded[i], saved[i])) << "tensor " << i;
    EXPECT_EQ(fresh.optimizer->state_meta(), meta);

    // Continuing from the checkpoint equals continuing from the run itself.
    Trainee again(1, config);
    again.train(3);
    again.train(2);
    fresh.train(2);
    const auto a = again.snapshot(), b = fresh.snapshot();
    for (size_t i = 0; i < a.size(); ++i) EXPECT_TRUE(at::equal(a[i], b[i])) << "after 2 more steps, tensor " << i;
    shutdown();
  }
}

// Resharding: a partial checkpoint saved under one layout and resumed under another holds the
// same whole weights and optimizer state (compared through full checkpoints of both), here for
// every layout of this world size, virtual pipeline chunks included.
TEST(Checkpoint, ResumesUnderEveryOtherLayout) {
  struct Layout {
    std::string json;
    int chunks;
  };
  std::vector<Layout> all;
  if (comm::world_size() == 2) {
    all = {{R"({"pipeline_parallel_degree": 2, "microbatches": 2})", 2},
           {R"({"tensor_parallel_degree": 2, "ddp": true})", 1},
           {R"({"ddp": true, "shard_optimizer_state": true})", 1},
           {R"({"pipeline_parallel_degree": 2, "microbatches": 2})", 1}};
  } else if (comm::world_size() == 4) {
    all = {{R"({"pipeline_parallel_degree": 2, "tensor_parallel_degree": 2, "ddp": true, "microbatches": 2})", 1},
           {R"({"pipeline_parallel_degree": 4, "microbatches": 4})", 1},
           {R"({"tensor_parallel_degree": 4, "ddp": true})", 1},
           {R"({"tensor_parallel_degree": 2, "ddp": true, "shard_optimizer_state": true})", 1},
           {R"({"pipeline_parallel_degree": 2, "ddp": true, "microbatches": 2, "shard_optimizer_state": true})", 1},
           {R"({"pipeline_parallel_degree": 2, "tensor_parallel_degree": 2, "ddp": true, "microbatches": 2})", 2}};
  } else {
    GTEST_SKIP() << "needs 2 or 4 ranks";
  }
  const smp::testing::TempDir tmp = shared_dir();
  const std::string& dir = tmp.path();
  for (size_t i = 0; i < all.size(); ++i) {
    SCOPED_TRACE(all[i].json + " chunks " + std::to_string(all[i].chunks));
    init(Config::from_json_string(all[i].json));
    {
      Trainee run(1, tiny(), all[i].chunks);
      if (i == 0) {
        run.train(3);
        save_checkpoint(dir, "source", true, *run.dmodel, run.optimizer.get());
      } else {
        resume_from_checkpoint(dir, *run.dmodel, run.optimizer.get(), "source");
      }
      save_checkpoint(dir, "whole_" + std::to_string(i), false, *run.dmodel, run.optimizer.get());
    }
    if (i > 0 && rank() == 0) {
      for (const std::string file : {"model.safetensors", "optimizer.safetensors"}) {
        const auto want = checkpoint::load_safetensors(dir + "/whole_0/" + file);
        const auto got = checkpoint::load_safetensors(dir + "/whole_" + std::to_string(i) + "/" + file);
        ASSERT_EQ(got.size(), want.size()) << file;
        for (const auto& [name, t] : want) {
          ASSERT_TRUE(got.count(name)) << file << ": " << name;
          EXPECT_TRUE(at::equal(got.at(name), t)) << file << ": " << name;
        }
      }
    }
    barrier();
    shutdown();
  }
}

TEST(Checkpoint, FullCheckpointHoldsTheWholeTensors) {
  init(Config::from_json_string(layouts()[0]));
  const smp::testing::TempDir tmp = shared_dir();
  const std::string& dir = tmp.path();
  Trainee run(3);
  save_checkpoint(dir, "full", false, *run.dmodel, run.optimizer.get(), {{"note", "x"}});
  at::manual_seed(3);
  const models::Model reference = models::build_model(tiny(), tp::TpGroup{}, false);
  const auto stored = checkpoint::load_safetensors(dir + "/full/model.safetensors");
  size_t compared = 0;
  for (const auto& layer : reference.layers) {
    for (size_t j = 0; j < layer.parameters.size(); ++j) {
      const std::string name = layer.name + "." + layer.parameter_names[j];
      if (name == "head.weight") continue;  // GPT-2's tied head is the embedding
      ASSERT_TRUE(stored.count(name)) << name;
      at::Tensor want = layer.parameters[j].detach();
      const ShardSpec spec = layer.tp_shards.at(j);
      if (spec.sharded()) want = want.narrow(spec.dim, 0, spec.size);  // the vocabulary unpadded
      EXPECT_TRUE(at::equal(stored.at(name), want)) << name;
      ++compared;
    }
  }
  EXPECT_EQ(compared, stored.size());
  EXPECT_FALSE(files::exists(dir + "/full/rank_00000.safetensors"));  // consolidated away

  Trainee fresh(8);
  const json user = resume_from_checkpoint(dir, *fresh.dmodel, fresh.optimizer.get(), "", false);
  EXPECT_EQ(user["note"], "x");
  const auto a = run.snapshot(), b = fresh.snapshot();
  for (size_t i = 0; i < a.size(); ++i) EXPECT_TRUE(at::equal(a[i], b[i])) << "tensor " << i;
  shutdown();
}

#ifdef SMP_TEST_PYTHON
// A full checkpoint in Hugging Face's format, consolidated from any layout, is what transformers
// loads: its logits equal smp's; and it resumes (translated back) to the same weights.
TEST(Checkpoint, FullHuggingFaceCheckpointLoadsInTransformers) {
  init(Config::from_json_string(layouts()[0]));
  const smp::testing::TempDir tmp = shared_dir();
  const std::string& dir = tmp.path();
  models::ModelConfig config = tiny();
  config.vocab_size = 51;
  Trainee run(4, config);
  run.train(2);
  FullCheckpointFormat format;
  format.to_file = [config](const FullCheckpointFormat::Tensors& t) { return models::to_hf(config, t); };
  format.from_file = [config](const FullCheckpointFormat::Tensors& t) { return models::from_hf(config, t); };
  format.config = models::hf_config(config);
  save_checkpoint(dir, "hf", false, *run.dmodel, run.optimizer.get(), nullptr, 0, format);

  at::manual_seed(5);
  const at::Tensor tokens = at::randint(0, config.vocab_size, {2, 16}, at::kLong);
  StepOptions eval;
  eval.train = false;
  eval.microbatches = 1;
  const LossFn full_logits = [&run](const Values& out, const Values&) -> Values {
    return {run.model.full_logits(out[0])};
  };
  const at::Tensor logits = step(*run.dmodel, {tokens}, {}, full_logits, eval)[0].outputs()[0];
  const std::string verdict = on_rank0("transformers' check", [&] {
    checkpoint::save_safetensors(dir + "/reference.safetensors", {{"tokens", tokens}, {"logits", logits}});
    const std::string command = std::string(SMP_TEST_PYTHON) + " " + SMP_HF_REFERENCE + " check " +
                                dir + "/hf " + dir + "/reference.safetensors 2>&1";
    return std::to_string(std::system(command.c_str()));
  });
  EXPECT_EQ(verdict, "0") << "transformers disagrees with smp's logits (see the output above)";

  Trainee fresh(9, config);
  resume_from_checkpoint(dir, *fresh.dmodel, fresh.optimizer.get(), "hf", false, true, true, format);
  const auto a = run.snapshot(), b = fresh.snapshot();
  for (size_t i = 0; i < a.size(); ++i) EXPECT_TRUE(at::equal(a[i], b[i])) << "tensor " << i;
  shutdown();
}
#endif

TEST(Checkpoint, CorruptAndTruncatedFilesAreNamed) {
  init(Config::from_json_string(layouts()[0]));
  const smp::testing::TempDir tmp = shared_dir();
  const std::string& dir = tmp.path();
  Trainee run(1);
  run.train(1);
  save_checkpoint(dir, "a", true, *run.dmodel, run.optimizer.get());
  const std::string file = dir + "/a_partial/rank_00000.safetensors";
  const std::string good = files::read_file(file);
  barrier();
  if (rank() == 0) {  // flip one byte of the first tensor's data
    std::string bad = good;
    bad[checkpoint::read_safetensors_header(file).data_start + 5] ^= 0x5a;
    files::write_file_atomic(file, bad);
  }
  barrier();
  std::string message = error_of([&] { Trainee fresh(2); resume_from_checkpoint(dir, *fresh.dmodel, fresh.optimizer.get()); });
  EXPECT_NE(message.find("rank_00000.safetensors"), std::string::npos) << message;
  EXPECT_NE(message.find("checksum"), std::string::npos) << message;
  barrier();
  if (rank() == 0) files::write_file_atomic(file, good.substr(0, good.size() - 100));
  barrier();
  message = error_of([&] { Trainee fresh(2); resume_from_checkpoint(dir, *fresh.dmodel, fresh.optimizer.get()); });
  EXPECT_NE(message.find("rank_00000.safetensors"), std::string::npos) << message;
  EXPECT_NE(message.find("truncated"), std::string::npos) << message;
  shutdown();
}

TEST(Checkpoint, UnfinishedSaveIsSkippedAndOldOnesArePruned) {
  init(Config::from_json_string(layouts()[0]));
  const smp::testing::TempDir tmp = shared_dir();
  const std::string& dir = tmp.path();
  Trainee run(1);
  for (int i = 1; i <= 3; ++i) {
    run.train(1);
    save_checkpoint(dir, "s" + std::to_string(i), true, *run.dmodel, run.optimizer.get(),
                    {{"step", i}}, /*num_kept_partial_checkpoints=*/2);
  }
  EXPECT_FALSE(files::exists(dir + "/s1_partial"));
  EXPECT_TRUE(files::exists(dir + "/s2_partial/manifest.json"));
  barrier();
  if (rank() == 0) {  // what a save killed half-way leaves: a .tmp folder, and a stale newest
    files::make_dirs(dir + "/s4_partial.tmp");
    files::write_file_atomic(dir + "/s4_partial.tmp/rank_00000.safetensors", "partial");
    files::write_file_atomic(dir + "/newest", "s4\n");
  }
  barrier();
  Trainee fresh(2);
  EXPECT_EQ(resume_from_checkpoint(dir, *fresh.dmodel, fresh.optimizer.get())["step"], 3);
  const std::string message = error_of([&] {
    Trainee other(2);
    resume_from_checkpoint(dir, *other.dmodel, other.optimizer.get(), "s4");
  });
  EXPECT_NE(message.find("did not finish"), std::string::npos) << message;
  shutdown();
}

// Saving a tag again swaps the new checkpoint in atomically: the tag's folder is whole at every
// point, and what a crash can leave (the old one under .tmp; or, where the filesystem cannot
// swap, no folder but its .old copy, between the two renames) resumes the last complete save.
TEST(Checkpoint, ResavingATagIsCrashSafe) {
  init(Config::from_json_string(layouts()[0]));
  const smp::testing::TempDir tmp = shared_dir();
  const std::string& dir = tmp.path();
  Trainee run(1);
  run.train(1);
  save_checkpoint(dir, "s", true, *run.dmodel, run.optimizer.get(), {{"step", 1}});
  run.train(1);
  save_checkpoint(dir, "s", true, *run.dmodel, run.optimizer.get(), {{"step", 2}});
  EXPECT_FALSE(files::exists(dir + "/s_partial.tmp"));
  EXPECT_FALSE(files::exists(dir + "/s_partial.old"));
  {
    Trainee fresh(2);
    EXPECT_EQ(resume_from_checkpoint(dir, *fresh.dmodel, fresh.optimizer.get())["step"], 2);
  }
  barrier();
  if (rank() == 0) {  // a crash right after the swap: the older save is under .tmp
    files::make_dirs(dir + "/s_partial.tmp");
    files::write_file_atomic(dir + "/s_partial.tmp/manifest.json", "{}");
  }
  barrier();
  {
    Trainee fresh(2);
    EXPECT_EQ(resume_from_checkpoint(dir, *fresh.dmodel, fresh.optimizer.get(), "s")["step"], 2);
  }
  barrier();
  if (rank() == 0) {  // no swap: a crash between moving the old one aside and the new one in
    files::remove_tree(dir + "/s_partial.tmp");
    files::rename_durable(dir + "/s_partial", dir + "/s_partial.old");
  }
  barrier();
  for (const std::string& tag : {std::string("s"), std::string()}) {
    Trainee fresh(2);
    EXPECT_EQ(resume_from_checkpoint(dir, *fresh.dmodel, fresh.optimizer.get(), tag)["step"], 2)
        << "tag '" << tag << "'";
  }
  shutdown();
}

// smp::save / smp::load: each rank's own file under SMP's suffixes, or one whole file.
TEST(Checkpoint, SaveAndLoadUseSmpSuffixes) {
  init(Config::from_json_string(layouts()[0]));
  const smp::testing::TempDir tmp = shared_dir();
  const std::string& dir = tmp.path();
  const at::Tensor mine = at::full({3}, static_cast<double>(rank()));
  save({{"x", mine}}, dir + "/state", true, {{"rank", rank()}});
  EXPECT_TRUE(files::exists(dir + "/state_" + std::to_string(pp_rank()) + "_" + std::to_string(tp_rank())));
  nlohmann::json extra;
  const auto back = load(dir + "/state", true, &extra);
  EXPECT_TRUE(at::equal(back.at("x"), mine));
  EXPECT_EQ(extra["rank"], rank());
  barrier();
  if (rank() == 0) save({{"y", at::arange(4)}}, dir + "/whole.safetensors", false);
  barrier();
  EXPECT_TRUE(at::equal(load(dir + "/whole.safetensors", false).at("y"), at::arange(4)));
  const std::string message = error_of([&] { load(dir + "/absent"); });
  EXPECT_NE(message.find(dir + "/absent_"), std::string::npos) << message;
  shutdown();
}

// Each rank saving into a folder of its own, as onto node-local disks: the first save fails on
// every rank with a CheckpointError naming the ranks whose probe file rank 0 does not see, and
// leaves no probe behind; a folder every rank shares passes, again leaving none.
TEST(Checkpoint, FolderNotSharedByEveryRankIsRefused) {
  if (comm::world_size() < 2) GTEST_SKIP() << "needs 2 or more ranks";
  init(Config::from_json_string(layouts()[0]));
  Trainee run(1);
  const smp::testing::TempDir own("smp_checkpoint_own");  // this rank's alone
  const std::string dir = own.file("checkpoints");
  std::string message;
  try {
    save_checkpoint(dir, "a", true, *run.dmodel, nullptr);
    ADD_FAILURE() << "rank " << rank() << ": no error for a folder of its own";
  } catch (const CheckpointError& e) {
    message = e.what();
  }
  std::string unseen = comm::world_size() > 2 ? "ranks 1" : "rank 1";
  for (int r = 2; r < comm::world_size(); ++r) unseen += ", " + std::to_string(r);
  for (const std::string& want : {std::string("is not shared by all ranks"), unseen + " (",
                                  std::string("a file system that every rank sees")}) {
    EXPECT_NE(message.find(want), std::string::npos) << "rank " << rank() << ": " << message;
  }
  EXPECT_EQ(files::list_dir(dir), std::vector<std::string>{}) << "probes left on rank " << rank();
  const smp::testing::TempDir shared = shared_dir();
  save_checkpoint(shared.path(), "a", true, *run.dmodel, nullptr);
  EXPECT_EQ(shared.entries(), (std::vector<std::string>{"a_partial", "newest"}));
  shutdown();
}

TEST(Checkpoint, BadInputIsRefused) {
  init(Config::from_json_string(layouts()[0]));
  const smp::testing::TempDir tmp = shared_dir();
  const std::string& dir = tmp.path();
  Trainee run(1);
  std::string message = error_of([&] { save_checkpoint(dir, "../up", true, *run.dmodel, nullptr); });
  EXPECT_NE(message.find("tag \"../up\""), std::string::npos) << message;
  message = error_of([&] { save_checkpoint(dir, "a", true, *run.dmodel, nullptr, nullptr, -1); });
  EXPECT_NE(message.find("num_kept_partial_checkpoints: got -1"), std::string::npos) << message;
  save_checkpoint(dir, "a", true, *run.dmodel, nullptr);
  models::ModelConfig wider = tiny();
  wider.ffn_hidden = 64;
  message = error_of([&] { Trainee other(1, wider); resume_from_checkpoint(dir, *other.dmodel, nullptr); });
  EXPECT_NE(message.find("up.weight' has shape"), std::string::npos) << message;
  message = error_of([&] { Trainee other(1); resume_from_checkpoint(dir, *other.dmodel, other.optimizer.get()); });
  EXPECT_NE(message.find("no optimizer state"), std::string::npos) << message;
  message = error_of([&] { Trainee other(1); resume_from_checkpoint(dir + "/nothing", *other.dmodel, nullptr); });
  EXPECT_NE(message.find("no checkpoint folder"), std::string::npos) << message;
  shutdown();
}

}  // namespace
}  // namespace smp
