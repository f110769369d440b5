// The cost model (see cost_model.h for what it counts and docs/planner.md for why).
#include "smp/plan/cost_model.h"

#include <algorithm>
#include <cmath>
#include <sstream>
#include <vector>

#include "smp/core/error.h"
#include "smp/pipeline/partition.h"

namespace smp::plan {
namespace {

using pipeline::ScheduleKind;

double bytes_of(Precision p) { return p == Precision::kFp32 ? 4.0 : 2.0; }

// How many members of a group along `letter` share a node, given the placement letters
// (right-most varying fastest) and the degrees: a group's members are `stride` ranks apart.
int members_per_node(const ClusterSpec& c, const Layout& l, char letter, int size) {
  int stride = 1;
  for (auto it = l.placement.rbegin(); it != l.placement.rend() && *it != letter; ++it)
    stride *= *it == 'T' ? l.tp : *it == 'P' ? l.pp : l.dp;
  if (stride >= c.gpus_per_node) return 1;
  return std::max(1, std::min(size, c.gpus_per_node / stride));
}

// Everything one stage does for one microbatch, in seconds, and what it holds.
struct Work {
  double forward = 0;        // compute
  double backward = 0;       // compute: input and weight gradients, recomputation included
  double backward_weight = 0;
  double tp_forward = 0;     // tensor-parallel collectives on the critical path
  double tp_backward = 0;    // (recomputation's forward collectives included)
};

Work operator+(Work a, const Work& b) {
  a.forward += b.forward, a.backward += b.backward, a.backward_weight += b.backward_weight;
  a.tp_forward += b.tp_forward, a.tp_backward += b.tp_backward;
  return a;
}
Work scaled(Work a, double k) {
  a.forward *= k, a.backward *= k, a.backward_weight *= k, a.tp_forward *= k, a.tp_backward *= k;
  return a;
}

struct Context {
  const ModelSpec& m;
  const ClusterSpec& c;
  const Software& sw;
  const Workload& w;
  const Layout& l;
  double peak_flops;     // FLOP/s of one device for this precision
  double act_bytes;      // bytes per activation element
  int tp_per_node;

