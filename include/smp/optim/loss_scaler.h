// LossScaler: fp16 loss scaling with SMP's semantics (SMP's FP16_Optimizer, from Megatron/Apex).
//
// The loss is multiplied by scale() before backward; gradients are divided by it before the
// update. Static: the scale never changes. Dynamic (SMP's dynamic_loss_args):
//   - on overflow: if delayed_shift == 1 or the hysteresis left is 1, the scale is divided by
//     scale_factor (not below min_scale); otherwise the hysteresis left drops by one;
//   - without overflow: with consecutive_hysteresis the hysteresis refills at once; every
//     scale_window iterations since the last overflow the scale is multiplied by scale_factor
//     (and, without consecutive_hysteresis, the hysteresis refills then).
// update() is called once per optimizer step, overflow or not. Pure: no tensors, no ranks.
//
// On the device (DistributedOptimizer, without reading the overflow flag on the host) the same
// rule is at::_amp_update_scale_(scale, growth_tracker, found_inf, scale_factor,
// 1 / scale_factor, scale_window) and a floor at min_scale: exact where device_rule() holds.
#pragma once

#include <cstdint>
#include <nlohmann/json_fwd.hpp>

namespace smp::optim {

// SMP's dynamic_loss_args, with SMP's defaults.
struct DynamicLossArgs {
  double init_scale = 4294967296.0;  // 2**32
  double scale_factor = 2.0;
  int64_t scale_window = 1000;
  double min_scale = 1.0;
  int64_t delayed_shift = 1;
  bool consecutive_hysteresis = false;
};

class LossScaler {
 public:
  // Throws smp::ConfigError naming the argument for a scale <= 0, scale_factor <= 1,
  // scale_window < 1, min_scale <= 0 or delayed_shift < 1.
  LossScaler(bool dynamic, double static_scale, const DynamicLossArgs& args);

  double scale() const { return scale_; }
  bool dynamic() const { return dynamic_; }
  const DynamicLossArgs& args() const { return args_; }
  void update(bool overflow);
  // Whether the device rule above gives update()'s scales bit for bit: dynamic, no hysteresis
  // (delayed_shift 1), scale_factor a power of two (float and double then agree), init_scale
  // and min_scale exact in float, init_scale >= min_scale (so the floor only acts on a drop).
  bool device_rule() const;
  // Steps without overflow since the last overflow or growth: _amp_update_scale_'s
  // growth_tracker for the next update().
  int64_t growth_tracker() const;

  // The mutable part (scale, iteration, last overflow, hysteresis), for checkpoints.
  nlohmann::json state() const;
  void load_state(const nlohmann::json& state);

 private:
  bool dynamic_;
  DynamicLossArgs args_;
  double scale_;
  int64_t iteration_ = 0;
  int64_t last_overflow_iteration_ = -1;
  int64_t hysteresis_;
};

}  // namespace smp::optim
