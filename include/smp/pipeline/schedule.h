// Schedules as data: for each pipeline rank, the ordered list of actions it runs in one step.
//
// Pure: no processes, no tensors. A generator turns (pp, microbatches, schedule kind, chunks
// per rank) into a Schedule; the executor (executor.h) runs one rank's list as written; the
// simulator runs all ranks' lists together with unit costs to prove the schedule is free of
// deadlock and to measure its bubble and its peak of in-flight activations.
//
// Stages. With p ranks and v chunks per rank there are p * v stages; stage s = c * p + r lives
// on rank r as its chunk c (Megatron's interleaved placement: the model's layers go round the
// ranks v times). With v = 1, stage = rank.
#pragma once

#include <string>
#include <vector>

namespace smp::pipeline {

enum class ActionKind {
  kForward,         // run stage `stage` on microbatch `microbatch`
  kBackward,        // full backward of that stage: input and weight gradients together
  kBackwardInput,   // input gradient only (zero-bubble split: the part the previous stage waits on)
  kBackwardWeight,  // weight gradient only (may run later, to fill bubbles)
  kSendActivation,  // send the forward output of (stage, microbatch) to the next stage's rank
  kRecvActivation,  // receive the forward input of (stage, microbatch) from the previous stage
  kSendGrad,        // send the input gradient of (stage, microbatch) to the previous stage
  kRecvGrad,        // receive the output gradient of (stage, microbatch) from the next stage
};
const char* to_string(ActionKind kind);

struct Action {
  ActionKind kind;
  int stage;       // global stage index, 0 .. num_stages - 1
  int microbatch;  // 0 .. num_microbatches - 1
  // For sends and receives: the rank on the other side. -1 for compute actions.
  int peer = -1;
  bool operator==(const Action& other) const {
    return kind == other.kind && stage == other.stage && microbatch == other.microbatch &&
           peer == other.peer;
  }
};
// "F3.1" = forward of microbatch 3 on stage 1; "B", "I", "W" = full, input and weight backward;
// sends and receives name their peer: "SA3.1>2" sends that forward output to rank 2, "RA3.2<1"
// receives stage 2's input from rank 1, likewise "SG" / "RG" for gradients.
std::string to_string(const Action& action);

// SMP's names: "simple" (GPipe: all forwards, then all backwards) and "interleaved" (1F1B:
// backward first whenever possible). kInterleavedVirtual is Megatron's interleaved 1F1B with
// v > 1 chunks per rank. kForwardOnly runs forwards only (SMP's "_only_forward", evaluation).
// kZeroBubble is ZB-H1 (an smp extension, "zero_bubble"): split backwards, weight halves
// filling the bubbles, 1F1B's peak memory.
enum class ScheduleKind { kSimple, kOneFOneB, kInterleavedVirtual, kForwardOnly, kZeroBubble };
const char* to_string(ScheduleKind kind);

struct ScheduleSpec {
  ScheduleKind kind = ScheduleKind::kOneFOneB;
  int num_ranks = 1;            // pipeline_parallel_degree
  int num_microbatches = 1;
  int chunks_per_rank = 1;      // v; > 1 only for kInterleavedVirtual
  int active_microbatches = 0;  // 1F1B: cap on microbatches in flight per rank; 0 = p + 2 (SMP).
                                // The other kinds ignore it (GPipe holds all m by definition).
};

struct Schedule {
  ScheduleSpec spec;
  int num_stages = 1;                         // num_ranks * chunks_per_rank
  std::vector<std::vector<Action>> per_rank;  // per_rank[r]: rank r's actions, in order

  int rank_of_stage(int stage) const { return stage % spec.num_ranks; }
  int chunk_of_stage(int stage) const { return stage / spec.num_ranks; }
};

// Builds the schedule, with the sends and receives in place. Throws smp::ConfigError naming
// the field and value when the spec is impossible (ranks, microbatches or chunks < 1,
// chunks_per_rank > 1 without kInterleavedVirtual, microbatches not a multiple of ranks for
// kInterleavedVirtual, active_microbatches < 0).
//
// Orders, per rank (k-th forward / backward of the rank; backwards first-in first-out):
//   kSimple: all forwards for microbatch 0..m-1, then all backwards for 0..m-1.
//   kOneFOneB: min(p - r - 1, m, active - 1) warmup forwards, then one forward and one
//     backward at a time, then the remaining backwards.
//   kInterleavedVirtual: Megatron's order: forwards of microbatches in groups of p, each group
//     through chunk 0, 1, ..., v - 1; backwards in the same order with chunks mirrored;
//     warmup (p - r - 1) * 2 + (v - 1) * p forwards (at most m * v), then 1F1B as above.
//   kForwardOnly: forwards for microbatch 0..m-1.
//   kZeroBubble: forwards and input halves in 1F1B order, weight halves where the rank would
//     wait (see generate_zero_bubble); needs m >= p.
// A receive sits right before the compute that consumes it, a send right after the compute
// that produces it; stages on the same rank (p = 1) exchange nothing.
Schedule make_schedule(const ScheduleSpec& spec);

// --- Simulation (pure) ------------------------------------------------------------------------
struct Costs {
  double forward = 1.0;          // per stage, per microbatch
  double backward = 2.0;         // full backward (= backward_input + backward_weight)
  double backward_input = 1.0;
  double backward_weight = 1.0;
  // Sends and receives take no time; a receive waits until the matching send happened.
};

struct SimulatedSpan {
  Action action;
  double start;
  double end;
};

struct Simulation {
  bool deadlocked = false;
  std::string deadlock_report;                  // which ranks wait on what, when deadlocked
  double makespan = 0;                          // end of the last action on any rank
  std::vector<std::vector<SimulatedSpan>> per_rank;  // compute actions only, in order
  std::vector<double> busy;                     // per rank: total compute time
  std::vector<double> bubble_fraction;          // per rank: 1 - busy / makespan
  // Per rank: the most (stage, microbatch) pairs held at once: counted from the start of the
  // forward to the end of its kBackward (or kBackwardWeight). With v chunks a pair holds 1/v
  // of the rank's layers: divide by v for whole-microbatch units. Pairs with no backward on the
  // rank (forward-only) are never held, so forward-only schedules peak at 0.
  std::vector<int> peak_in_flight;
};

// Runs every rank's list together: a rank runs its next action as soon as what it needs is
// there (a receive needs the matching send; a send needs the compute that produced its tensor;
// a compute action needs its receives done and, for a backward, the same microbatch's forward
// on this stage). Sends never block (the executor posts its receives early). Never throws on
// a bad schedule: an action whose needs are never met (a dependency violation, a bad index)
// stalls its rank, and when no rank can advance the result is deadlocked, with a report
// naming each stuck rank, its action and what it waits for.
Simulation simulate(const Schedule& schedule, const Costs& costs = {});

// Checks the schedule's structure without running it: every (stage, microbatch) has exactly
// one forward and one backward (or one input and one weight backward) on the right rank, each
// backward after its forward on that rank, every send has one matching receive on the peer.
// Returns a description of the first problem, or "" when there is none.
std::string validate(const Schedule& schedule);

// The bubble theory says for this spec: (p - 1) / (m + p - 1) for simple and 1F1B with v = 1;
// for interleaved virtual stages (p - 1) / (v * m + p - 1). Forward-only: (p - 1) / (m + p - 1).
// Zero bubble, with forward, input half and weight half of equal cost: (p - 1) / (3m + p - 1).
// Throws smp::ConfigError for the specs make_schedule rejects.
double theoretical_bubble_fraction(const ScheduleSpec& spec);

}  // namespace smp::pipeline
