// Timeline: a step's actions as a Chrome-trace / Perfetto JSON file (open it in
// chrome://tracing or ui.perfetto.dev), one file per rank. The events' JSON is written here
// only: the trace files, and smp-train gathering its pipeline ranks' traces, both use it.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "smp/pipeline/trace_event.h"

namespace smp::pipeline {

// `events` of pipeline rank `rank` as Chrome-trace events: one complete ("X") event each, in
// microseconds, on a row per kind of work (compute, send, recv), with microbatch, stage, peer
// and bytes as arguments; then a metadata ("M") event naming the rank's row.
nlohmann::json trace_events_json(int rank, const std::vector<TraceEvent>& events);

// The events back from trace_events_json's output, metadata skipped. The times come back
// through microseconds, so equal up to floating-point rounding. Throws smp::Error naming what
// is missing or unknown when `events` is not such output.
std::vector<TraceEvent> trace_events_from_json(const nlohmann::json& events);

// Writes trace_events_json(rank, events) as a trace file at `path`. Creates the folders on the
// way. Writes a temporary file and renames it, so a reader never sees half a trace. Throws
// smp::Error naming the path when the file cannot be written.
void write_chrome_trace(const std::string& path, int rank, const std::vector<TraceEvent>& events);

}  // namespace smp::pipeline