  double gemm(double rows, double inner, double cols, double count = 1) const {
    const double flops = 2 * rows * inner * cols * count;
    return flops / (peak_flops * c.efficiency(std::min({rows, inner, cols})));
  }
  double stream(double bytes) const { return bytes / (c.memory_bandwidth_gb_s * 1e9); }
};

// One transformer block, one microbatch.
Work block_work(const Context& x) {
  const double b = x.l.microbatch_size, s = static_cast<double>(x.w.seq);
  const double h = static_cast<double>(x.m.hidden), f = static_cast<double>(x.m.ffn);
  const double t = x.l.tp, e = x.act_bytes, tokens = b * s;
  const double heads = static_cast<double>(x.m.heads) / t, d = static_cast<double>(x.m.head_dim());
  const double qkv = x.gemm(tokens, h, static_cast<double>(x.m.hidden + 2 * x.m.kv_dim()) / t);
  const double proj = x.gemm(tokens, h / t, h);
  const double mlp = x.gemm(tokens, h, f / t, x.m.gated_mlp ? 2 : 1) + x.gemm(tokens, f / t, h);
  double attention = 0;
  if (x.sw.flash_attention) {
    attention = 4 * b * heads * s * s * d / (x.peak_flops * x.c.attention_efficiency);
  } else {
    const double softmax_bw = x.c.softmax_bandwidth_gb_s > 0 ? x.c.softmax_bandwidth_gb_s
                                                               : x.c.memory_bandwidth_gb_s;
    const double score_bytes = b * heads * s * s * e * (x.sw.dropout ? 6 : 3);
    attention = x.gemm(s, d, s, 2 * b * heads) + score_bytes / (softmax_bw * 1e9);
  }
  // Norms, residual adds (and dropouts) over h, the activation over f: bytes read + written.
  const double h_part = x.sw.sequence_parallel ? h / t : h;
  const double elementwise =
      x.stream(e * tokens * (h_part * (x.sw.dropout ? 16 : 10) + f / t * (x.m.gated_mlp ? 4 : 2)));
  const double gemms = qkv + proj + mlp;
  Work w;
  w.forward = gemms + attention + elementwise;
  w.backward = 2 * gemms + 2 * attention + 2 * elementwise;
  w.backward_weight = gemms;
  if (x.l.tp > 1) {  // two all-reduces (or all-gather + reduce-scatter pairs) each way
    const double one = all_reduce_s(x.c, tokens * h * e, x.l.tp, x.tp_per_node);
    w.tp_forward = 2 * one, w.tp_backward = 2 * one;
    if (x.l.recompute == Recompute::kFull) w.tp_backward += 2 * one;
  }
  if (x.l.recompute == Recompute::kFull) w.backward += w.forward;
  if (x.l.recompute == Recompute::kSelective) w.backward += attention;
  return w;
}

// The head (and loss) on the last stage, one microbatch.
Work head_work(const Context& x) {
  const double tokens = x.l.microbatch_size * static_cast<double>(x.w.seq);
  const double h = static_cast<double>(x.m.hidden), v = static_cast<double>(x.m.vocab) / x.l.tp;
  const double gemm = x.gemm(tokens, h, v);
  const double loss = x.stream(tokens * v * (x.act_bytes + 4) * 2);  // logits, softmax, grad
  Work w;
  w.forward = gemm + loss;
  w.backward = 2 * gemm + loss;
  w.backward_weight = gemm;
  return w;
}

// The embedding on the first stage: a gather and, under TP, one all-reduce each way.
Work embedding_work(const Context& x) {
  const double tokens = x.l.microbatch_size * static_cast<double>(x.w.seq);
  const double bytes = tokens * static_cast<double>(x.m.hidden) * x.act_bytes;
  Work w;
  w.forward = x.stream(2 * bytes);
  w.backward = x.stream(2 * bytes);
  if (x.l.tp > 1) w.tp_forward = all_reduce_s(x.c, bytes, x.l.tp, x.tp_per_node);
  return w;
}

double total(const Work& w) { return w.forward + w.backward + w.tp_forward + w.tp_backward; }

// Activation bytes one block keeps for backward, per microbatch (Korthikanti et al. 2022,
// Table 2, with e-byte activations and 1-byte dropout masks).
double block_activation_bytes(const Context& x, bool whole) {
  const double b = x.l.microbatch_size, s = static_cast<double>(x.w.seq);
  const double h = static_cast<double>(x.m.hidden), f = static_cast<double>(x.m.ffn);
  const double t = x.l.tp, e = x.act_bytes, heads = static_cast<double>(x.m.heads);
  const double sp = x.sw.sequence_parallel ? t : 1;  // what sequence parallelism shards
  if (x.l.recompute == Recompute::kFull && !whole) return e * s * b * h / sp;  // the input
  const double kv = static_cast<double>(x.m.kv_dim());
  double per_token = e * (2 * h / sp                 // two norms' inputs
                          + h / sp                   // qkv input
                          + (h + 2 * kv) / t         // q, k, v
                          + h / t                    // projection input
                          + h / sp                   // MLP input
                          + f / t * (x.m.gated_mlp ? 4 : 2));  // MLP inner activations
  if (x.sw.dropout) per_token += 2 * h / sp;  // two masks of one byte... and outputs
  double scores = 0;
  if (!x.sw.flash_attention && (x.l.recompute == Recompute::kNone || whole))
    scores = b * heads / t * s * s * (x.sw.dropout ? 2 * e + 1 : e);  // softmax (dropout)
  return b * s * per_token + scores;
}

pipeline::Simulation simulate_step(const Layout& l, int microbatches, const Work& stage,
                                   double p2p) {
  pipeline::ScheduleSpec spec;
  spec.kind = l.pp == 1 ? ScheduleKind::kOneFOneB : l.schedule;
  spec.num_ranks = l.pp;
  spec.num_microbatches = microbatches;
  spec.chunks_per_rank = l.chunks;
  pipeline::Costs costs;
  costs.forward = stage.forward + stage.tp_forward + p2p;
  costs.backward = stage.backward + stage.tp_backward + p2p;
  costs.backward_weight = stage.backward_weight;
  costs.backward_input = costs.backward - costs.backward_weight;
  return pipeline::simulate(pipeline::make_schedule(spec), costs);
}

std::string check(const ModelSpec& m, const ClusterSpec& c, const Software& sw,
                  const Workload& w, const Layout& l) {
  std::ostringstream why;
  if (l.pp < 1 || l.tp < 1 || l.dp < 1 || l.microbatch_size < 1 || l.chunks < 1)
    return "degrees, microbatch size and chunks must be >= 1";
  if (m.heads % l.tp != 0)
    why << "heads " << m.heads << " do not divide by tp " << l.tp;
  else if (l.tp > c.gpus_per_node)
    why << "tp " << l.tp << " exceeds the " << c.gpus_per_node << " devices of a node";
  else if (m.layers < l.pp * l.chunks)
    why << "layers " << m.layers << " are fewer than pp x chunks " << l.pp * l.chunks;
  else if (w.global_batch % (static_cast<int64_t>(l.dp) * l.microbatch_size) != 0)
    why << "global batch " << w.global_batch << " does not divide by dp x microbatch size "
        << l.dp * l.microbatch_size;
  else if (l.sharding == Sharding::kSdp && (l.sdp < 2 || l.dp % l.sdp != 0))
    why << "sdp " << l.sdp << " must be >= 2 and divide dp " << l.dp;
  else if (l.sharding == Sharding::kSdp && l.pp > 1 && !sw.sdp_with_pipeline)
    why << sw.name << " does not combine sharded data parallelism with pp " << l.pp;
  else if (l.sharding == Sharding::kZero1 && l.dp < 2)
    why << "zero1 needs dp >= 2";
  else if (l.chunks > 1 && l.schedule != ScheduleKind::kInterleavedVirtual)
    why << "chunks " << l.chunks << " need the interleaved virtual-stage schedule";
  else if (l.schedule == ScheduleKind::kZeroBubble && !sw.zero_bubble)
    why << sw.name << " has no zero-bubble schedule";
  else if (l.recompute == Recompute::kSelective && !sw.selective_recompute)
    why << sw.name << " recomputes whole layers only (no selective recomputation)";
  else if (l.offload && !sw.offload)
    why << sw.name << " does not offload activations";
  else if (l.offload && l.recompute != Recompute::kFull)
    why << "offloading moves recomputed layers' inputs: it needs full recomputation";
  else if (l.placement.size() != 3 || l.placement.find('D') == std::string::npos ||
           l.placement.find('P') == std::string::npos || l.placement.find('T') == std::string::npos)
    why << "placement \"" << l.placement << "\" is not a permutation of D, P, T";
  if (!why.str().empty()) return why.str();
  const int64_t m_count = w.global_batch / (static_cast<int64_t>(l.dp) * l.microbatch_size);
  if (l.pp > 1 && l.schedule == ScheduleKind::kInterleavedVirtual && m_count % l.pp != 0)
    why << "interleaving needs microbatches " << m_count << " to divide by pp " << l.pp;
  if (l.pp > 1 && l.schedule == ScheduleKind::kZeroBubble && m_count < l.pp)
    why << "zero bubble needs microbatches " << m_count << " >= pp " << l.pp;
  if (l.pp > 1 && l.schedule == ScheduleKind::kForwardOnly) why << "a forward-only schedule does not train";
  return why.str();
}

}  // namespace

const char* to_string(Precision p) {
  return p == Precision::kFp32 ? "fp32" : p == Precision::kBf16 ? "bf16" : "fp16";
}
const char* to_string(Recompute r) {
  return r == Recompute::kNone ? "none" : r == Recompute::kSelective ? "selective" : "full";
}

Precision precision_from_string(const std::string& text) {
  if (text == "fp32") return Precision::kFp32;
  if (text == "bf16") return Precision::kBf16;
  if (text == "fp16") return Precision::kFp16;
  throw ConfigError("precision \"" + text + "\" is unknown; allowed: fp32, bf16, fp16");
}

Software software_preset(const std::string& name) {
  Software s;
  s.name = name;
  if (name == "smp") return s;
  if (name == "megatron-2021" || name == "megatron-2022" || name == "deepspeed-2021") {
    s.flash_attention = false, s.overlap_dp = false, s.balanced_partition = false;
    s.dropout = true, s.zero_bubble = false, s.sdp_with_pipeline = false;
    s.sequence_parallel = s.selective_recompute = name == "megatron-2022";
    s.sdp_overlap = name == "deepspeed-2021" ? 0.5 : 0;  // fitted to Narayanan 2021 Table 2
    s.sdp_gathers_per_block = name == "deepspeed-2021" ? 6 : 1;
    s.grad_bytes_16bit = 2, s.zero1_reduced_slice = false, s.offload = false;
    return s;
  }
  throw ConfigError("software \"" + name +
                    "\" is unknown; allowed: smp, megatron-2021, megatron-2022, deepspeed-2021");
}

std::string Layout::to_string() const {
  std::ostringstream o;
  o << "pp" << pp << ".tp" << tp << ".dp" << dp;
  if (sharding == Sharding::kSdp) o << ".sdp" << sdp;
  if (sharding == Sharding::kZero1) o << ".zero1";
  o << ".mb" << microbatch_size << ".";
  switch (schedule) {
    case ScheduleKind::kSimple: o << "gpipe"; break;
    case ScheduleKind::kInterleavedVirtual: o << "int" << chunks; break;
    case ScheduleKind::kZeroBubble: o << "zb"; break;
    default: o << "1f1b";
  }
  o << "." << (recompute == Recompute::kNone ? "norc" : recompute == Recompute::kSelective ? "sel" : "full");
  if (offload) o << ".offload";
  o << "." << placement;
  return o.str();
}

Layout parse_layout(const std::string& text) {
  Layout l;
  std::stringstream in(text);
  std::string part;
  const auto number = [&](const std::string& p, size_t prefix) {
    try {
      size_t used = 0;
      const int v = std::stoi(p.substr(prefix), &used);
      if (used + prefix == p.size() && v >= 1) return v;
    } catch (const std::exception&) {
    }
    throw ConfigError("layout \"" + text + "\": part \"" + p + "\" needs a number >= 1");
  };
  while (std::getline(in, part, '.')) {
    if (part.rfind("pp", 0) == 0) l.pp = number(part, 2);
    else if (part.rfind("tp", 0) == 0) l.tp = number(part, 2);
    else if (part.rfind("dp", 0) == 0) l.dp = number(part, 2);
    else if (part.rfind("sdp", 0) == 0) l.sharding = Sharding::kSdp, l.sdp = number(part, 3);
    else if (part == "zero1") l.sharding = Sharding::kZero1;
    else if (part.rfind("mb", 0) == 0) l.microbatch_size = number(part, 2);
    else if (part == "gpipe") l.schedule = ScheduleKind::kSimple;
    else if (part == "1f1b") l.schedule = ScheduleKind::kOneFOneB;
    else if (part == "zb") l.schedule = ScheduleKind::kZeroBubble;
    else if (part.rfind("int", 0) == 0)
      l.schedule = ScheduleKind::kInterleavedVirtual, l.chunks = number(part, 3);
    else if (part == "norc") l.recompute = Recompute::kNone;
    else if (part == "sel") l.recompute = Recompute::kSelective;
    else if (part == "full") l.recompute = Recompute::kFull;
    else if (part == "offload") l.offload = true;
    else if (part.size() == 3 && part.find_first_not_of("DPT") == std::string::npos) l.placement = part;
    else
      throw ConfigError("layout \"" + text + "\": part \"" + part +
                        "\" is unknown; allowed: ppN, tpN, dpN, sdpN, zero1, mbN, gpipe, 1f1b, "
                        "intN, zb, norc, sel, full, offload, a placement such as DPT");
  }
  return l;
}

double all_reduce_s(const ClusterSpec& c, double bytes, int size, int per_node) {
  if (size <= 1 || bytes <= 0) return 0;
  per_node = std::max(1, std::min(per_node, size));
  const int nodes = (size + per_node - 1) / per_node;
  double t = 0;
  if (per_node > 1) {  // reduce-scatter and all-gather within the node
    const double k = per_node;
    t += 2 * (k - 1) / k * bytes / (c.intra_node.bandwidth_gb_s * 1e9) +
         2 * (k - 1) * c.intra_node.latency_us * 1e-6;
  }
  if (nodes > 1) {  // each of the node's members reduces its 1/k across the nodes, in parallel:
    // a ring (bandwidth-optimal, 2(n - 1) latencies) or a pipelined double binary tree (as
    // NCCL picks for many nodes: 2 log2(n) latencies), whichever is faster
    const double n = nodes, share = bytes / per_node / (c.inter_node.bandwidth_gb_s * 1e9);
    const double alpha = c.inter_node.latency_us * 1e-6;
    const double ring = 2 * (n - 1) / n * share + 2 * (n - 1) * alpha;
    const double tree = 2 * share + 2 * std::ceil(std::log2(n)) * alpha;
    t += std::min(ring, tree);
  }
  return t;
}

double all_gather_s(const ClusterSpec& c, double bytes, int size, int per_node) {
  return all_reduce_s(c, bytes, size, per_node) / 2;  // half the ring's traffic and steps
}

double flat_all_gather_s(const ClusterSpec& c, double bytes, int size, int per_node) {
  if (size <= 1 || bytes <= 0) return 0;
  const Link& link = per_node >= size ? c.intra_node : c.inter_node;
  return (size - 1.0) / size * bytes / (link.bandwidth_gb_s * 1e9) + (size - 1.0) * link.latency_us * 1e-6;
}

Estimate estimate(const ModelSpec& m, const ClusterSpec& c, const Software& sw,
                  const Workload& w, const Layout& l) {
  Estimate est;
  est.why_invalid = check(m, c, sw, w, l);
  if (!est.why_invalid.empty()) return est;
  const double peak = (w.precision == Precision::kFp32 ? c.peak_tflops_fp32 : c.peak_tflops_16bit) * 1e12;
  const int per_node = std::min(l.world(), c.gpus_per_node);
  const Context x{m, c, sw, w, l, peak, bytes_of(w.precision), members_per_node(c, l, 'T', l.tp)};
  // More devices per node than compute slots (ranks oversubscribing a CPU's cores) share them:
  // a step takes at least the node's busy time over its slots; ranks idle in the pipeline's
  // bubble leave their slot to the others.
  const double oversubscribed = static_cast<double>(per_node) / c.slots();
  const int microbatches = static_cast<int>(w.global_batch / (int64_t{l.dp} * l.microbatch_size));
  est.microbatches = microbatches;

  // --- the split: which layers each stage holds (embedding = 0, blocks, head = last) ---
  const Work block = block_work(x), head = head_work(x), embedding = embedding_work(x);
  const int num_stages = l.pp * l.chunks;
  const int units = static_cast<int>(m.layers) + 2;
  std::vector<int> stage_of(units);
  if (sw.balanced_partition && num_stages > 1) {
    std::vector<pipeline::LayerCost> costs(units);
    for (int i = 0; i < units; ++i)
      costs[i].time_s = total(i == 0 ? embedding : i == units - 1 ? head : block);
    stage_of = pipeline::auto_partition(costs, num_stages, 0.0).stage_of_layer;
  } else {  // layers split evenly (the first stages take the remainder), embedding and head outside
    const int base = static_cast<int>(m.layers) / num_stages, extra = static_cast<int>(m.layers) % num_stages;
    int layer = 1;
    for (int s = 0; s < num_stages; ++s)
      for (int k = 0; k < base + (s < extra ? 1 : 0); ++k) stage_of[layer++] = s;
    stage_of[0] = 0, stage_of[units - 1] = num_stages - 1;
  }
  std::vector<Work> stage_work(num_stages);
  std::vector<int> stage_blocks(num_stages, 0);
  for (int i = 0; i < units; ++i) {
    const Work& u = i == 0 ? embedding : i == units - 1 ? head : block;
    stage_work[stage_of[i]] = stage_work[stage_of[i]] + u;
    if (i > 0 && i < units - 1) ++stage_blocks[stage_of[i]];
  }
  const Work slowest = *std::max_element(stage_work.begin(), stage_work.end(),
      [](const Work& a, const Work& b) { return total(a) < total(b); });

  // --- the pipeline: smp's schedule, simulated with the slowest stage's costs ---
  const double tokens = l.microbatch_size * static_cast<double>(w.seq);
  const double activation = tokens * m.hidden * x.act_bytes / (sw.sequence_parallel ? l.tp : 1);
  const int pp_per_node = members_per_node(c, l, 'P', l.pp);
  const Link& pp_link = pp_per_node >= l.pp ? c.intra_node : c.inter_node;
  const double p2p = l.pp > 1 ? pp_link.latency_us * 1e-6 + activation / (pp_link.p2p() * 1e9) : 0;
  const pipeline::Simulation sim = simulate_step(l, microbatches, slowest, p2p);
  est.forward_s = slowest.forward + slowest.tp_forward + p2p;
  est.backward_s = slowest.backward + slowest.tp_backward + p2p;
  est.pipeline_s = sim.makespan;
  if (oversubscribed > 1) {
    double busy = 0;
    for (double b : sim.busy) busy += b;
    est.pipeline_s = std::max(sim.makespan, busy / l.pp * oversubscribed);
  }
  est.bubble = *std::max_element(sim.bubble_fraction.begin(), sim.bubble_fraction.end());
  const double passes = static_cast<double>(microbatches) * l.chunks;  // per rank
  est.tp_comm_s = passes * (slowest.tp_forward + slowest.tp_backward);
  est.pp_comm_s = l.pp > 1 ? 2 * passes * p2p : 0;

  // --- parameters per rank (each rank holds its chunks' stages) ---
  std::vector<double> rank_params(l.pp, 0), rank_blocks(l.pp, 0);
  const double block_params = static_cast<double>(m.block_parameters()) / l.tp;
  const double embed_params = static_cast<double>(m.vocab * m.hidden) / l.tp;
  for (int s = 0; s < num_stages; ++s) {
    rank_params[s % l.pp] += stage_blocks[s] * block_params;
    rank_blocks[s % l.pp] += stage_blocks[s];
  }
  // The embedding (with positions and norms) on the first rank; the head on the last: its own
  // weights, or a tied head's copy when the embedding lives on another rank.
  const double head_params = static_cast<double>(m.vocab * m.hidden) * (m.tied_head ? 1 : 2);
  rank_params[0] += embed_params + (static_cast<double>(m.outer_parameters(w.seq)) - head_params) / l.tp;
  if (!m.tied_head || l.pp > 1) rank_params[(num_stages - 1) % l.pp] += embed_params;
  const double max_params = *std::max_element(rank_params.begin(), rank_params.end());

  // --- data parallelism: gradient reduction, ZeRO-1's gather, sharded DP's traffic ---
  const bool mixed = w.precision != Precision::kFp32;
  const double weight_bytes = x.act_bytes;
  const double grad_bytes = mixed ? sw.grad_bytes_16bit : 4;
  const int dp_per_node = members_per_node(c, l, 'D', l.dp);
  if (l.sharding == Sharding::kSdp) {
    const int sdp_per_node = std::min(dp_per_node, l.sdp);
    // Per microbatch: the weights gathered for forward and again for backward, the gradients
    // reduce-scattered; each pass as sdp_gathers_per_block collectives per block.
    const double pieces = sw.sdp_gathers_per_block * std::max(1.0, *std::max_element(rank_blocks.begin(), rank_blocks.end()));
    const auto gather = [&](double bytes) {
      return pieces * (sw.sdp_hierarchical ? all_gather_s(c, bytes / pieces, l.sdp, sdp_per_node)
                                           : flat_all_gather_s(c, bytes / pieces, l.sdp, sdp_per_node));
    };
    const double per_microbatch = 2 * gather(max_params * weight_bytes) + gather(max_params * grad_bytes);
    est.sdp_comm_s = per_microbatch * microbatches;
    const double compute = est.forward_s + est.backward_s;
    est.sdp_exposed_s = microbatches * std::max(0.0, per_microbatch - sw.sdp_overlap * compute);
    const int replicas = l.dp / l.sdp;
    const int replica_per_node = std::max(1, dp_per_node / l.sdp);
    est.dp_comm_s = all_reduce_s(c, max_params * grad_bytes / l.sdp, replicas, replica_per_node);
  } else {
    est.dp_comm_s = all_reduce_s(c, max_params * grad_bytes, l.dp, dp_per_node);
    if (l.sharding == Sharding::kZero1)  // the updated weights gathered back
      est.dp_comm_s = all_gather_s(c, max_params * grad_bytes, l.dp, dp_per_node) +
                      all_gather_s(c, max_params * weight_bytes, l.dp, dp_per_node);
  }
  est.dp_exposed_s = sw.overlap_dp ? std::max(0.0, est.dp_comm_s - est.backward_s) : est.dp_comm_s;

  // --- the optimizer: AdamW streams weights, gradients, two moments (and fp32 masters) ---
  const double shard = l.sharding == Sharding::kZero1 ? l.dp : l.sharding == Sharding::kSdp ? l.sdp : 1;
  est.optimizer_s = x.stream(max_params / shard * (mixed ? 34.0 : 28.0)) * std::max(1.0, oversubscribed);

  est.step_s = est.pipeline_s + est.dp_exposed_s + est.sdp_exposed_s + est.optimizer_s + c.step_overhead_s;
  const double world = l.world();
  est.tokens_per_s = static_cast<double>(w.global_batch * w.seq) / est.step_s;
  est.mfu = m.model_flops_per_sequence(w.seq) * static_cast<double>(w.global_batch) /
            (est.step_s * world * peak);
  const double s = static_cast<double>(w.seq), h = static_cast<double>(m.hidden);
  const double head_flops = 6 * s * h * static_cast<double>(m.vocab);
  const double block_flops = m.model_flops_per_sequence(w.seq) - head_flops;
  const double recomputed = l.recompute == Recompute::kFull ? block_flops / 3
                          : l.recompute == Recompute::kSelective ? 4 * s * s * h * static_cast<double>(m.layers)
                          : 0;
  est.hardware_tflops_per_device = (block_flops + recomputed + head_flops) *
                                   static_cast<double>(w.global_batch) / (est.step_s * world) / 1e12;

  // --- memory on the rank that holds the most ---
  const double state_bytes_per_param =
      mixed ? weight_bytes + grad_bytes + 4 + 8 : 4 + 4 + 8;  // weights, grads, (master,) moments
  double worst = 0;
  for (int r = 0; r < l.pp; ++r) {
    const double p = rank_params[r];
    double weights = p * weight_bytes, grads = p * grad_bytes, gathered = 0;
    double optim = p * (state_bytes_per_param - weight_bytes - grad_bytes);
    if (l.sharding == Sharding::kZero1) {
      optim /= l.dp;
      if (mixed && sw.zero1_reduced_slice) optim += p * grad_bytes / l.dp;
    }
    if (l.sharding == Sharding::kSdp) {  // own slices, and the layer (two, prefetching) gathered
      weights /= l.sdp, grads /= l.sdp, optim /= l.sdp;
      gathered = block_params / sw.sdp_gathers_per_block *
                 ((sw.sdp_overlap > 0 ? 2 : 1) * weight_bytes + grad_bytes);
    }
    const int held_pairs = sim.peak_in_flight[r];
    const double blocks_per_stage = rank_blocks[r] / l.chunks;
    double held = held_pairs * blocks_per_stage;  // blocks' worth of one microbatch
    if (l.offload) held = std::min(held, 2.0 * blocks_per_stage);
    double activations = held * block_activation_bytes(x, false);
    if (l.recompute == Recompute::kFull) activations += block_activation_bytes(x, true);
    activations *= c.activation_memory_factor;
    const bool last = r == (num_stages - 1) % l.pp;
    const double logits = last ? tokens * static_cast<double>(m.vocab) / l.tp * (x.act_bytes + 4) : 0;
    const double gb = 1e-9;
    const double total_gb =
        (weights + grads + optim + gathered + activations + logits) * gb + c.runtime_overhead_gb;
    if (total_gb > worst) {
      worst = total_gb;
      est.weights_gb = weights * gb, est.grads_gb = grads * gb, est.optimizer_gb = optim * gb;
      est.gathered_gb = gathered * gb;
      est.activations_gb = activations * gb, est.logits_gb = logits * gb;
      est.in_flight = static_cast<int>(std::ceil(static_cast<double>(held_pairs) / l.chunks));
    }
  }
  est.overhead_gb = c.runtime_overhead_gb;
  est.memory_gb = worst;
  est.fits = worst <= c.memory_gb;
  est.valid = true;
  return est;
}

}  // namespace smp::plan
