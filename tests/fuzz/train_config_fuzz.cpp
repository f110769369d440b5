// Fuzz target: smp-train's run config (src/train/train_config.cpp), with the model section
// (src/models/model_config.cpp) and the "smp" section (smp::Config) it reads.
//
// Entry point: smp::train::TrainConfig::from_json_string (from_json_file reads the file and
// calls it). A config that parses must then hold: its smp section validates again, validate()
// for several world sizes throws only ConfigError, and the learning-rate schedule is finite
// over the whole run.
#include <cmath>
#include <cstdint>
#include <optional>
#include <string>

#include "fuzz_common.h"
#include "smp/train/train_config.h"

namespace {

using smp::fuzz::expect_no_throw;
using smp::fuzz::expect_smp_errors;
using smp::train::TrainConfig;

void check_parsed(const TrainConfig& config) {
  expect_no_throw("TrainConfig properties", [&] {
    config.smp.validate();
    const auto& t = config.training;
    SMP_FUZZ_CHECK(config.training.seq_len <= config.model.max_seq_len, "TrainConfig", "seq_len above max_seq_len");
    SMP_FUZZ_CHECK(config.data.text.empty() != config.data.shards_dir.empty(), "TrainConfig",
          "not exactly one of data.text and data.shards_dir");
    SMP_FUZZ_CHECK(!config.checkpoint.dir.empty(), "TrainConfig", "empty checkpoint.dir");
    for (const int64_t step : {int64_t{0}, t.warmup_steps - 1, t.warmup_steps, t.steps / 2, t.steps - 1}) {
      if (step < 0) continue;
      const double lr = smp::train::learning_rate(t, step);
      SMP_FUZZ_CHECK(std::isfinite(lr) && lr >= 0, "learning_rate",
            "step " + std::to_string(step) + " gives " + std::to_string(lr));
    }
  });
  for (const int world : {1, 2, 3, 4, 8, 0}) {
    expect_smp_errors("TrainConfig::validate", [&] { config.validate(world); });
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  std::optional<TrainConfig> config;
  expect_smp_errors("TrainConfig::from_json_string", [&] { config = TrainConfig::from_json_string(text); });
  if (config) check_parsed(*config);
  return 0;
}
