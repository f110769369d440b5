// Chrome-trace output of the executor's actions (see timeline.h).
#include "smp/pipeline/timeline.h"

#include <sys/stat.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>

#include <nlohmann/json.hpp>

#include "smp/error.h"

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

// mkdir -p. (Not std::filesystem: libtorch.so exports its own copy of those symbols, and calls
// can bind to it and crash.)
void make_parent_dirs(const std::string& path) {
  for (size_t slash = path.find('/', 1); slash != std::string::npos;
       slash = path.find('/', slash + 1)) {
    const std::string dir = path.substr(0, slash);
    if (::mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST) {
      throw Error("timeline: cannot create " + dir + ": " + std::strerror(errno));
    }
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
  make_parent_dirs(path);
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp);
    out << nlohmann::json{{"traceEvents", trace}, {"displayTimeUnit", "ms"}}.dump();
    if (!out) throw Error("timeline: cannot write " + tmp);
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    throw Error("timeline: cannot rename " + tmp + " to " + path);
  }
}

}  // namespace smp::pipeline
