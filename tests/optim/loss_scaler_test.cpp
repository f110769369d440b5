// LossScaler without processes: SMP's (Megatron's) dynamic loss scaling step by step, against
// sequences worked out by hand from the rule in loss_scaler.h; static scaling; bad arguments;
// the device rule (at::_amp_update_scale_ and a floor) against update() step by step.
#include "smp/optim/loss_scaler.h"

#include <ATen/ATen.h>
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

// What DistributedOptimizer runs on the device (no host read of the overflow flag): the same
// scales as update(), bit for bit, and the same growth tracker, over overflows that halve, hit
// the floor, and windows that grow; from a checkpointed state too. Where the device rule cannot
// follow (hysteresis, a factor that is no power of two, a scale float cannot hold), device_rule()
// says so.
TEST(LossScaler, DeviceRuleFollowsUpdateExactly) {
  const std::string pattern = "..o.o....oooo.......o.o.o..........o..";
  for (const DynamicLossArgs& a : {args(1024, 3, 1, false, 256), args(65536, 2), args(4294967296.0, 5)}) {
    LossScaler host(true, 1, a);
    ASSERT_TRUE(host.device_rule());
    for (int from : {0, 7}) {  // 7: a device copy made from a state mid-way (a resumed run)
      LossScaler ref(true, 1, a);
      for (int i = 0; i < from; ++i) ref.update(pattern[i] == 'o');
      at::Tensor scale = at::full({}, ref.scale(), at::kFloat);
      at::Tensor tracker = at::full({}, ref.growth_tracker(), at::kInt);
      for (size_t i = from; i < pattern.size(); ++i) {
        const bool overflow = pattern[i] == 'o';
        at::_amp_update_scale_(scale, tracker, at::full({}, overflow ? 1.0 : 0.0, at::kFloat),
                               a.scale_factor, 1.0 / a.scale_factor, a.scale_window);
        scale.clamp_min_(a.min_scale);
        ref.update(overflow);
        ASSERT_EQ(scale.item<double>(), ref.scale()) << "update " << i << " from " << from;
        ASSERT_EQ(tracker.item<int64_t>(), ref.growth_tracker()) << "update " << i;
      }
    }
  }
  EXPECT_FALSE(LossScaler(true, 1, args(1024, 3, 2)).device_rule());  // hysteresis
  DynamicLossArgs three = args(1024, 3);
  three.scale_factor = 3;
  EXPECT_FALSE(LossScaler(true, 1, three).device_rule());
  EXPECT_FALSE(LossScaler(true, 1, args(0.1, 3, 1, false, 0.05)).device_rule());  // 0.1 not a float
  EXPECT_FALSE(LossScaler(true, 1, args(2, 3, 1, false, 4)).device_rule());  // below its floor
  EXPECT_FALSE(LossScaler(false, 128, args(1024, 3)).device_rule());  // static
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
