// The SVG pictures: well-formed enough for a browser, and carrying what they claim to show.
#include <gtest/gtest.h>

#include "smp/train/plots.h"

namespace smp::train {
namespace {

int count(const std::string& text, const std::string& needle) {
  int n = 0;
  for (size_t at = text.find(needle); at != std::string::npos; at = text.find(needle, at + 1)) ++n;
  return n;
}

TEST(Plots, LineChartHasEverySeriesTheLegendAndTheReferenceLine) {
  const std::string svg = svg_line_chart(
      "loss", "step", "nats",
      {{"train", {{0, 5.0}, {1, 4.0}, {2, 3.5}}, "#1f77b4"}, {"val <b>", {{0, 5.1}, {2, 3.7}}, "red"}},
      {{"unigram entropy", 4.2}});
  EXPECT_EQ(svg.rfind("<svg", 0), 0u);
  EXPECT_NE(svg.find("</svg>"), std::string::npos);
  EXPECT_EQ(count(svg, "<polyline"), 2);
  EXPECT_NE(svg.find("unigram entropy"), std::string::npos);
  EXPECT_NE(svg.find("val &lt;b&gt;"), std::string::npos) << "text is escaped";
  EXPECT_EQ(svg.find("nan"), std::string::npos);
  // An empty chart still draws.
  EXPECT_NE(svg_line_chart("empty", "x", "y", {}).find("</svg>"), std::string::npos);
}

TEST(Plots, TimelineDrawsOneBoxPerActionOnItsRankRow) {
  using pipeline::ActionKind;
  std::vector<std::vector<pipeline::TraceEvent>> ranks(2);
  ranks[0].push_back({{ActionKind::kForward, 0, 0}, 0.0, 0.010, 0});
  ranks[0].push_back({{ActionKind::kSendActivation, 0, 0, 1}, 0.010, 0.011, 4096});
  ranks[1].push_back({{ActionKind::kForward, 1, 0}, 0.011, 0.020, 0});
  ranks[1].push_back({{ActionKind::kBackward, 1, 0}, 0.020, 0.040, 0});
  const std::string svg = svg_timeline("step 3", ranks);
  EXPECT_EQ(count(svg, "<title>"), 4);
  EXPECT_NE(svg.find("rank 1"), std::string::npos);
  EXPECT_NE(svg.find("40 ms"), std::string::npos);  // the time axis ends at the last action
}

}  // namespace
}  // namespace smp::train
