// Chrome-trace output of the executor's actions, and reading it back (see timeline.h).
#include "smp/pipeline/timeline.h"

#include <nlohmann/json.hpp>

#include "smp/core/error.h"
#include "smp/core/files.h"

namespace smp::pipeline {
namespace {

constexpr ActionKind kKinds[] = {ActionKind::kForward,         ActionKind::kBackward,
                                 ActionKind::kBackwardInput,   ActionKind::kBackwardWeight,
                                 ActionKind::kSendActivation,  ActionKind::kRecvActivation,
                                 ActionKind::kSendGrad,        ActionKind::kRecvGrad};

const char* row_of(ActionKind kind) {
  switch (kind) {
    case ActionKind::kSendActivation:
    case ActionKind::kSendGrad: return "send";
    case ActionKind::kRecvActivation:
    case ActionKind::kRecvGrad: return "recv";
    default: return "compute";
  }
}

// The kind whose to_string is `name` (an event's "cat").
ActionKind kind_named(const std::string& name) {
  for (ActionKind kind : kKinds) {
    if (name == to_string(kind)) return kind;
  }
  throw Error("trace event: unknown category \"" + name + "\"");
}

}  // namespace

nlohmann::json trace_events_json(int rank, const std::vector<TraceEvent>& events) {
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
                       {"peer", e.action.peer},
                       {"bytes", e.bytes}}}});
  }
  trace.push_back({{"name", "process_name"}, {"ph", "M"}, {"pid", rank},
                   {"args", {{"name", "pipeline rank " + std::to_string(rank)}}}});
  return trace;
}

std::vector<TraceEvent> trace_events_from_json(const nlohmann::json& events) {
  std::vector<TraceEvent> out;
  try {
    for (const nlohmann::json& e : events) {
      if (e.at("ph") != "X") continue;
      const nlohmann::json& args = e.at("args");
      const double start_s = e.at("ts").get<double>() / 1e6;
      out.push_back({{kind_named(e.at("cat").get<std::string>()), args.at("stage").get<int>(),
                      args.at("microbatch").get<int>(), args.at("peer").get<int>()},
                     start_s, start_s + e.at("dur").get<double>() / 1e6,
                     args.at("bytes").get<int64_t>()});
    }
  } catch (const nlohmann::json::exception& e) {
    throw Error(std::string("trace events: not trace_events_json's output: ") + e.what());
  }
  return out;
}

void write_chrome_trace(const std::string& path, int rank, const std::vector<TraceEvent>& events) {
  files::make_dirs(files::parent_dir(path));
  files::write_file_atomic(
      path, nlohmann::json{{"traceEvents", trace_events_json(rank, events)},
                           {"displayTimeUnit", "ms"}}.dump());
}

}  // namespace smp::pipeline
