// Schedule generators, checker and simulator: pure tests, no processes.
//
// The sweep proves every generated schedule valid, deadlock-free and causally ordered; the
// bubble tests compare the simulated idle share with the closed forms of anchors.md §2.2; the
// in-flight tests check the memory claims (GPipe holds m, 1F1B at most min(p - r, m)); the
// bad-schedule tests prove the checkers can fail.
#include "smp/pipeline/schedule.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "smp/core/error.h"

namespace smp::pipeline {
namespace {

const std::vector<int> kRanks = {1, 2, 3, 4, 8};
const std::vector<int> kMicrobatches = {1, 2, 3, 4, 8, 16};

ScheduleSpec spec_of(ScheduleKind kind, int p, int m, int v = 1, int active = 0) {
  ScheduleSpec spec;
  spec.kind = kind;
  spec.num_ranks = p;
  spec.num_microbatches = m;
  spec.chunks_per_rank = v;
  spec.active_microbatches = active;
  return spec;
}

// Every spec of the sweep: simple, 1F1B and forward-only for all (p, m); virtual with v = 1, 2, 3
// where m is a multiple of p.
std::vector<ScheduleSpec> sweep() {
  std::vector<ScheduleSpec> out;
  for (int p : kRanks) {
    for (int m : kMicrobatches) {
      out.push_back(spec_of(ScheduleKind::kSimple, p, m));
      out.push_back(spec_of(ScheduleKind::kOneFOneB, p, m));
      out.push_back(spec_of(ScheduleKind::kForwardOnly, p, m));
      if (m % p != 0) continue;
      for (int v : {1, 2, 3}) out.push_back(spec_of(ScheduleKind::kInterleavedVirtual, p, m, v));
    }
  }
  return out;
}

std::string name(const ScheduleSpec& spec) {
  return std::string(to_string(spec.kind)) + " p=" + std::to_string(spec.num_ranks) +
         " m=" + std::to_string(spec.num_microbatches) +
         " v=" + std::to_string(spec.chunks_per_rank) +
         " active=" + std::to_string(spec.active_microbatches);
}

std::string join(const std::vector<Action>& actions, bool compute_only = false) {
  std::string out;
  for (const Action& a : actions) {
    if (compute_only && a.peer >= 0) continue;
    if (!out.empty()) out += " ";
    out += to_string(a);
  }
  return out;
}

double max_bubble(const Simulation& sim) {
  return *std::max_element(sim.bubble_fraction.begin(), sim.bubble_fraction.end());
}

Costs costs_of(double forward, double backward) {
  Costs costs;
  costs.forward = forward;
  costs.backward = backward;
  return costs;
}

// --- The sweep: valid, deadlock-free, causal -----------------------------------------------------

using SpanKey = std::tuple<ActionKind, int, int>;

TEST(ScheduleSweep, ValidDeadlockFreeAndCausal) {
  for (const ScheduleSpec& spec : sweep()) {
    SCOPED_TRACE(name(spec));
    const Schedule schedule = make_schedule(spec);
    ASSERT_EQ(schedule.num_stages, spec.num_ranks * spec.chunks_per_rank);
    ASSERT_EQ(validate(schedule), "");
    const Simulation sim = simulate(schedule, costs_of(1.0, 2.0));
    ASSERT_FALSE(sim.deadlocked) << sim.deadlock_report;

    std::map<SpanKey, SimulatedSpan> spans;
    for (const auto& rank_spans : sim.per_rank)
      for (const SimulatedSpan& span : rank_spans)
        spans.emplace(SpanKey{span.action.kind, span.action.stage, span.action.microbatch}, span);
    const bool backward = spec.kind != ScheduleKind::kForwardOnly;
    const int S = schedule.num_stages, m = spec.num_microbatches;
    ASSERT_EQ(spans.size(), static_cast<size_t>(S * m * (backward ? 2 : 1)));
    auto at = [&](ActionKind kind, int s, int mb) { return spans.at(SpanKey{kind, s, mb}); };
    for (int s = 0; s < S; ++s) {
      for (int mb = 0; mb < m; ++mb) {
        const SimulatedSpan f = at(ActionKind::kForward, s, mb);
        if (s + 1 < S) {
          EXPECT_GE(at(ActionKind::kForward, s + 1, mb).start, f.end);
        }
        if (!backward) continue;
        const SimulatedSpan b = at(ActionKind::kBackward, s, mb);
        EXPECT_GE(b.start, f.end) << "F/B of stage " << s << " mb " << mb;
        if (s + 1 < S) {
          EXPECT_GE(b.start, at(ActionKind::kBackward, s + 1, mb).end);
        }
      }
    }
  }
}

TEST(ScheduleSweep, OneRankHasNoCommunication) {
  for (const ScheduleSpec& spec : sweep()) {
    if (spec.num_ranks != 1) continue;
    SCOPED_TRACE(name(spec));
    const Schedule schedule = make_schedule(spec);
    for (const Action& a : schedule.per_rank[0]) EXPECT_EQ(a.peer, -1) << to_string(a);
  }
}

// --- Bubble equals theory ------------------------------------------------------------------------

TEST(ScheduleBubble, SimpleAndOneFOneBMatchTheory) {
  for (ScheduleKind kind : {ScheduleKind::kSimple, ScheduleKind::kOneFOneB}) {
    for (double backward : {2.0, 1.0}) {
      for (int p : kRanks) {
        for (int m : kMicrobatches) {
          const ScheduleSpec spec = spec_of(kind, p, m);
          SCOPED_TRACE(name(spec) + " backward=" + std::to_string(backward));
          const Simulation sim = simulate(make_schedule(spec), costs_of(1.0, backward));
          const double theory = double(p - 1) / (m + p - 1);
          EXPECT_NEAR(theoretical_bubble_fraction(spec), theory, 1e-12);
          EXPECT_NEAR(max_bubble(sim), theory, 1e-9);
          EXPECT_NEAR(sim.makespan, (m + p - 1) * (1.0 + backward), 1e-9);
        }
      }
    }
  }
}

TEST(ScheduleBubble, InterleavedVirtualMatchesTheory) {
  for (int v : {1, 2, 3}) {
    for (double backward : {2.0, 1.0}) {
      for (int p : kRanks) {
        for (int m : kMicrobatches) {
          if (m % p != 0) continue;
          const ScheduleSpec spec = spec_of(ScheduleKind::kInterleavedVirtual, p, m, v);
          SCOPED_TRACE(name(spec) + " backward=" + std::to_string(backward));
          const Simulation sim = simulate(make_schedule(spec), costs_of(1.0 / v, backward / v));
          const double theory = double(p - 1) / (v * m + p - 1);
          EXPECT_NEAR(theoretical_bubble_fraction(spec), theory, 1e-12);
          EXPECT_NEAR(max_bubble(sim), theory, 1e-9);
        }
      }
    }
  }
}

TEST(ScheduleBubble, ForwardOnlyMatchesTheory) {
  for (int p : kRanks) {
    for (int m : kMicrobatches) {
      const ScheduleSpec spec = spec_of(ScheduleKind::kForwardOnly, p, m);
      SCOPED_TRACE(name(spec));
      const Simulation sim = simulate(make_schedule(spec), costs_of(1.0, 2.0));
      EXPECT_NEAR(max_bubble(sim), theoretical_bubble_fraction(spec), 1e-9);
      EXPECT_NEAR(sim.makespan, m + p - 1, 1e-9);
    }
  }
}

// p = 8, m = 32 (anchors.md §2.2 worked example): idle / compute is 21.9% for 1F1B and 10.9%
// for interleaved v = 2; as a share of wall time f, idle / compute = f / (1 - f).
TEST(ScheduleBubble, AnchorsWorkedExample) {
  const double one_f_one_b = theoretical_bubble_fraction(spec_of(ScheduleKind::kOneFOneB, 8, 32));
  const double virtual_2 =
      theoretical_bubble_fraction(spec_of(ScheduleKind::kInterleavedVirtual, 8, 32, 2));
  EXPECT_NEAR(one_f_one_b / (1 - one_f_one_b), 0.219, 5e-4);
  EXPECT_NEAR(virtual_2 / (1 - virtual_2), 0.109, 5e-4);
}

// --- Zero bubble (ZB-H1) -------------------------------------------------------------------------

// Valid, deadlock-free and causal (an input half after the next stage's, a weight half after its
// own input half); with forward, input and weight halves of one unit each the bubble is
// (p - 1) / (3m + p - 1), a third of 1F1B's, on every rank; no rank holds more microbatches
// than 1F1B's first rank does (min(p, m)).
TEST(ScheduleZeroBubble, MatchesTheoryWithOneFOneBsMemory) {
  for (int p : kRanks) {
    for (int m : kMicrobatches) {
      if (m < p) continue;
      const ScheduleSpec spec = spec_of(ScheduleKind::kZeroBubble, p, m);
      SCOPED_TRACE(name(spec));
      const Schedule schedule = make_schedule(spec);
      ASSERT_EQ(validate(schedule), "");
      const Simulation sim = simulate(schedule);  // forward 1, input half 1, weight half 1
      ASSERT_FALSE(sim.deadlocked) << sim.deadlock_report;
      const double theory = double(p - 1) / (3 * m + p - 1);
      EXPECT_NEAR(theoretical_bubble_fraction(spec), theory, 1e-12);
      EXPECT_NEAR(max_bubble(sim), theory, 1e-9);
      EXPECT_NEAR(sim.makespan, 3 * m + p - 1, 1e-9);
      const Simulation one_f_one_b = simulate(make_schedule(spec_of(ScheduleKind::kOneFOneB, p, m)));
      if (p > 1) EXPECT_LT(sim.makespan, one_f_one_b.makespan);
      const int most_1f1b = *std::max_element(one_f_one_b.peak_in_flight.begin(),
                                              one_f_one_b.peak_in_flight.end());
      for (int r = 0; r < p; ++r) {
        EXPECT_LE(sim.peak_in_flight[r], std::min(p, m)) << "rank " << r;
        EXPECT_LE(sim.peak_in_flight[r], most_1f1b) << "rank " << r;
      }
      std::map<SpanKey, SimulatedSpan> spans;
      for (const auto& rank_spans : sim.per_rank)
        for (const SimulatedSpan& span : rank_spans)
          spans.emplace(SpanKey{span.action.kind, span.action.stage, span.action.microbatch}, span);
      ASSERT_EQ(spans.size(), static_cast<size_t>(3 * p * m));
      for (int s = 0; s < p; ++s) {
        for (int mb = 0; mb < m; ++mb) {
          const auto& input = spans.at({ActionKind::kBackwardInput, s, mb});
          EXPECT_GE(input.start, spans.at({ActionKind::kForward, s, mb}).end);
          EXPECT_GE(spans.at({ActionKind::kBackwardWeight, s, mb}).start, input.end);
          if (s + 1 < p) EXPECT_GE(input.start, spans.at({ActionKind::kBackwardInput, s + 1, mb}).end);
        }
      }
    }
  }
}

TEST(ScheduleZeroBubble, GoldenTwoRanksFourMicrobatches) {
  const Schedule schedule = make_schedule(spec_of(ScheduleKind::kZeroBubble, 2, 4));
  // Each rank runs a weight half wherever its next forward or input half would wait.
  EXPECT_EQ(join(schedule.per_rank[0], true), "F0.0 F1.0 I0.0 W0.0 F2.0 I1.0 W1.0 F3.0 I2.0 W2.0 I3.0 W3.0");
  EXPECT_EQ(join(schedule.per_rank[1], true), "F0.1 I0.1 F1.1 I1.1 W0.1 F2.1 I2.1 W1.1 F3.1 I3.1 W2.1 W3.1");
}

// --- In-flight activations -----------------------------------------------------------------------

TEST(ScheduleInFlight, SimpleHoldsEveryMicrobatch) {
  for (int p : kRanks) {
    for (int m : kMicrobatches) {
      SCOPED_TRACE("p=" + std::to_string(p) + " m=" + std::to_string(m));
      const Simulation sim = simulate(make_schedule(spec_of(ScheduleKind::kSimple, p, m)));
      for (int r = 0; r < p; ++r) EXPECT_EQ(sim.peak_in_flight[r], m) << "rank " << r;
    }
  }
}

TEST(ScheduleInFlight, OneFOneBHoldsAtMostPMinusRank) {
  for (int p : kRanks) {
    for (int m : kMicrobatches) {
      for (int active : {0, 1, 2, 3}) {
        const ScheduleSpec spec = spec_of(ScheduleKind::kOneFOneB, p, m, 1, active);
        SCOPED_TRACE(name(spec));
        const Schedule schedule = make_schedule(spec);
        ASSERT_EQ(validate(schedule), "");
        const Simulation sim = simulate(schedule);
        ASSERT_FALSE(sim.deadlocked) << sim.deadlock_report;
        const int cap = active == 0 ? p + 2 : active;
        for (int r = 0; r < p; ++r) {
          EXPECT_EQ(sim.peak_in_flight[r], std::min({p - r, m, cap})) << "rank " << r;
          EXPECT_LE(sim.peak_in_flight[r], std::min(p, cap)) << "rank " << r;
        }
      }
    }
  }
}

// One microbatch in flight per rank: the pipeline runs one compute at a time, never two.
TEST(ScheduleInFlight, OneActiveMicrobatchIsSerial) {
  for (int p : kRanks) {
    for (int m : kMicrobatches) {
      const ScheduleSpec spec = spec_of(ScheduleKind::kOneFOneB, p, m, 1, 1);
      SCOPED_TRACE(name(spec));
      const Simulation sim = simulate(make_schedule(spec), costs_of(1.0, 2.0));
      ASSERT_FALSE(sim.deadlocked) << sim.deadlock_report;
      EXPECT_NEAR(sim.makespan, 3.0 * m * p, 1e-9);
    }
  }
}

// Virtual stages: pairs counted per (stage, microbatch); rank 0 holds its warmup plus one.
TEST(ScheduleInFlight, InterleavedVirtualFirstRank) {
  const int p = 4, m = 8, v = 2;
  const Simulation sim =
      simulate(make_schedule(spec_of(ScheduleKind::kInterleavedVirtual, p, m, v)));
  EXPECT_EQ(sim.peak_in_flight[0], (p - 1) * 2 + (v - 1) * p + 1);
  EXPECT_EQ(sim.peak_in_flight[p - 1], (v - 1) * p + 1);
}

TEST(ScheduleInFlight, ForwardOnlyHoldsNothing) {
  const Simulation sim = simulate(make_schedule(spec_of(ScheduleKind::kForwardOnly, 4, 8)));
  for (int peak : sim.peak_in_flight) EXPECT_EQ(peak, 0);
}

// --- Golden lists, written from the definitions --------------------------------------------------

// p = 2, m = 4, 1F1B. Rank 0 warms up with min(p - 0 - 1, m) = 1 forward, alternates F then B
// for microbatches 1..3 / 0..2, and cools down with B3; every forward sends to rank 1 and every
// backward first receives its gradient from rank 1. Rank 1 (last stage) has no warmup: F, B
// for each microbatch, receiving each input from rank 0 and sending each gradient back.
TEST(ScheduleGolden, OneFOneBTwoRanksFourMicrobatches) {
  const Schedule schedule = make_schedule(spec_of(ScheduleKind::kOneFOneB, 2, 4));
  EXPECT_EQ(join(schedule.per_rank[0]),
            "F0.0 SA0.0>1 "
            "F1.0 SA1.0>1 RG0.0<1 B0.0 "
            "F2.0 SA2.0>1 RG1.0<1 B1.0 "
            "F3.0 SA3.0>1 RG2.0<1 B2.0 "
            "RG3.0<1 B3.0");
  EXPECT_EQ(join(schedule.per_rank[1]),
            "RA0.1<0 F0.1 B0.1 SG0.1>0 "
            "RA1.1<0 F1.1 B1.1 SG1.1>0 "
            "RA2.1<0 F2.1 B2.1 SG2.1>0 "
            "RA3.1<0 F3.1 B3.1 SG3.1>0");
}

TEST(ScheduleGolden, SimpleTwoRanksTwoMicrobatches) {
  const Schedule schedule = make_schedule(spec_of(ScheduleKind::kSimple, 2, 2));
  EXPECT_EQ(join(schedule.per_rank[0]), "F0.0 SA0.0>1 F1.0 SA1.0>1 RG0.0<1 B0.0 RG1.0<1 B1.0");
  EXPECT_EQ(join(schedule.per_rank[1]), "RA0.1<0 F0.1 RA1.1<0 F1.1 B0.1 SG0.1>0 B1.1 SG1.1>0");
}

// p = 2, m = 4, v = 2: stages 0, 2 on rank 0 and 1, 3 on rank 1. Forward order (mb, chunk):
// (0,0) (1,0) (0,1) (1,1) (2,0) (3,0) (2,1) (3,1); backwards mirror the chunk. Rank 0 warms up
// with (2 - 1) * 2 + (2 - 1) * 2 = 4 forwards, rank 1 with 2; then F/B pairs; then cooldown.
TEST(ScheduleGolden, InterleavedVirtualTwoRanks) {
  const Schedule schedule = make_schedule(spec_of(ScheduleKind::kInterleavedVirtual, 2, 4, 2));
  EXPECT_EQ(join(schedule.per_rank[0], true),
            "F0.0 F1.0 F0.2 F1.2 "
            "F2.0 B0.2 F3.0 B1.2 F2.2 B0.0 F3.2 B1.0 "
            "B2.2 B3.2 B2.0 B3.0");
  EXPECT_EQ(join(schedule.per_rank[1], true),
            "F0.1 F1.1 "
            "F0.3 B0.3 F1.3 B1.3 F2.1 B0.1 F3.1 B1.1 F2.3 B2.3 F3.3 B3.3 "
            "B2.1 B3.1");
}

TEST(ScheduleNames, ActionsAndKinds) {
  EXPECT_EQ(to_string(Action{ActionKind::kForward, 1, 3}), "F3.1");
  EXPECT_EQ(to_string(Action{ActionKind::kBackward, 1, 3}), "B3.1");
  EXPECT_EQ(to_string(Action{ActionKind::kBackwardInput, 0, 2}), "I2.0");
  EXPECT_EQ(to_string(Action{ActionKind::kBackwardWeight, 0, 2}), "W2.0");
  EXPECT_EQ(to_string(Action{ActionKind::kSendActivation, 1, 3, 2}), "SA3.1>2");
  EXPECT_EQ(to_string(Action{ActionKind::kRecvActivation, 2, 3, 1}), "RA3.2<1");
  EXPECT_EQ(to_string(Action{ActionKind::kSendGrad, 2, 3, 1}), "SG3.2>1");
  EXPECT_EQ(to_string(Action{ActionKind::kRecvGrad, 1, 3, 2}), "RG3.1<2");
  EXPECT_STREQ(to_string(ActionKind::kBackwardWeight), "backward_weight");
  EXPECT_STREQ(to_string(ScheduleKind::kSimple), "simple");
  EXPECT_STREQ(to_string(ScheduleKind::kOneFOneB), "interleaved");
  EXPECT_STREQ(to_string(ScheduleKind::kInterleavedVirtual), "interleaved_virtual");
  EXPECT_STREQ(to_string(ScheduleKind::kForwardOnly), "forward_only");
}

// --- The checkers can fail -----------------------------------------------------------------------

size_t index_of(const std::vector<Action>& list, const std::string& text) {
  for (size_t i = 0; i < list.size(); ++i)
    if (to_string(list[i]) == text) return i;
  ADD_FAILURE() << text << " not in " << join(list);
  return 0;
}

// Rank 0 waits for microbatch 0's gradient before sending its activation: a cycle.
TEST(ScheduleBad, SwappedSendAndReceiveDeadlocks) {
  Schedule schedule = make_schedule(spec_of(ScheduleKind::kOneFOneB, 2, 4));
  auto& list = schedule.per_rank[0];
  std::swap(list[index_of(list, "SA0.0>1")], list[index_of(list, "RG0.0<1")]);
  ASSERT_EQ(join(list).substr(0, 26), "F0.0 RG0.0<1 F1.0 SA1.0>1 ");
  const Simulation sim = simulate(schedule);
  ASSERT_TRUE(sim.deadlocked);
  EXPECT_NE(sim.deadlock_report.find("rank 0 stuck at action 1 of 16 (RG0.0<1)"),
            std::string::npos) << sim.deadlock_report;
  EXPECT_NE(sim.deadlock_report.find("rank 1 stuck at action 0 of 16 (RA0.1<0)"),
            std::string::npos) << sim.deadlock_report;
  EXPECT_NE(sim.deadlock_report.find("waits for rank 0's SA0.0>1"), std::string::npos)
      << sim.deadlock_report;
}

TEST(ScheduleBad, MissingBackwardIsReported) {
  Schedule schedule = make_schedule(spec_of(ScheduleKind::kOneFOneB, 2, 4));
  auto& list = schedule.per_rank[1];
  list.erase(list.begin() + index_of(list, "B2.1"));
  EXPECT_EQ(validate(schedule),
            "stage 1 microbatch 2 on rank 1 has 0 full, 0 input and 0 weight backwards; "
            "needs 1 full, or 1 input and 1 weight backward");
  const Simulation sim = simulate(schedule);
  ASSERT_TRUE(sim.deadlocked);  // SG2.1 has nothing to send
  EXPECT_NE(sim.deadlock_report.find("(SG2.1>0): sends the input gradient of stage 1"),
            std::string::npos) << sim.deadlock_report;
}

TEST(ScheduleBad, WrongPeerIsReported) {
  Schedule schedule = make_schedule(spec_of(ScheduleKind::kOneFOneB, 3, 4));
  auto& list = schedule.per_rank[0];
  list[index_of(list, "SA0.0>1")].peer = 2;
  EXPECT_EQ(validate(schedule), "rank 0 action 1 (SA0.0>2): peer should be 1");
  const Simulation sim = simulate(schedule);
  ASSERT_TRUE(sim.deadlocked);
  EXPECT_NE(sim.deadlock_report.find("rank 1 stuck at action 0"), std::string::npos)
      << sim.deadlock_report;
}

TEST(ScheduleBad, BackwardBeforeForwardIsReported) {
  Schedule schedule = make_schedule(spec_of(ScheduleKind::kSimple, 1, 2));
  auto& list = schedule.per_rank[0];  // F0.0 F1.0 B0.0 B1.0
  std::swap(list[0], list[2]);
  EXPECT_EQ(validate(schedule), "stage 0 microbatch 0 on rank 0: backward before its forward");
  const Simulation sim = simulate(schedule);
  ASSERT_TRUE(sim.deadlocked);
  EXPECT_NE(sim.deadlock_report.find("(B0.0): waits for F0.0 on this rank"), std::string::npos)
      << sim.deadlock_report;
}

TEST(ScheduleBad, MissingReceiveAndStrayActionsAreReported) {
  Schedule missing = make_schedule(spec_of(ScheduleKind::kOneFOneB, 2, 2));
  missing.per_rank[1].erase(missing.per_rank[1].begin());  // RA0.1<0
  EXPECT_EQ(validate(missing),
            "rank 0 action 1 (SA0.0>1): rank 1 has 0 matching RA0.1; needs exactly 1");

  Schedule misplaced = make_schedule(spec_of(ScheduleKind::kOneFOneB, 2, 2));
  misplaced.per_rank[0].push_back(Action{ActionKind::kForward, 1, 0});
  EXPECT_EQ(validate(misplaced), "rank 0 action 8 (F0.1): stage 1 lives on rank 1");
  EXPECT_TRUE(simulate(misplaced).deadlocked);

  Schedule out_of_range = make_schedule(spec_of(ScheduleKind::kSimple, 1, 2));
  out_of_range.per_rank[0].push_back(Action{ActionKind::kForward, 0, 7});
  EXPECT_EQ(validate(out_of_range), "rank 0 action 4 (F7.0): microbatch out of range 0..1");
  EXPECT_TRUE(simulate(out_of_range).deadlocked);

  Schedule backward_in_eval = make_schedule(spec_of(ScheduleKind::kForwardOnly, 1, 1));
  backward_in_eval.per_rank[0].push_back(Action{ActionKind::kBackward, 0, 0});
  EXPECT_EQ(validate(backward_in_eval),
            "stage 0 microbatch 0 on rank 0 has a backward in a forward-only schedule");
}

// The split backward (zero-bubble's I and W) is valid IR; no generator emits it yet.
TEST(ScheduleSplitBackward, HandWrittenSplitIsValidAndSimulates) {
  Schedule schedule = make_schedule(spec_of(ScheduleKind::kOneFOneB, 2, 1));
  // rank 0: F0.0 SA0.0>1 RG0.0<1 B0.0 ; rank 1: RA0.1<0 F0.1 B0.1 SG0.1>0
  schedule.per_rank[1] = {{ActionKind::kRecvActivation, 1, 0, 0}, {ActionKind::kForward, 1, 0},
                          {ActionKind::kBackwardInput, 1, 0},     {ActionKind::kSendGrad, 1, 0, 0},
                          {ActionKind::kBackwardWeight, 1, 0}};
  ASSERT_EQ(validate(schedule), "");
  Costs costs;  // forward 1, backward 2, input 1, weight 1
  const Simulation sim = simulate(schedule, costs);
  ASSERT_FALSE(sim.deadlocked) << sim.deadlock_report;
  // Rank 0's backward starts once rank 1's input backward is done (t = 3), not its weight one.
  EXPECT_DOUBLE_EQ(sim.per_rank[0].back().start, 3.0);
  EXPECT_DOUBLE_EQ(sim.makespan, 5.0);
  EXPECT_EQ(sim.peak_in_flight[1], 1);

  std::swap(schedule.per_rank[1][2], schedule.per_rank[1][4]);  // W before I
  EXPECT_EQ(validate(schedule),
            "stage 1 microbatch 0 on rank 1: weight backward before input backward");
}

// --- Bad specs -----------------------------------------------------------------------------------

void expect_config_error(const ScheduleSpec& spec, const std::string& needle) {
  try {
    make_schedule(spec);
    ADD_FAILURE() << "no ConfigError for " << name(spec);
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

TEST(ScheduleSpecErrors, NameTheFieldAndValue) {
  expect_config_error(spec_of(ScheduleKind::kOneFOneB, 0, 4),
                      "num_ranks (pipeline_parallel_degree) is 0; allowed: >= 1");
  expect_config_error(spec_of(ScheduleKind::kSimple, 2, 0),
                      "num_microbatches (microbatches) is 0; allowed: >= 1");
  expect_config_error(spec_of(ScheduleKind::kInterleavedVirtual, 2, 4, 0),
                      "chunks_per_rank is 0; allowed: >= 1");
  expect_config_error(spec_of(ScheduleKind::kOneFOneB, 2, 4, 2),
                      "chunks_per_rank is 2 with kind interleaved; allowed: 1, or kind "
                      "interleaved_virtual");
  expect_config_error(spec_of(ScheduleKind::kOneFOneB, 2, 4, 1, -1),
                      "active_microbatches is -1; allowed: >= 1, or 0 for the default");
  expect_config_error(spec_of(ScheduleKind::kInterleavedVirtual, 4, 6, 2),
                      "num_microbatches (microbatches) is 6, not a multiple of num_ranks "
                      "(pipeline_parallel_degree) 4");
  expect_config_error(spec_of(ScheduleKind::kZeroBubble, 4, 3),
                      "num_microbatches (microbatches) is 3, fewer than num_ranks "
                      "(pipeline_parallel_degree) 4; zero_bubble needs");
  expect_config_error(spec_of(ScheduleKind::kZeroBubble, 2, 4, 2),
                      "chunks_per_rank is 2 with kind zero_bubble");
  EXPECT_THROW(theoretical_bubble_fraction(spec_of(ScheduleKind::kSimple, 0, 4)), ConfigError);
}

}  // namespace
}  // namespace smp::pipeline
