// LossScaler: static and dynamic fp16 loss scaling (see loss_scaler.h).
#include "smp/optim/loss_scaler.h"

#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>
#include <string>

#include "smp/core/error.h"

namespace smp::optim {
namespace {

void require(bool ok, const std::string& key, double value, const std::string& allowed) {
  if (!ok) {
    throw ConfigError("DistributedOptimizer " + key + ": got " + nlohmann::json(value).dump() +
                      "; allowed: " + allowed);
  }
}

}  // namespace

LossScaler::LossScaler(bool dynamic, double static_scale, const DynamicLossArgs& args)
    : dynamic_(dynamic), args_(args), hysteresis_(args.delayed_shift) {
  require(static_scale > 0, "static_loss_scale", static_scale, "> 0");
  if (dynamic_) {
    require(args.init_scale > 0, "dynamic_loss_args.init_scale", args.init_scale, "> 0");
    require(args.scale_factor > 1, "dynamic_loss_args.scale_factor", args.scale_factor, "> 1");
    require(args.scale_window >= 1, "dynamic_loss_args.scale_window",
            static_cast<double>(args.scale_window), ">= 1");
    require(args.min_scale > 0, "dynamic_loss_args.min_scale", args.min_scale, "> 0");
    require(args.delayed_shift >= 1, "dynamic_loss_args.delayed_shift",
            static_cast<double>(args.delayed_shift), ">= 1");
  }
  scale_ = dynamic_ ? args.init_scale : static_scale;
}

void LossScaler::update(bool overflow) {
  if (!dynamic_) return;
  if (overflow) {
    if (args_.delayed_shift == 1 || hysteresis_ == 1) {
      scale_ = std::max(scale_ / args_.scale_factor, args_.min_scale);
    } else {
      --hysteresis_;
    }
    last_overflow_iteration_ = iteration_;
  } else {
    if (args_.consecutive_hysteresis) hysteresis_ = args_.delayed_shift;
    if ((iteration_ - last_overflow_iteration_) % args_.scale_window == 0) {
      if (!args_.consecutive_hysteresis) hysteresis_ = args_.delayed_shift;
      scale_ *= args_.scale_factor;
    }
  }
  ++iteration_;
}

bool LossScaler::device_rule() const {
  int exponent = 0;
  const bool power_of_two = std::frexp(args_.scale_factor, &exponent) == 0.5;
  const auto exact_in_float = [](double x) { return static_cast<double>(static_cast<float>(x)) == x; };
  return dynamic_ && args_.delayed_shift == 1 && power_of_two && exact_in_float(args_.init_scale) &&
         exact_in_float(args_.min_scale) && args_.init_scale >= args_.min_scale;
}

int64_t LossScaler::growth_tracker() const {
  return (iteration_ - last_overflow_iteration_ - 1) % args_.scale_window;
}

nlohmann::json LossScaler::state() const {
  return {{"dynamic", dynamic_},
          {"cur_scale", scale_},
          {"cur_iter", iteration_},
          {"last_overflow_iter", last_overflow_iteration_},
          {"cur_hysteresis", hysteresis_}};
}

void LossScaler::load_state(const nlohmann::json& state) {
  scale_ = state.at("cur_scale").get<double>();
  iteration_ = state.at("cur_iter").get<int64_t>();
  last_overflow_iteration_ = state.at("last_overflow_iter").get<int64_t>();
  hysteresis_ = state.at("cur_hysteresis").get<int64_t>();
}

}  // namespace smp::optim
