// TraceEvent: when one action of a step ran on this rank, as the executor records it. The
// timeline (timeline.h) writes and reads it as JSON; smp-train's pictures (train/plots.h) draw
// it. A header of its own so that readers of traces need not include the executor.
#pragma once

#include <cstdint>

#include "smp/pipeline/schedule.h"

namespace smp::pipeline {

struct TraceEvent {
  Action action;
  double start_s = 0;  // since the step began
  double end_s = 0;
  int64_t bytes = 0;   // payload sent or received, for communication actions
};

}  // namespace smp::pipeline
