// SVG loss curves and pipeline timelines (see plots.h).
#include "smp/train/plots.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>

#include "smp/core/error.h"

namespace smp::train {
namespace {

constexpr double kWidth = 800, kHeight = 420;
constexpr double kLeft = 70, kRight = 170, kTop = 40, kBottom = 50;

std::string escape(const std::string& text) {
  std::string out;
  for (char c : text) {
    if (c == '<') out += "&lt;";
    else if (c == '>') out += "&gt;";
    else if (c == '&') out += "&amp;";
    else out += c;
  }
  return out;
}

std::string number(double v) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), std::fabs(v) >= 100 || v == std::floor(v) ? "%.0f" : "%.3g", v);
  return buf;
}

// About five round tick values covering [lo, hi].
std::vector<double> ticks(double lo, double hi) {
  const double span = hi > lo ? hi - lo : 1;
  const double raw = span / 5;
  const double magnitude = std::pow(10, std::floor(std::log10(raw)));
  const double step = raw / magnitude < 2 ? 2 * magnitude : raw / magnitude < 5 ? 5 * magnitude
                                                                                  : 10 * magnitude;
  std::vector<double> out;
  for (double t = std::ceil(lo / step) * step; t <= hi + 1e-9 * span; t += step) out.push_back(t);
  return out;
}

}  // namespace

std::string svg_line_chart(const std::string& title, const std::string& x_label,
                           const std::string& y_label, const std::vector<Series>& series,
                           const std::vector<std::pair<std::string, double>>& reference_lines) {
  double x0 = 1e300, x1 = -1e300, y0 = 1e300, y1 = -1e300;
  for (const Series& s : series) {
    for (auto [x, y] : s.points) {
      x0 = std::min(x0, x), x1 = std::max(x1, x), y0 = std::min(y0, y), y1 = std::max(y1, y);
    }
  }
  for (const auto& [name, y] : reference_lines) y0 = std::min(y0, y), y1 = std::max(y1, y);
  if (x0 > x1) x0 = 0, x1 = 1, y0 = 0, y1 = 1;
  if (x1 == x0) x1 = x0 + 1;
  if (y1 == y0) y1 = y0 + 1;
  const double pad = 0.05 * (y1 - y0);
  y0 -= pad, y1 += pad;
  const double w = kWidth - kLeft - kRight, h = kHeight - kTop - kBottom;
  auto px = [&](double x) { return kLeft + (x - x0) / (x1 - x0) * w; };
  auto py = [&](double y) { return kTop + (1 - (y - y0) / (y1 - y0)) * h; };

  std::ostringstream svg;
  svg << "<svg xmlns='http://www.w3.org/2000/svg' width='" << kWidth << "' height='" << kHeight
      << "' font-family='sans-serif' font-size='12'>\n<rect width='100%' height='100%' fill='white'/>\n"
      << "<text x='" << kWidth / 2 << "' y='22' text-anchor='middle' font-size='15'>" << escape(title)
      << "</text>\n";
  for (double t : ticks(x0, x1)) {
    svg << "<line x1='" << px(t) << "' x2='" << px(t) << "' y1='" << kTop << "' y2='" << kTop + h
        << "' stroke='#eee'/><text x='" << px(t) << "' y='" << kTop + h + 16
        << "' text-anchor='middle'>" << number(t) << "</text>\n";
  }
  for (double t : ticks(y0, y1)) {
    svg << "<line x1='" << kLeft << "' x2='" << kLeft + w << "' y1='" << py(t) << "' y2='" << py(t)
        << "' stroke='#eee'/><text x='" << kLeft - 6 << "' y='" << py(t) + 4
        << "' text-anchor='end'>" << number(t) << "</text>\n";
  }
  svg << "<rect x='" << kLeft << "' y='" << kTop << "' width='" << w << "' height='" << h
      << "' fill='none' stroke='#444'/>\n"
      << "<text x='" << kLeft + w / 2 << "' y='" << kHeight - 12 << "' text-anchor='middle'>"
      << escape(x_label) << "</text>\n<text transform='translate(18," << kTop + h / 2
      << ") rotate(-90)' text-anchor='middle'>" << escape(y_label) << "</text>\n";
  double legend_y = kTop + 10;
  for (const auto& [name, y] : reference_lines) {
    svg << "<line x1='" << kLeft << "' x2='" << kLeft + w << "' y1='" << py(y) << "' y2='" << py(y)
        << "' stroke='#999' stroke-dasharray='6 4'/>\n<line x1='" << kLeft + w + 12 << "' x2='"
        << kLeft + w + 36 << "' y1='" << legend_y << "' y2='" << legend_y
        << "' stroke='#999' stroke-dasharray='6 4'/><text x='" << kLeft + w + 42 << "' y='"
        << legend_y + 4 << "'>" << escape(name) << "</text>\n";
    legend_y += 20;
  }
  for (const Series& s : series) {
    svg << "<polyline fill='none' stroke='" << s.color << "' stroke-width='1.8' points='";
    for (auto [x, y] : s.points) svg << px(x) << "," << py(y) << " ";
    svg << "'/>\n<line x1='" << kLeft + w + 12 << "' x2='" << kLeft + w + 36 << "' y1='"
        << legend_y << "' y2='" << legend_y << "' stroke='" << s.color
        << "' stroke-width='3'/><text x='" << kLeft + w + 42 << "' y='" << legend_y + 4 << "'>"
        << escape(s.name) << "</text>\n";
    legend_y += 20;
  }
  svg << "</svg>\n";
  return svg.str();
}

