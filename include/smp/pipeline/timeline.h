// Timeline: a step's actions as a Chrome-trace / Perfetto JSON file (open it in
// chrome://tracing or ui.perfetto.dev), one file per rank.
#pragma once

#include <string>
#include <vector>

#include "smp/pipeline/executor.h"

namespace smp::pipeline {

// Writes `events` of pipeline rank `rank` as complete ("X") events in microseconds, one row per
// kind of work (compute, send, recv), with microbatch, stage and bytes as arguments. Creates
// the folders on the way. Writes a
// temporary file and renames it, so a reader never sees half a trace. Throws smp::Error naming
// the path when the file cannot be written.
void write_chrome_trace(const std::string& path, int rank, const std::vector<TraceEvent>& events);

}  // namespace smp::pipeline
