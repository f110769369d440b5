// The SVG pictures: well-formed enough for a browser, and carrying what they claim to show.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "smp/pipeline/timeline.h"
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

// smp-train gathers its pipeline ranks' traces as the timeline's JSON and draws what it reads
// back: every field survives the trip (the times up to rounding through microseconds).
TEST(Plots, TraceEventsSurviveTheTimelinesJson) {
  using pipeline::ActionKind;
  const std::vector<pipeline::TraceEvent> events = {
      {{ActionKind::kForward, 0, 3}, 0.0, 0.010, 0},
      {{ActionKind::kSendActivation, 0, 3, 1}, 0.010, 0.011, 4096},
      {{ActionKind::kRecvGrad, 2, 1, 3}, 0.25, 0.5, 128},
      {{ActionKind::kBackwardWeight, 2, 1}, 0.5, 0.75, 0}};
  const auto json = pipeline::trace_events_json(1, events);
  ASSERT_EQ(json.size(), events.size() + 1) << "one event each and the row's name";
  const auto back = pipeline::trace_events_from_json(json);
  ASSERT_EQ(back.size(), events.size());
  for (size_t i = 0; i < events.size(); ++i) {
    EXPECT_EQ(back[i].action, events[i].action) << i;
    EXPECT_NEAR(back[i].start_s, events[i].start_s, 1e-12) << i;
    EXPECT_NEAR(back[i].end_s, events[i].end_s, 1e-12) << i;
    EXPECT_EQ(back[i].bytes, events[i].bytes) << i;
  }
  using PerRank = std::vector<std::vector<pipeline::TraceEvent>>;
  EXPECT_EQ(svg_timeline("t", PerRank{back}), svg_timeline("t", PerRank{events}));
}

}  // namespace
}  // namespace smp::train
