// Pipeline schedules: the generators, the placement of sends and receives, the structural
// checker and the simulator. Contracts are in schedule.h.
//
// Every generator first lists each rank's compute actions (forwards and backwards) in the order
// the rank runs them; add_communication() then puts each receive right before the compute that
// consumes it and each send right after the compute that produces it.
#include "smp/pipeline/schedule.h"

#include <algorithm>
#include <deque>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "smp/core/error.h"

namespace smp::pipeline {

// --- Names ---------------------------------------------------------------------------------------

const char* to_string(ActionKind kind) {
  switch (kind) {
    case ActionKind::kForward: return "forward";
    case ActionKind::kBackward: return "backward";
    case ActionKind::kBackwardInput: return "backward_input";
    case ActionKind::kBackwardWeight: return "backward_weight";
    case ActionKind::kSendActivation: return "send_activation";
    case ActionKind::kRecvActivation: return "recv_activation";
    case ActionKind::kSendGrad: return "send_grad";
    case ActionKind::kRecvGrad: return "recv_grad";
  }
  return "unknown";
}

const char* to_string(ScheduleKind kind) {
  switch (kind) {
    case ScheduleKind::kSimple: return "simple";
    case ScheduleKind::kOneFOneB: return "interleaved";
    case ScheduleKind::kInterleavedVirtual: return "interleaved_virtual";
    case ScheduleKind::kForwardOnly: return "forward_only";
    case ScheduleKind::kZeroBubble: return "zero_bubble";
  }
  return "unknown";
}

namespace {

const char* short_name(ActionKind kind) {
  switch (kind) {
    case ActionKind::kForward: return "F";
    case ActionKind::kBackward: return "B";
    case ActionKind::kBackwardInput: return "I";
    case ActionKind::kBackwardWeight: return "W";
    case ActionKind::kSendActivation: return "SA";
    case ActionKind::kRecvActivation: return "RA";
    case ActionKind::kSendGrad: return "SG";
    case ActionKind::kRecvGrad: return "RG";
  }
  return "?";
}

bool is_send(ActionKind kind) {
  return kind == ActionKind::kSendActivation || kind == ActionKind::kSendGrad;
}
bool is_recv(ActionKind kind) {
  return kind == ActionKind::kRecvActivation || kind == ActionKind::kRecvGrad;
}
bool is_compute(ActionKind kind) { return !is_send(kind) && !is_recv(kind); }
// The backward that produces the input gradient: what the previous stage waits for.
bool makes_input_grad(ActionKind kind) {
  return kind == ActionKind::kBackward || kind == ActionKind::kBackwardInput;
}
// The backward after which the stage's activations for that microbatch are freed.
bool frees_activations(ActionKind kind) {
  return kind == ActionKind::kBackward || kind == ActionKind::kBackwardWeight;
}

Action compute(ActionKind kind, int stage, int microbatch) {
  return Action{kind, stage, microbatch, -1};
}

}  // namespace

std::string to_string(const Action& action) {
  std::string out = short_name(action.kind) + std::to_string(action.microbatch) + "." +
                    std::to_string(action.stage);
  if (is_send(action.kind)) out += ">" + std::to_string(action.peer);
  if (is_recv(action.kind)) out += "<" + std::to_string(action.peer);
  return out;
}

// --- Spec checks ---------------------------------------------------------------------------------

namespace {

[[noreturn]] void spec_error(const std::string& what) {
  throw ConfigError("pipeline schedule: " + what);
}

void check_spec(const ScheduleSpec& spec) {
  const std::string p = std::to_string(spec.num_ranks);
  const std::string m = std::to_string(spec.num_microbatches);
  if (spec.num_ranks < 1)
    spec_error("num_ranks (pipeline_parallel_degree) is " + p + "; allowed: >= 1");
  if (spec.num_microbatches < 1)
    spec_error("num_microbatches (microbatches) is " + m + "; allowed: >= 1");
  if (spec.chunks_per_rank < 1)
    spec_error("chunks_per_rank is " + std::to_string(spec.chunks_per_rank) + "; allowed: >= 1");
  if (spec.chunks_per_rank > 1 && spec.kind != ScheduleKind::kInterleavedVirtual &&
      spec.kind != ScheduleKind::kForwardOnly)
    spec_error("chunks_per_rank is " + std::to_string(spec.chunks_per_rank) + " with kind " +
               to_string(spec.kind) + "; allowed: 1, or kind interleaved_virtual or forward_only");
  if (spec.active_microbatches < 0)
    spec_error("active_microbatches is " + std::to_string(spec.active_microbatches) +
               "; allowed: >= 1, or 0 for the default num_ranks + 2");
  if (spec.kind == ScheduleKind::kZeroBubble && spec.num_microbatches < spec.num_ranks)
    spec_error("num_microbatches (microbatches) is " + m + ", fewer than num_ranks "
               "(pipeline_parallel_degree) " + p + "; zero_bubble needs microbatches >= "
               "pipeline_parallel_degree to fill its bubbles");
  if (spec.kind == ScheduleKind::kInterleavedVirtual && spec.num_microbatches % spec.num_ranks)
    spec_error("num_microbatches (microbatches) is " + m +
               ", not a multiple of num_ranks (pipeline_parallel_degree) " + p +
               "; interleaved_virtual needs microbatches % pipeline_parallel_degree == 0");
}

int active_microbatches(const ScheduleSpec& spec) {
  return spec.active_microbatches == 0 ? spec.num_ranks + 2 : spec.active_microbatches;
}

}  // namespace

// --- Generators ----------------------------------------------------------------------------------

namespace {

using ActionList = std::vector<Action>;
using RankLists = std::vector<ActionList>;

// The three phases every schedule here is made of. forwards[k] and backwards[k] are the rank's
// k-th forward and k-th backward; `warmup` is how many forwards run before the first backward.
ActionList in_phases(const ActionList& forwards, const ActionList& backwards, int warmup) {
  const int num_forwards = static_cast<int>(forwards.size());
  const int num_backwards = static_cast<int>(backwards.size());
  ActionList out;
  // Warmup: forwards only, filling the pipeline.
  for (int k = 0; k < warmup; ++k) out.push_back(forwards[k]);
  // Steady state: one forward, then the oldest pending backward.
  for (int k = 0; k < num_forwards - warmup; ++k) {
    out.push_back(forwards[warmup + k]);
    out.push_back(backwards[k]);
  }
  // Cooldown: the remaining backwards, draining the pipeline.
  for (int k = std::max(0, num_forwards - warmup); k < num_backwards; ++k)
    out.push_back(backwards[k]);
  return out;
}

// One stage's forwards (or backwards) for microbatches 0 .. m - 1.
ActionList in_microbatch_order(ActionKind kind, int stage, int num_microbatches) {
  ActionList out;
  for (int mb = 0; mb < num_microbatches; ++mb) out.push_back(compute(kind, stage, mb));
  return out;
}

// GPipe ("simple"): warmup is every forward, so there is no steady state; the cooldown runs the
// backwards first-in first-out, as the last stage can start microbatch 0's backward first. The
// memory is the same in either order: each backward frees one microbatch.
RankLists generate_simple(const ScheduleSpec& spec) {
  RankLists out;
  const int m = spec.num_microbatches;
  for (int rank = 0; rank < spec.num_ranks; ++rank) {
    out.push_back(in_phases(in_microbatch_order(ActionKind::kForward, rank, m),
                            in_microbatch_order(ActionKind::kBackward, rank, m), m));
  }
  return out;
}

// 1F1B (SMP's "interleaved"): rank r runs p - r - 1 forwards ahead (fewer when m or the
// active_microbatches cap is smaller), then alternates, so at most min(p - r, m, active)
// microbatches are in flight on it.
RankLists generate_one_f_one_b(const ScheduleSpec& spec) {
  RankLists out;
  const int p = spec.num_ranks;
  const int m = spec.num_microbatches;
  for (int rank = 0; rank < p; ++rank) {
    const int warmup = std::min({p - rank - 1, m, active_microbatches(spec) - 1});
    out.push_back(in_phases(in_microbatch_order(ActionKind::kForward, rank, m),
                            in_microbatch_order(ActionKind::kBackward, rank, m), warmup));
  }
  return out;
}

// Megatron's interleaved 1F1B with v chunks. The forward order, the same on every rank:
// microbatches go in groups of p, and each group runs through chunk 0, then chunk 1, ...
// (p = 2, m = 4, v = 2: (0,c0) (1,c0) (0,c1) (1,c1) (2,c0) (3,c0) (2,c1) (3,c1)). The k-th
// backward takes the k-th entry with its chunk mirrored (v - 1 - c): deepest chunk first.
// Warmup: (v - 1) * p forwards to reach the last chunk, plus 2 per rank downstream.
RankLists generate_interleaved_virtual(const ScheduleSpec& spec) {
  const int p = spec.num_ranks;
  const int m = spec.num_microbatches;
  const int v = spec.chunks_per_rank;
  std::vector<std::pair<int, int>> order;  // (microbatch, chunk), m % p == 0 (checked)
  for (int group = 0; group < m; group += p)
    for (int chunk = 0; chunk < v; ++chunk)
      for (int mb = group; mb < group + p; ++mb) order.emplace_back(mb, chunk);

  RankLists out;
  for (int rank = 0; rank < p; ++rank) {
    ActionList forwards, backwards;
    for (const auto& [mb, chunk] : order) {
      forwards.push_back(compute(ActionKind::kForward, chunk * p + rank, mb));
      backwards.push_back(compute(ActionKind::kBackward, (v - 1 - chunk) * p + rank, mb));
    }
    const int warmup = std::min((p - rank - 1) * 2 + (v - 1) * p, m * v);
    out.push_back(in_phases(forwards, backwards, warmup));
  }
  return out;
}

// Zero bubble, ZB-H1 (Qi et al., 2023): backwards split into the input half, which the
// previous stage waits for, and the weight half, which waits for nothing and fills the time a
// rank would idle. Built by running all ranks together in unit time steps (forward, input half
// and weight half one step each): a rank runs its next forward or input half in 1F1B order
// when its inputs are there, else its oldest pending weight half, else idles; a forward waits
// while min(p, m) microbatches are in flight on the rank (forward done, weight half not), the
// most 1F1B holds on its first rank. With m >= p the makespan is 3m + p - 1 steps: the bubble
// is (p - 1) / (3m + p - 1), a third of 1F1B's (p - 1) / (m + p - 1) in the same units.
RankLists generate_zero_bubble(const ScheduleSpec& spec) {
  const int p = spec.num_ranks;
  const int m = spec.num_microbatches;
  const int cap = std::min(p, m);
  struct RankState {
    ActionList ordered;  // forwards and input halves, in 1F1B order
    size_t next = 0;
    std::deque<int> weights;  // microbatches whose weight half is pending
    int in_flight = 0;
  };
  std::vector<RankState> ranks(p);
  for (int r = 0; r < p; ++r) {
    const int warmup = std::min(p - r - 1, m);
    ranks[r].ordered = in_phases(in_microbatch_order(ActionKind::kForward, r, m),
                                 in_microbatch_order(ActionKind::kBackwardInput, r, m), warmup);
  }
  // Step at which each (kind, stage, microbatch) finished; absent: not yet.
  std::map<std::tuple<ActionKind, int, int>, int> finished;
  auto done_by = [&](ActionKind kind, int stage, int mb, int t) {
    auto it = finished.find({kind, stage, mb});
    return it != finished.end() && it->second <= t;
  };
  RankLists out(p);
  int remaining = 3 * m * p;
  for (int t = 0; remaining > 0; ++t) {
    SMP_CHECK(t <= 3 * m * p + p);  // every step someone runs something
    for (int r = 0; r < p; ++r) {
      RankState& rank = ranks[r];
      std::optional<Action> run;
      if (rank.next < rank.ordered.size()) {
        const Action& a = rank.ordered[rank.next];
        const bool ready =
            a.kind == ActionKind::kForward
                ? (r == 0 || done_by(ActionKind::kForward, r - 1, a.microbatch, t)) &&
                      rank.in_flight < cap
                : done_by(ActionKind::kForward, r, a.microbatch, t) &&
                      (r == p - 1 || done_by(ActionKind::kBackwardInput, r + 1, a.microbatch, t));
        if (ready) {
          run = a;
          ++rank.next;
        }
      }
      if (!run && !rank.weights.empty()) {
        run = compute(ActionKind::kBackwardWeight, r, rank.weights.front());
        rank.weights.pop_front();
      }
      if (!run) continue;
      finished[{run->kind, r, run->microbatch}] = t + 1;
      out[r].push_back(*run);
      --remaining;
      if (run->kind == ActionKind::kForward) ++rank.in_flight;
      if (run->kind == ActionKind::kBackwardInput) rank.weights.push_back(run->microbatch);
      if (run->kind == ActionKind::kBackwardWeight) --rank.in_flight;
    }
  }
  return out;
}

// Evaluation: forwards only, microbatch order; the warmup is the whole list.
// Each microbatch through the rank's stages in order (with v chunks: stages r, p + r, ...).
RankLists generate_forward_only(const ScheduleSpec& spec) {
  RankLists out;
  for (int rank = 0; rank < spec.num_ranks; ++rank) {
    ActionList list;
    for (int mb = 0; mb < spec.num_microbatches; ++mb) {
      for (int c = 0; c < spec.chunks_per_rank; ++c) {
        list.push_back(compute(ActionKind::kForward, c * spec.num_ranks + rank, mb));
      }
    }
    out.push_back(list);
  }
  return out;
}

// Inserts the receives and sends around one rank's compute actions. Only stage boundaries that
// cross ranks communicate; with p = 1 every stage is local and nothing is added.
ActionList add_communication(const Schedule& schedule, int rank, const ActionList& computes) {
  const int last = schedule.num_stages - 1;
  // The rank on the other side of the boundary with `stage`, or -1 when it is this rank.
  auto remote = [&](int stage) {
    if (stage < 0 || stage > last) return -1;
    const int other = schedule.rank_of_stage(stage);
    return other == rank ? -1 : other;
  };
  ActionList out;
  for (const Action& a : computes) {
    const int prev = remote(a.stage - 1), next = remote(a.stage + 1);
    if (a.kind == ActionKind::kForward) {
      if (prev >= 0) out.push_back({ActionKind::kRecvActivation, a.stage, a.microbatch, prev});
      out.push_back(a);
      if (next >= 0) out.push_back({ActionKind::kSendActivation, a.stage, a.microbatch, next});
    } else if (makes_input_grad(a.kind)) {
      if (next >= 0) out.push_back({ActionKind::kRecvGrad, a.stage, a.microbatch, next});
      out.push_back(a);
      if (prev >= 0) out.push_back({ActionKind::kSendGrad, a.stage, a.microbatch, prev});
    } else {
      out.push_back(a);  // a weight backward needs nothing from other ranks
    }
  }
  return out;
}

}  // namespace

Schedule make_schedule(const ScheduleSpec& spec) {
  check_spec(spec);
  Schedule schedule;
  schedule.spec = spec;
  schedule.num_stages = spec.num_ranks * spec.chunks_per_rank;
  RankLists computes;
  switch (spec.kind) {
    case ScheduleKind::kSimple: computes = generate_simple(spec); break;
    case ScheduleKind::kOneFOneB: computes = generate_one_f_one_b(spec); break;
    case ScheduleKind::kInterleavedVirtual: computes = generate_interleaved_virtual(spec); break;
    case ScheduleKind::kForwardOnly: computes = generate_forward_only(spec); break;
    case ScheduleKind::kZeroBubble: computes = generate_zero_bubble(spec); break;
  }
  SMP_CHECK_EQ(static_cast<int>(computes.size()), spec.num_ranks);
  for (int rank = 0; rank < spec.num_ranks; ++rank)
    schedule.per_rank.push_back(add_communication(schedule, rank, computes[rank]));
  return schedule;
}

// --- Structural checks ---------------------------------------------------------------------------

namespace {

using Key = std::tuple<ActionKind, int, int>;  // (kind, stage, microbatch)
Key key_of(const Action& a) { return {a.kind, a.stage, a.microbatch}; }

std::string where(int rank, int index, const Action& a) {
  return "rank " + std::to_string(rank) + " action " + std::to_string(index) + " (" +
         to_string(a) + ")";
}

// The rank a send goes to or a receive comes from, or -1 when that boundary does not exist.
int expected_peer(const Schedule& schedule, const Action& a) {
  const int other = (a.kind == ActionKind::kSendActivation || a.kind == ActionKind::kRecvGrad)
                        ? a.stage + 1
                        : a.stage - 1;
  if (other < 0 || other >= schedule.num_stages) return -1;
  return schedule.rank_of_stage(other);
}

// Each action on its own: indices in range, on the rank that holds its stage, the right peer.
std::string check_actions(const Schedule& schedule) {
  const int m = schedule.spec.num_microbatches;
  for (int rank = 0; rank < static_cast<int>(schedule.per_rank.size()); ++rank) {
    const ActionList& list = schedule.per_rank[rank];
    for (int i = 0; i < static_cast<int>(list.size()); ++i) {
      const Action& a = list[i];
      if (a.stage < 0 || a.stage >= schedule.num_stages)
        return where(rank, i, a) + ": stage out of range 0.." +
               std::to_string(schedule.num_stages - 1);
      if (a.microbatch < 0 || a.microbatch >= m)
        return where(rank, i, a) + ": microbatch out of range 0.." + std::to_string(m - 1);
      if (schedule.rank_of_stage(a.stage) != rank)
        return where(rank, i, a) + ": stage " + std::to_string(a.stage) + " lives on rank " +
               std::to_string(schedule.rank_of_stage(a.stage));
      const int peer = is_compute(a.kind) ? -1 : expected_peer(schedule, a);
      if (!is_compute(a.kind) && (peer < 0 || peer == rank))
        return where(rank, i, a) + ": no neighbouring stage on another rank to talk to";
      if (a.peer != peer)
        return where(rank, i, a) + ": peer should be " + std::to_string(peer);
    }
  }
  return "";
}

// Positions of each (kind, stage, microbatch) in each rank's list.
using Positions = std::vector<std::map<Key, std::vector<int>>>;

Positions positions_of(const Schedule& schedule) {
  Positions out(schedule.per_rank.size());
  for (size_t rank = 0; rank < schedule.per_rank.size(); ++rank)
    for (size_t i = 0; i < schedule.per_rank[rank].size(); ++i)
      out[rank][key_of(schedule.per_rank[rank][i])].push_back(static_cast<int>(i));
  return out;
}

const std::vector<int>& find(const Positions& at, int rank, ActionKind kind, int stage, int mb) {
  static const std::vector<int> kNone;
  auto it = at[rank].find(Key{kind, stage, mb});
  return it == at[rank].end() ? kNone : it->second;
}

std::string pair_name(int stage, int mb) {
  return "stage " + std::to_string(stage) + " microbatch " + std::to_string(mb);
}

// One forward and one backward (or input + weight backward) per (stage, microbatch), in order.
std::string check_compute(const Schedule& schedule, const Positions& at) {
  const bool forward_only = schedule.spec.kind == ScheduleKind::kForwardOnly;
  for (int s = 0; s < schedule.num_stages; ++s) {
    const int r = schedule.rank_of_stage(s);
    for (int mb = 0; mb < schedule.spec.num_microbatches; ++mb) {
      const auto& f = find(at, r, ActionKind::kForward, s, mb);
      const auto& b = find(at, r, ActionKind::kBackward, s, mb);
      const auto& in = find(at, r, ActionKind::kBackwardInput, s, mb);
      const auto& w = find(at, r, ActionKind::kBackwardWeight, s, mb);
      const std::string what = pair_name(s, mb) + " on rank " + std::to_string(r);
      if (f.size() != 1)
        return what + " has " + std::to_string(f.size()) + " forwards; needs exactly 1";
      const size_t backwards = b.size() + in.size() + w.size();
      if (forward_only && backwards > 0) return what + " has a backward in a forward-only schedule";
      if (forward_only) continue;
      const bool full = b.size() == 1 && in.empty() && w.empty();
      const bool split = b.empty() && in.size() == 1 && w.size() == 1;
      if (!full && !split)
        return what + " has " + std::to_string(b.size()) + " full, " + std::to_string(in.size()) +
               " input and " + std::to_string(w.size()) +
               " weight backwards; needs 1 full, or 1 input and 1 weight backward";
      const int first_backward = full ? b[0] : in[0];
      if (first_backward < f[0]) return what + ": backward before its forward";
      if (split && w[0] < in[0]) return what + ": weight backward before input backward";
    }
  }
  return "";
}

// Is exactly one `kind` (stage, mb) on `rank`, before (or after) position `pos`?
bool one_at(const Positions& at, int rank, ActionKind kind, int stage, int mb, int pos,
            bool before) {
  const auto& found = find(at, rank, kind, stage, mb);
  return found.size() == 1 && (before ? found[0] < pos : found[0] > pos);
}

// What a compute action needs around it: a receive before it, a send after it, when its
// neighbouring stage is on another rank.
std::string check_compute_comm(const Schedule& schedule, const Positions& at, int rank, int i) {
  const Action& a = schedule.per_rank[rank][i];
  const int last = schedule.num_stages - 1;
  auto remote = [&](int s) { return s >= 0 && s <= last && schedule.rank_of_stage(s) != rank; };
  const int s = a.stage, mb = a.microbatch;
  const bool fwd = a.kind == ActionKind::kForward;
  if (fwd && remote(s - 1) && !one_at(at, rank, ActionKind::kRecvActivation, s, mb, i, true))
    return where(rank, i, a) + ": needs exactly one activation receive before it";
  if (fwd && remote(s + 1) && !one_at(at, rank, ActionKind::kSendActivation, s, mb, i, false))
    return where(rank, i, a) + ": needs exactly one activation send after it";
  const bool bwd = makes_input_grad(a.kind);
  if (bwd && remote(s + 1) && !one_at(at, rank, ActionKind::kRecvGrad, s, mb, i, true))
    return where(rank, i, a) + ": needs exactly one gradient receive before it";
  if (bwd && remote(s - 1) && !one_at(at, rank, ActionKind::kSendGrad, s, mb, i, false))
    return where(rank, i, a) + ": needs exactly one gradient send after it";
  return "";
}

// The partner of a send or a receive: (kind, stage) of the action on the peer that matches it.
std::pair<ActionKind, int> partner(const Action& a) {
  switch (a.kind) {
    case ActionKind::kSendActivation: return {ActionKind::kRecvActivation, a.stage + 1};
    case ActionKind::kRecvActivation: return {ActionKind::kSendActivation, a.stage - 1};
    case ActionKind::kSendGrad: return {ActionKind::kRecvGrad, a.stage - 1};
    case ActionKind::kRecvGrad: return {ActionKind::kSendGrad, a.stage + 1};
    default: return {a.kind, a.stage};
  }
}

// Sends and receives: each compute has its own, and each send has exactly one matching receive
// on the peer (and the other way round).
std::string check_communication(const Schedule& schedule, const Positions& at) {
  for (int rank = 0; rank < static_cast<int>(schedule.per_rank.size()); ++rank) {
    const ActionList& list = schedule.per_rank[rank];
    for (int i = 0; i < static_cast<int>(list.size()); ++i) {
      const Action& a = list[i];
      if (is_compute(a.kind)) {
        if (auto problem = check_compute_comm(schedule, at, rank, i); !problem.empty())
          return problem;
        continue;
      }
      const auto [kind, stage] = partner(a);
      const size_t matches = find(at, a.peer, kind, stage, a.microbatch).size();
      if (matches != 1)
        return where(rank, i, a) + ": rank " + std::to_string(a.peer) + " has " +
               std::to_string(matches) + " matching " + short_name(kind) +
               std::to_string(a.microbatch) + "." + std::to_string(stage) + "; needs exactly 1";
    }
  }
  return "";
}

}  // namespace

std::string validate(const Schedule& schedule) {
  const ScheduleSpec& spec = schedule.spec;
  if (spec.num_ranks < 1 || spec.chunks_per_rank < 1 || spec.num_microbatches < 1)
    return "spec has fewer than 1 rank, chunk or microbatch";
  if (schedule.num_stages != spec.num_ranks * spec.chunks_per_rank)
    return "num_stages is " + std::to_string(schedule.num_stages) + ", not num_ranks * " +
           "chunks_per_rank = " + std::to_string(spec.num_ranks * spec.chunks_per_rank);
  if (static_cast<int>(schedule.per_rank.size()) != spec.num_ranks)
    return "per_rank has " + std::to_string(schedule.per_rank.size()) + " lists for " +
           std::to_string(spec.num_ranks) + " ranks";
  if (auto problem = check_actions(schedule); !problem.empty()) return problem;
  const Positions at = positions_of(schedule);
  if (auto problem = check_compute(schedule, at); !problem.empty()) return problem;
  return check_communication(schedule, at);
}

// --- Simulation ----------------------------------------------------------------------------------

namespace {

// Runs all ranks' lists together. Each rank has a clock (when it is next free); a rank runs its
// next action as soon as blocker() finds nothing missing. Only sends and receives link ranks, so
// advancing the ranks in any order gives the same times.
class Simulator {
 public:
  Simulator(const Schedule& schedule, const Costs& costs);
  Simulation run();

