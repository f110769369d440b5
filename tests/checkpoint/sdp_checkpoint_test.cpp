// Checkpoints under sharded data parallelism (4 ranks): each rank writes and reads its own
// slices, never the whole model.
//   - A partial checkpoint saved under sdp=4 or sdp=2 (two replica groups) resumes under sdp=4,
//     sdp=2, plain data parallelism (sdp=1), pp=2 and tp=2 x sdp=2: the full
//     checkpoints then written hold the very bits of the source's weights and optimizer state,
//     the same layout continues with the very losses of the uninterrupted run, and other
//     layouts within the float tolerance of a different summation order.
//   - Memory: a counting CPU allocator watches every allocation during save_checkpoint and
//     resume_from_checkpoint, partial and full. None rises more than two layers above what the
//     rank held before (write_weights: one weight read whole and its file copy), and between
//     writing and committing a rank holds only its slices and the persistent layers; gathering
//     the model the way checkpoints used to is shown to break that bound.
#include <gtest/gtest.h>

#include <c10/core/CPUAllocator.h>

#include <atomic>
#include <functional>

#include "smp/checkpoint/checkpoint.h"
#include "smp/checkpoint/safetensors.h"
#include "smp/data_parallel/parameter_shards.h"
#include "testing/temp_dir.h"
#include "trainee.h"

namespace smp {
namespace {

using smp::testing::Trainee;

// Counts the bytes of every CPU tensor allocation alive, and their peak.
class CountingAllocator final : public c10::Allocator {
 public:
  explicit CountingAllocator(c10::Allocator* inner) : inner_(inner) {}
  c10::DataPtr allocate(size_t n) override {
    auto* held = new Held{inner_->allocate(n), n, this};
    live_ += static_cast<int64_t>(n);
    int64_t peak = peak_.load();
    while (live_.load() > peak && !peak_.compare_exchange_weak(peak, live_.load())) {
    }
    return {held->inner.get(), held, &release, held->inner.device()};
  }
  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }
  int64_t live() const { return live_.load(); }
  int64_t peak() const { return peak_.load(); }
  void reset_peak() { peak_.store(live_.load()); }

 private:
  struct Held {
    c10::DataPtr inner;
    size_t bytes;
    CountingAllocator* owner;
  };
  static void release(void* context) {
    auto* held = static_cast<Held*>(context);
    held->owner->live_ -= static_cast<int64_t>(held->bytes);
    delete held;
  }
  c10::Allocator* inner_;
  std::atomic<int64_t> live_{0};
  std::atomic<int64_t> peak_{0};
};

CountingAllocator& counting() {
  static CountingAllocator* allocator = [] {
    auto* a = new CountingAllocator(c10::GetDefaultCPUAllocator());
    c10::SetCPUAllocator(a, /*priority=*/100);
    return a;
  }();
  return *allocator;
}

// Bytes `fn` allocated at its peak beyond what was alive when it started.
// Host bytes `fn` held at its peak: through the default allocator, and through the pool that
// gathered buckets come from (it keeps what it mapped until trimmed, so what it mapped
// meanwhile is the most it held at once).
int64_t peak_rise(const dp::BucketPool& pool, const std::function<void()>& fn) {
  counting().reset_peak();
  const int64_t before = counting().live();
  const int64_t mapped = pool.mapped_bytes();
  fn();
  return counting().peak() - before + pool.mapped_bytes() - mapped;
}

// Eight layers, each larger than the persistence threshold but the final norm; the embedding is
// the largest bucket.
models::ModelConfig model_config() {
  models::ModelConfig c = testing::tiny();
  c.num_layers = 8;
  c.hidden = 64;
  c.ffn_hidden = 256;
  return c;
}

// sdp_gradient_clipping out of reach: SMP clips under sdp by default, the other layouts do not.
std::string sdp(int degree) {
  return R"({"ddp": true, "sharded_data_parallel_degree": )" + std::to_string(degree) +
         R"(, "sdp_param_persistence_threshold": 1000, "sdp_gradient_clipping": 1e9})";
}

void expect_same_files(const std::string& want_dir, const std::string& got_dir) {
  for (const std::string file : {"model.safetensors", "optimizer.safetensors"}) {
    const auto want = checkpoint::load_safetensors(want_dir + "/" + file);
    const auto got = checkpoint::load_safetensors(got_dir + "/" + file);
    ASSERT_EQ(got.size(), want.size()) << file;
    for (const auto& [name, t] : want) {
      ASSERT_TRUE(got.count(name)) << file << ": " << name;
      EXPECT_TRUE(at::equal(got.at(name), t)) << file << ": " << name;
    }
  }
}

TEST(SdpCheckpoint, ReshardsToOtherLayoutsAndContinuesTheRun) {
  if (comm::world_size() != 4) GTEST_SKIP() << "needs 4 ranks";
  const std::vector<std::string> targets = {
      sdp(4), sdp(2), R"({"ddp": true})",
      R"({"pipeline_parallel_degree": 2, "ddp": true, "microbatches": 2})",
      R"({"tensor_parallel_degree": 2, "ddp": true, "sharded_data_parallel_degree": 2,
          "sdp_gradient_clipping": 1e9})"};
  for (const std::string& source : {sdp(4), sdp(2)}) {
    const smp::testing::TempDir tmp("smp_sdp_checkpoint", smp::testing::world());
    const std::string& dir = tmp.path();
    init(Config::from_json_string(source));
    std::vector<double> want;
    {
      Trainee run(1, model_config());
      run.train(3);
      save_checkpoint(dir, "source", true, *run.dmodel, run.optimizer.get());
      save_checkpoint(dir, "whole_source", false, *run.dmodel, run.optimizer.get());
      want = run.train(2);  // the uninterrupted run
    }
    shutdown();
    for (size_t i = 0; i < targets.size(); ++i) {
      SCOPED_TRACE("saved under " + source + ", resumed under " + targets[i]);
      init(Config::from_json_string(targets[i]));
      Trainee run(7, model_config());  // other initial weights
      resume_from_checkpoint(dir, *run.dmodel, run.optimizer.get(), "source");
      const std::string tag = "whole_" + std::to_string(i);
      save_checkpoint(dir, tag, false, *run.dmodel, run.optimizer.get());
      if (rank() == 0) expect_same_files(dir + "/whole_source", dir + "/" + tag);
      const std::vector<double> got = run.train(2);
      for (size_t k = 0; k < want.size(); ++k) {
        if (targets[i] == source) {
          EXPECT_EQ(got[k], want[k]) << "step " << k;
        } else {
          EXPECT_NEAR(got[k], want[k], 1e-5 * std::abs(want[k])) << "step " << k;
        }
      }
      barrier();
      shutdown();
    }
  }
}

