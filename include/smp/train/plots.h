// Pictures a person would rather look at than read, as standalone SVG files written by smp
// itself (no plotting library): loss curves and one step's pipeline timeline per rank.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "smp/pipeline/trace_event.h"

namespace smp::train {

struct Series {
  std::string name;                          // legend text
  std::vector<std::pair<double, double>> points;  // (x, y), x ascending
  std::string color;                         // any SVG color
};

// A line chart of the series with labelled axes, ticks and a legend; optional horizontal
// reference lines (name, y), e.g. the unigram entropy.
std::string svg_line_chart(const std::string& title, const std::string& x_label,
                           const std::string& y_label, const std::vector<Series>& series,
                           const std::vector<std::pair<std::string, double>>& reference_lines = {});

// One row per rank: forwards, backwards (full, input, weight) and communication as coloured
// boxes on a common time axis, labelled with their microbatch.
std::string svg_timeline(const std::string& title,
                         const std::vector<std::vector<pipeline::TraceEvent>>& per_rank);

}  // namespace smp::train