 private:
  std::string blocker(int rank, const Action& a) const;  // "" when `a` can run now
  std::string compute_blocker(int rank, const Action& a) const;
  bool done(int rank, ActionKind kind, int stage, int mb) const {
    return done_[rank].count(Key{kind, stage, mb}) > 0;
  }
  void execute(int rank, const Action& a);
  double cost(ActionKind kind) const;
  std::string deadlock_report() const;

  using SendKey = std::tuple<ActionKind, int, int, int, int>;  // kind, stage, mb, from, to
  static SendKey matching_send(int rank, const Action& recv) {
    const auto [kind, stage] = partner(recv);
    return {kind, stage, recv.microbatch, recv.peer, rank};
  }

  const Schedule& schedule_;
  const Costs& costs_;
  std::vector<size_t> next_;                       // per rank: index of its next action
  std::vector<double> clock_;                      // per rank: when it is free
  std::vector<std::set<Key>> done_;                // per rank: compute and receives done
  std::map<SendKey, double> in_transit_;           // sent, not yet received: time sent
  std::vector<std::set<std::pair<int, int>>> backward_of_;  // per rank: pairs with a backward
  std::vector<std::set<std::pair<int, int>>> held_;         // per rank: pairs held now
  Simulation result_;
};

Simulator::Simulator(const Schedule& schedule, const Costs& costs)
    : schedule_(schedule), costs_(costs) {
  const size_t p = schedule.per_rank.size();
  next_.assign(p, 0);
  clock_.assign(p, 0.0);
  done_.resize(p);
  backward_of_.resize(p);
  held_.resize(p);
  result_.per_rank.resize(p);
  result_.busy.assign(p, 0.0);
  result_.bubble_fraction.assign(p, 0.0);
  result_.peak_in_flight.assign(p, 0);
  for (size_t r = 0; r < p; ++r)
    for (const Action& a : schedule.per_rank[r])
      if (frees_activations(a.kind)) backward_of_[r].insert({a.stage, a.microbatch});
}

double Simulator::cost(ActionKind kind) const {
  switch (kind) {
    case ActionKind::kForward: return costs_.forward;
    case ActionKind::kBackward: return costs_.backward;
    case ActionKind::kBackwardInput: return costs_.backward_input;
    case ActionKind::kBackwardWeight: return costs_.backward_weight;
    default: return 0.0;
  }
}

std::string Simulator::blocker(int rank, const Action& a) const {
  const int p = static_cast<int>(schedule_.per_rank.size());
  if (a.stage < 0 || a.stage >= schedule_.num_stages || a.microbatch < 0 ||
      a.microbatch >= schedule_.spec.num_microbatches)
    return "stage or microbatch out of range";
  if (schedule_.rank_of_stage(a.stage) != rank)
    return "stage " + std::to_string(a.stage) + " lives on rank " +
           std::to_string(schedule_.rank_of_stage(a.stage));
  if (is_compute(a.kind)) return compute_blocker(rank, a);
  if (a.peer < 0 || a.peer >= p) return "peer out of range";
  const int s = a.stage, mb = a.microbatch;
  if (a.kind == ActionKind::kSendActivation && !done(rank, ActionKind::kForward, s, mb))
    return "sends the output of F" + std::to_string(mb) + "." + std::to_string(s) +
           ", which has not run here";
  if (a.kind == ActionKind::kSendGrad && !done(rank, ActionKind::kBackward, s, mb) &&
      !done(rank, ActionKind::kBackwardInput, s, mb))
    return "sends the input gradient of stage " + std::to_string(s) + " microbatch " +
           std::to_string(mb) + ", whose backward has not run here";
  if (is_recv(a.kind) && !in_transit_.count(matching_send(rank, a))) {
    const auto [kind, stage] = partner(a);
    return "waits for rank " + std::to_string(a.peer) + "'s " +
           to_string(Action{kind, stage, a.microbatch, rank});
  }
  return "";
}

std::string Simulator::compute_blocker(int rank, const Action& a) const {
  const int s = a.stage, mb = a.microbatch, last = schedule_.num_stages - 1;
  auto local = [&](int stage) { return schedule_.rank_of_stage(stage) == rank; };
  auto needs = [&](ActionKind kind, int stage) {
    return "waits for " + to_string(Action{kind, stage, mb, -1}) + " on this rank";
  };
  if (a.kind == ActionKind::kForward) {
    if (s > 0 && local(s - 1) && !done(rank, ActionKind::kForward, s - 1, mb))
      return needs(ActionKind::kForward, s - 1);
    if (s > 0 && !local(s - 1) && !done(rank, ActionKind::kRecvActivation, s, mb))
      return "waits for its input: no RA" + std::to_string(mb) + "." + std::to_string(s) + " done";
    return "";
  }
  if (a.kind == ActionKind::kBackwardWeight)
    return done(rank, ActionKind::kBackwardInput, s, mb) ? ""
                                                         : needs(ActionKind::kBackwardInput, s);
  if (!done(rank, ActionKind::kForward, s, mb)) return needs(ActionKind::kForward, s);
  if (s < last && local(s + 1) && !done(rank, ActionKind::kBackward, s + 1, mb) &&
      !done(rank, ActionKind::kBackwardInput, s + 1, mb))
    return needs(ActionKind::kBackward, s + 1);
  if (s < last && !local(s + 1) && !done(rank, ActionKind::kRecvGrad, s, mb))
    return "waits for its output gradient: no RG" + std::to_string(mb) + "." +
           std::to_string(s) + " done";
  return "";
}

void Simulator::execute(int rank, const Action& a) {
  if (is_send(a.kind)) {
    in_transit_[SendKey{a.kind, a.stage, a.microbatch, rank, a.peer}] = clock_[rank];
    return;
  }
  if (is_recv(a.kind)) {
    auto it = in_transit_.find(matching_send(rank, a));
    clock_[rank] = std::max(clock_[rank], it->second);
    in_transit_.erase(it);
    done_[rank].insert(key_of(a));
    return;
  }
  const double start = clock_[rank];
  clock_[rank] = start + cost(a.kind);
  result_.per_rank[rank].push_back({a, start, clock_[rank]});
  result_.busy[rank] += cost(a.kind);
  done_[rank].insert(key_of(a));
  const std::pair<int, int> pair{a.stage, a.microbatch};
  if (a.kind == ActionKind::kForward && backward_of_[rank].count(pair)) held_[rank].insert(pair);
  if (frees_activations(a.kind)) held_[rank].erase(pair);
  result_.peak_in_flight[rank] =
      std::max(result_.peak_in_flight[rank], static_cast<int>(held_[rank].size()));
}

std::string Simulator::deadlock_report() const {
  std::ostringstream out;
  out << "deadlock:";
  for (size_t r = 0; r < next_.size(); ++r) {
    const auto& list = schedule_.per_rank[r];
    if (next_[r] >= list.size()) continue;
    const Action& a = list[next_[r]];
    out << " rank " << r << " stuck at action " << next_[r] << " of " << list.size() << " ("
        << to_string(a) << "): " << blocker(static_cast<int>(r), a) << ";";
  }
  return out.str();
}

Simulation Simulator::run() {
  const int p = static_cast<int>(schedule_.per_rank.size());
  for (bool progressed = true; progressed;) {
    progressed = false;
    for (int r = 0; r < p; ++r) {
      const auto& list = schedule_.per_rank[r];
      while (next_[r] < list.size() && blocker(r, list[next_[r]]).empty()) {
        execute(r, list[next_[r]++]);
        progressed = true;
      }
    }
  }
  for (int r = 0; r < p; ++r)
    if (next_[r] < schedule_.per_rank[r].size()) result_.deadlocked = true;
  if (result_.deadlocked) result_.deadlock_report = deadlock_report();
  for (int r = 0; r < p; ++r) result_.makespan = std::max(result_.makespan, clock_[r]);
  for (int r = 0; r < p; ++r)
    result_.bubble_fraction[r] =
        result_.makespan > 0 ? 1.0 - result_.busy[r] / result_.makespan : 0.0;
  return result_;
}

}  // namespace

Simulation simulate(const Schedule& schedule, const Costs& costs) {
  return Simulator(schedule, costs).run();
}

// --- Theory --------------------------------------------------------------------------------------

double theoretical_bubble_fraction(const ScheduleSpec& spec) {
  check_spec(spec);
  const double p = spec.num_ranks;
  const double m = spec.num_microbatches;
  const double v = spec.chunks_per_rank;  // 1 for every kind but kInterleavedVirtual
  if (spec.kind == ScheduleKind::kZeroBubble) return (p - 1) / (3 * m + p - 1);
  return (p - 1) / (v * m + p - 1);
}

}  // namespace smp::pipeline