// The largest bucket's bytes: one layer.
int64_t layer_bytes(DistributedModel& model) {
  int64_t most = 0;
  for (const dp::Bucket& b : model.gradient_reducer().layout().buckets()) most = std::max(most, b.padded_numel);
  return most * 4;
}

TEST(SdpCheckpoint, NoRankHoldsMoreThanALayerBeyondItsSlices) {
  if (comm::world_size() != 4) GTEST_SKIP() << "needs 4 ranks";
  counting();  // installed before any tensor of the runs below
  const smp::testing::TempDir tmp("smp_sdp_checkpoint", smp::testing::world());
  const std::string& dir = tmp.path();
  init(Config::from_json_string(sdp(4)));
  Trainee run(1, model_config());
  run.train(1);
  dp::ParameterShards& shards = *run.dmodel->gradient_reducer().parameter_shards();
  const int64_t layer = layer_bytes(*run.dmodel);
  const int64_t model_bytes = run.dmodel->gradient_reducer().layout().flat_numel() * 4;
  ASSERT_GT(model_bytes, 6 * layer);  // the bound below tells a layer from the model
  const int64_t at_rest = static_cast<int64_t>(shards.shard().nbytes()) + shards.persistent_bytes();
  EXPECT_EQ(shards.resident_bytes(), at_rest);
  for (const bool partial : {true, false}) {
    SCOPED_TRACE(partial ? "partial" : "full");
    int64_t between = -1;
    const int64_t save = peak_rise(shards.pool(), [&] {
      save_checkpoint(dir, "a", partial, *run.dmodel, run.optimizer.get(), nullptr, 0, {},
                      [&] { between = shards.resident_bytes(); });
    });
    EXPECT_EQ(between, at_rest);
    EXPECT_LE(save, 2 * layer) << "a layer is " << layer << " bytes, the model " << model_bytes;
    Trainee fresh(7, model_config());
    dp::ParameterShards& fresh_shards = *fresh.dmodel->gradient_reducer().parameter_shards();
    fresh.optimizer->state_slices();  // its Adam state made now: what the load fills is not transient
    const int64_t load = peak_rise(fresh_shards.pool(), [&] {
      resume_from_checkpoint(dir, *fresh.dmodel, fresh.optimizer.get(), "a", partial);
    });
    EXPECT_LE(load, 2 * layer) << "a layer is " << layer << " bytes, the model " << model_bytes;
    EXPECT_EQ(fresh_shards.resident_bytes(), at_rest);
  }
  // What checkpoints did before: the whole model on every rank.
  const int64_t gathered = peak_rise(shards.pool(), [&] {
    run.dmodel->gather_parameters();
    run.dmodel->release_parameters(false);
  });
  EXPECT_GT(gathered, 2 * layer);
  shutdown();
}

}  // namespace
}  // namespace smp
