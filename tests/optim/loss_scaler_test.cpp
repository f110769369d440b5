// LossScaler without processes: SMP's (Megatron's) dynamic loss scaling step by step, against
// sequences worked out by hand from the rule in loss_scaler.h; static scaling; bad arguments.
#include "smp/optim/loss_scaler.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "smp/core/error.h"

namespace smp::optim {
namespace {

DynamicLossArgs args(double init, int64_t window, int64_t delayed_shift = 1,
                     bool consecutive = false, double min_scale = 1) {
  DynamicLossArgs a;
  a.init_scale = init;
  a.scale_window = window;
  a.delayed_shift = delayed_shift;
  a.consecutive_hysteresis = consecutive;
  a.min_scale = min_scale;
  return a;
}

// Feeds the overflow pattern ('o' overflow, '.' clean) and returns the scale after each update.
std::vector<double> run(LossScaler s, const std::string& pattern) {
  std::vector<double> out;
  for (char c : pattern) {
    s.update(c == 'o');
    out.push_back(s.scale());
  }
  return out;
}

TEST(LossScaler, SmpDefaults) {
  const DynamicLossArgs d;
  EXPECT_EQ(d.init_scale, 4294967296.0);
  EXPECT_EQ(d.scale_factor, 2.0);
  EXPECT_EQ(d.scale_window, 1000);
  EXPECT_EQ(d.min_scale, 1.0);
  EXPECT_EQ(d.delayed_shift, 1);
  EXPECT_FALSE(d.consecutive_hysteresis);
}

TEST(LossScaler, OverflowHalvesAndWindowDoubles) {
  // Window 3: growth when (iteration - last overflow) % 3 == 0; the first overflow at
  // iteration 0 halves 64 -> 32; clean iterations 1, 2, 3: growth at 3 (3 - 0 = 3).
  EXPECT_EQ(run(LossScaler(true, 1, args(64, 3)), "o..."), (std::vector<double>{32, 32, 32, 64}));
  // With no overflow yet, last overflow is -1: growth at iterations 2, 5.
  EXPECT_EQ(run(LossScaler(true, 1, args(8, 3)), "......"),
            (std::vector<double>{8, 8, 16, 16, 16, 32}));
}

TEST(LossScaler, MinScaleIsAFloor) {
  EXPECT_EQ(run(LossScaler(true, 1, args(4, 100, 1, false, 2)), "ooo"),
            (std::vector<double>{2, 2, 2}));
}

TEST(LossScaler, DelayedShiftNeedsConsecutiveOverflows) {
  // delayed_shift 2: the first overflow only uses up hysteresis; the second halves.
  EXPECT_EQ(run(LossScaler(true, 1, args(64, 100, 2)), "oo"), (std::vector<double>{64, 32}));
  // Without consecutive_hysteresis a clean step does not refill it: o . o halves at the 2nd o.
  EXPECT_EQ(run(LossScaler(true, 1, args(64, 100, 2)), "o.o"), (std::vector<double>{64, 64, 32}));
  // With consecutive_hysteresis a clean step refills it: o . o never halves.
  EXPECT_EQ(run(LossScaler(true, 1, args(64, 100, 2, true)), "o.o"),
            (std::vector<double>{64, 64, 64}));
}

TEST(LossScaler, StaticNeverChanges) {
  LossScaler s(false, 128, DynamicLossArgs{});
  EXPECT_EQ(run(s, "o.o.."), (std::vector<double>(5, 128)));
  EXPECT_FALSE(s.dynamic());
}

TEST(LossScaler, StateRoundTrips) {
  LossScaler a(true, 1, args(64, 3, 2));
  for (char c : std::string("o..o.")) a.update(c == 'o');
  LossScaler b(true, 1, args(64, 3, 2));
  b.load_state(a.state());
  EXPECT_EQ(run(a, "..o.o"), run(b, "..o.o"));
}

TEST(LossScaler, BadArgumentsNameTheArgument) {
  try {
    LossScaler(true, 1, args(64, 0));
    ADD_FAILURE() << "expected ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("scale_window"), std::string::npos) << e.what();
  }
  DynamicLossArgs factor;
  factor.scale_factor = 1;
  EXPECT_THROW(LossScaler(true, 1, factor), ConfigError);
  EXPECT_THROW(LossScaler(false, 0, DynamicLossArgs{}), ConfigError);
  EXPECT_THROW(LossScaler(true, 1, args(64, 10, 0)), ConfigError);
}

}  // namespace
}  // namespace smp::optim