std::string svg_timeline(const std::string& title,
                         const std::vector<std::vector<pipeline::TraceEvent>>& per_rank) {
  using pipeline::ActionKind;
  double end = 0;
  for (const auto& events : per_rank) {
    for (const auto& e : events) end = std::max(end, e.end_s);
  }
  if (end <= 0) end = 1;
  const double row = 34, left = 90, right = 20, top = 40;
  const double width = 1000, w = width - left - right;
  const double height = top + row * per_rank.size() + 60;
  auto px = [&](double t) { return left + t / end * w; };
  std::ostringstream svg;
  svg << "<svg xmlns='http://www.w3.org/2000/svg' width='" << width << "' height='" << height
      << "' font-family='sans-serif' font-size='11'>\n<rect width='100%' height='100%' fill='white'/>\n"
      << "<text x='" << width / 2 << "' y='22' text-anchor='middle' font-size='15'>" << escape(title)
      << "</text>\n";
  for (size_t r = 0; r < per_rank.size(); ++r) {
    const double y = top + r * row;
    svg << "<text x='" << left - 8 << "' y='" << y + row / 2 + 4 << "' text-anchor='end'>rank "
        << r << "</text>\n";
    for (const auto& e : per_rank[r]) {
      const ActionKind k = e.action.kind;
      const bool comm = k != ActionKind::kForward && k != ActionKind::kBackward &&
                        k != ActionKind::kBackwardInput && k != ActionKind::kBackwardWeight;
      const char* color = k == ActionKind::kForward          ? "#4c78a8"
                          : k == ActionKind::kBackward       ? "#54a24b"
                          : k == ActionKind::kBackwardInput  ? "#72b7b2"
                          : k == ActionKind::kBackwardWeight ? "#b279a2"
                                                             : "#f58518";
      const double x = px(e.start_s), bw = std::max(0.5, px(e.end_s) - x);
      const double by = comm ? y + row - 8 : y + 2, bh = comm ? 5 : row - 12;
      svg << "<rect x='" << x << "' y='" << by << "' width='" << bw << "' height='" << bh
          << "' fill='" << color << "' stroke='white' stroke-width='0.5'><title>"
          << escape(pipeline::to_string(e.action)) << " " << number((e.end_s - e.start_s) * 1e3)
          << " ms</title></rect>\n";
      if (!comm && bw > 14) {
        svg << "<text x='" << x + bw / 2 << "' y='" << by + bh / 2 + 4
            << "' text-anchor='middle' fill='white'>" << e.action.microbatch << "</text>\n";
      }
    }
  }
  const double legend_y = top + row * per_rank.size() + 25;
  const std::vector<std::pair<const char*, const char*>> legend = {
      {"forward", "#4c78a8"}, {"backward", "#54a24b"}, {"input grad", "#72b7b2"},
      {"weight grad", "#b279a2"}, {"send/recv", "#f58518"}};
  double x = left;
  for (const auto& [name, color] : legend) {
    svg << "<rect x='" << x << "' y='" << legend_y - 9 << "' width='12' height='12' fill='" << color
        << "'/><text x='" << x + 16 << "' y='" << legend_y + 1 << "'>" << name << "</text>\n";
    x += 110;
  }
  svg << "<text x='" << width - right << "' y='" << legend_y + 1 << "' text-anchor='end'>"
      << number(end * 1e3) << " ms</text>\n</svg>\n";
  return svg.str();
}


}  // namespace smp::train
