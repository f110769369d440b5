// Chrome-trace output of the executor's actions (see timeline.h).
#include "smp/pipeline/timeline.h"

#include <sys/stat.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>

#include <nlohmann/json.hpp>

#include "smp/core/error.h"
#include "smp/core/files.h"

namespace smp::pipeline {
namespace {

const char* row_of(ActionKind kind) {
  switch (kind) {
    case ActionKind::kSendActivation:
    case ActionKind::kSendGrad: return "send";
    case ActionKind::kRecvActivation:
    case ActionKind::kRecvGrad: return "recv";
    default: return "compute";
  }
}

}  // namespace

void write_chrome_trace(const std::string& path, int rank, const std::vector<TraceEvent>& events) {
  nlohmann::json trace = nlohmann::json::array();
  for (const TraceEvent& e : events) {
    trace.push_back({{"name", to_string(e.action)},
                     {"cat", to_string(e.action.kind)},
                     {"ph", "X"},
                     {"pid", rank},
                     {"tid", row_of(e.action.kind)},
                     {"ts", e.start_s * 1e6},
                     {"dur", (e.end_s - e.start_s) * 1e6},
                     {"args",
                      {{"microbatch", e.action.microbatch},
                       {"stage", e.action.stage},
                       {"bytes", e.bytes}}}});
  }
  trace.push_back({{"name", "process_name"}, {"ph", "M"}, {"pid", rank},
                   {"args", {{"name", "pipeline rank " + std::to_string(rank)}}}});
  files::make_dirs(files::parent_dir(path));
  files::write_file_atomic(
      path, nlohmann::json{{"traceEvents", trace}, {"displayTimeUnit", "ms"}}.dump());
}

}  // namespace smp::pipeline
