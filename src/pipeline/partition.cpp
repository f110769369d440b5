// Partitioning: per-layer costs, SMP's optimal contiguous split, manual assignments, and the
// "Partition assignments:" log. Pure: no processes, no tensors.
//
// The automatic split runs two dynamic programs over the allowed stage boundaries (a boundary
// inside the span of a share group is not allowed):
//   1. min-max: the smallest achievable largest stage cost B*.
//   2. balance: among splits whose every stage costs at most B* (plus a relative 1e-10, so that
//      rounding cannot exclude a split that ties mathematically), the one with the smallest sum
//      of squared stage costs, i.e. the most balanced of the optimal splits.
// Tie-break rule: splits whose sums of squares agree within a relative 1e-10 go to the one
// whose last cut is earliest, then the cut before it, and so on, so later stages take the
// extra layers: 8 equal layers on 3 stages split 2 + 3 + 3.
//
// Both programs scan, for each stage end i, the stage starts p = i-1, i-2, ... while summing
// the stage's cost, so a stage's cost is computed the same way in both and is exact for
// equal-cost summands; the scan stops as soon as the stage alone is too expensive. Cost:
// O(n^2 * k) in the worst case, far less on balanced models.
#include "smp/pipeline/partition.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <map>
#include <sstream>

#include "smp/core/error.h"

namespace smp::pipeline {

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kRelTol = 1e-10;

// ---- naming and checks --------------------------------------------------------------------

// "layer 'block3' (index 3)", or "layer 3" when there are no names.
std::string layer_label(const std::vector<LayerCost>& layers, int i) {
  std::ostringstream out;
  if (i < static_cast<int>(layers.size()) && !layers[i].name.empty()) {
    out << "layer '" << layers[i].name << "' (index " << i << ")";
  } else {
    out << "layer " << i;
  }
  return out.str();
}

void check_num_stages(int num_stages) {
  if (num_stages < 1) {
    throw ConfigError("the number of pipeline stages must be at least 1, got " +
                      std::to_string(num_stages));
  }
}

void check_enough_layers(int num_layers, int num_stages) {
  if (num_layers < num_stages) {
    throw ConfigError(std::to_string(num_layers) + " layers cannot fill " +
                      std::to_string(num_stages) +
                      " pipeline stages (pipeline_parallel_degree × chunks)");
  }
}

void check_memory_weight(double memory_weight) {
  if (!(memory_weight >= 0.0 && memory_weight <= 1.0)) {  // also rejects NaN
    std::ostringstream out;
    out << "memory_weight must be in [0, 1], got " << memory_weight;
    throw ConfigError(out.str());
  }
}

void check_layer_costs(const std::vector<LayerCost>& layers) {
  for (int i = 0; i < static_cast<int>(layers.size()); ++i) {
    const LayerCost& layer = layers[i];
    std::ostringstream out;
    if (!(std::isfinite(layer.time_s) && layer.time_s >= 0)) {
      out << layer_label(layers, i) << " has time_s " << layer.time_s
          << "; it must be finite and >= 0";
    } else if (layer.param_bytes < 0 || layer.activation_bytes < 0) {
      out << layer_label(layers, i) << " has param_bytes " << layer.param_bytes
          << " and activation_bytes " << layer.activation_bytes << "; both must be >= 0";
    } else {
      continue;
    }
    throw ConfigError(out.str());
  }
}

// ---- share groups -------------------------------------------------------------------------

// The first and last layer of one share group.
struct ShareSpan {
  int group;
  int first;
  int last;
};

// Every share group's span, in group order.
std::vector<ShareSpan> share_spans(const std::vector<LayerCost>& layers) {
  std::map<int, ShareSpan> spans;
  for (int i = 0; i < static_cast<int>(layers.size()); ++i) {
    const int group = layers[i].share_group;
    if (group < 0) continue;
    auto [it, inserted] = spans.try_emplace(group, ShareSpan{group, i, i});
    if (!inserted) it->second.last = i;
  }
  std::vector<ShareSpan> out;
  for (const auto& [group, span] : spans) out.push_back(span);
  return out;
}

// boundary[i] (0 <= i <= n): may a stage begin at layer i? Always at 0 and n; never strictly
// inside a share group's span.
std::vector<bool> allowed_boundaries(int num_layers, const std::vector<ShareSpan>& spans) {
  std::vector<int> covering(num_layers + 2, 0);  // difference array over cut positions
  for (const ShareSpan& span : spans) {
    covering[span.first + 1] += 1;
    covering[span.last + 1] -= 1;
  }
  std::vector<bool> boundary(num_layers + 1, true);
  int depth = 0;
  for (int c = 1; c < num_layers; ++c) {
    depth += covering[c];
    boundary[c] = depth == 0;
  }
  return boundary;
}

std::string describe_span(const std::vector<LayerCost>& layers, const ShareSpan& span) {
  return layer_label(layers, span.first) + " and " + layer_label(layers, span.last) +
         " share a parameter (share group " + std::to_string(span.group) + ")";
}

void check_enough_cuts(const std::vector<LayerCost>& layers, int num_stages,
                       const std::vector<bool>& boundary, std::vector<ShareSpan> spans) {
  const int n = static_cast<int>(layers.size());
  const int cuts = static_cast<int>(std::count(boundary.begin() + 1, boundary.end() - 1, true));
  if (cuts >= num_stages - 1) return;
  std::ostringstream out;
  out << "share groups leave " << cuts << (cuts == 1 ? " cut point" : " cut points")
      << " between the " << n << " layers, but "
      << num_stages << " pipeline stages need " << num_stages - 1 << ":";
  std::stable_sort(spans.begin(), spans.end(), [](const ShareSpan& a, const ShareSpan& b) {
    return a.last - a.first > b.last - b.first;
  });
  const int shown = std::min<int>(3, static_cast<int>(spans.size()));
  for (int s = 0; s < shown && spans[s].last > spans[s].first; ++s) {
    out << (s == 0 ? " " : "; ") << describe_span(layers, spans[s]);
  }
  throw ConfigError(out.str());
}

// ---- the dynamic program ------------------------------------------------------------------

// best[j][i]: the best value for layers [0, i) split into j stages (kInf: impossible);
// from[j][i]: the layer where the last of those j stages begins.
struct SplitTable {
  std::vector<std::vector<double>> best;
  std::vector<std::vector<int>> from;
};

// Phase 1: minimise the largest stage cost.
struct MinMax {
  double combine(double before, double stage) const { return std::max(before, stage); }
  bool stop(double stage, double best) const { return stage >= best; }
  bool prefer(double candidate, double best) const { return candidate < best; }
};

// Phase 2: minimise the sum of squared stage costs, each stage at most `bound`. A tie (within
// kRelTol) goes to the candidate found later in the scan, which starts the last stage earlier.
struct MinSquares {
  double bound;
  double combine(double before, double stage) const { return before + stage * stage; }
  bool stop(double stage, double) const { return stage > bound; }
  bool prefer(double candidate, double best) const {
    return candidate <= best + kRelTol * best;
  }
};

template <typename Policy>
SplitTable run_split(const std::vector<double>& cost, const std::vector<bool>& boundary,
                     int num_stages, const Policy& policy) {
  const int n = static_cast<int>(cost.size());
  const int k = num_stages;
  SplitTable t{std::vector<std::vector<double>>(k + 1, std::vector<double>(n + 1, kInf)),
               std::vector<std::vector<int>>(k + 1, std::vector<int>(n + 1, -1))};
  t.best[0][0] = 0;
  for (int j = 1; j <= k; ++j) {
    for (int i = j; i <= n - (k - j); ++i) {  // leave a layer for each later stage
      if (!boundary[i]) continue;
      double stage = 0;  // cost of layers [p, i)
      for (int p = i - 1; p >= j - 1; --p) {
        stage += cost[p];
        if (policy.stop(stage, t.best[j][i])) break;
        const double before = t.best[j - 1][p];
        if (!boundary[p] || before == kInf) continue;
        const double candidate = policy.combine(before, stage);
        if (policy.prefer(candidate, t.best[j][i])) {
          t.best[j][i] = candidate;
          t.from[j][i] = p;
        }
      }
    }
  }
  return t;
}

Partition trace_back(const SplitTable& table, int num_layers, int num_stages) {
  Partition partition{std::vector<int>(num_layers, 0), num_stages};
  int end = num_layers;
  for (int j = num_stages; j >= 1; --j) {
    const int begin = table.from[j][end];
    SMP_CHECK(begin >= 0 && begin < end);
    std::fill(partition.stage_of_layer.begin() + begin, partition.stage_of_layer.begin() + end,
              j - 1);
    end = begin;
  }
  SMP_CHECK_EQ(end, 0);
  return partition;
}

// ---- the log ------------------------------------------------------------------------------

std::string format_scaled(double value, const char* const* units, int num_units, double step) {
  int u = 0;
  while (u + 1 < num_units && std::abs(value) >= step) {
    value /= step;
    ++u;
  }
  char buffer[64];
  const char* format = value >= 100 ? "%.0f%s" : value >= 10 ? "%.1f%s" : "%.2f%s";
  std::snprintf(buffer, sizeof(buffer), format, value, units[u]);
  return buffer;
}

std::string format_count(int64_t count) {
  if (count < 1000) return std::to_string(count);
  static const char* const units[] = {"", "K", "M", "B", "T"};
  return format_scaled(static_cast<double>(count), units, 5, 1000.0);
}

std::string format_bytes(int64_t bytes) {
  if (bytes < 1000) return std::to_string(bytes) + " B";
  static const char* const units[] = {" B", " KB", " MB", " GB", " TB"};
  return format_scaled(static_cast<double>(bytes), units, 5, 1000.0);
}

std::string format_ms(double seconds) {
  static const char* const units[] = {" ms"};
  return format_scaled(seconds * 1e3, units, 1, 1000.0);
}

std::string format_share(double part, double total) {
  char buffer[32];
  std::snprintf(buffer, sizeof(buffer), "%.1f%%", total > 0 ? 100.0 * part / total : 0.0);
  return buffer;
}

// "embed, block0, block1" for short stages; "block0, block1, block2, ..., block9 (10 layers)"
std::string layer_names(const std::vector<LayerCost>& layers, int begin, int end) {
  constexpr int kMaxListed = 6;
  std::ostringstream out;
  for (int i = begin; i < end; ++i) {
    const bool elided = end - begin > kMaxListed && i >= begin + 3 && i < end - 2;
    if (elided) {
      if (i == begin + 3) out << ", ...";
      continue;
    }
    out << (i == begin ? "" : ", ") << layers[i].name;
  }
  if (end - begin > kMaxListed) out << " (" << end - begin << " layers)";
  return out.str();
}

std::string layer_range(int begin, int end) {
  if (end <= begin) return "no layers";
  if (end - begin == 1) return "layer " + std::to_string(begin);
  return "layers " + std::to_string(begin) + "-" + std::to_string(end - 1);
}

}  // namespace

// ---- public API ---------------------------------------------------------------------------

int Partition::begin(int stage) const {
  SMP_CHECK(stage >= 0 && stage < num_stages);
  return static_cast<int>(std::lower_bound(stage_of_layer.begin(), stage_of_layer.end(), stage) -
                          stage_of_layer.begin());
}

int Partition::end(int stage) const {
  SMP_CHECK(stage >= 0 && stage < num_stages);
  return static_cast<int>(std::upper_bound(stage_of_layer.begin(), stage_of_layer.end(), stage) -
                          stage_of_layer.begin());
}

std::vector<double> layer_costs(const std::vector<LayerCost>& layers, double memory_weight) {
  check_memory_weight(memory_weight);
  check_layer_costs(layers);
  double total_time = 0;
  double total_bytes = 0;
  for (const LayerCost& layer : layers) {
    total_time += layer.time_s;
    total_bytes += static_cast<double>(layer.param_bytes + layer.activation_bytes);
  }
  std::vector<double> cost;
  cost.reserve(layers.size());
  for (const LayerCost& layer : layers) {
    const double bytes = static_cast<double>(layer.param_bytes + layer.activation_bytes);
    const double memory = total_bytes > 0 ? bytes / total_bytes : 0.0;
    const double time = total_time > 0 ? layer.time_s / total_time : 0.0;
    cost.push_back(memory_weight * memory + (1.0 - memory_weight) * time);
  }
  return cost;
}

Partition auto_partition(const std::vector<LayerCost>& layers, int num_stages,
                         double memory_weight) {
  check_num_stages(num_stages);
  const int n = static_cast<int>(layers.size());
  check_enough_layers(n, num_stages);
  const std::vector<double> cost = layer_costs(layers, memory_weight);
  const std::vector<ShareSpan> spans = share_spans(layers);
  const std::vector<bool> boundary = allowed_boundaries(n, spans);
  check_enough_cuts(layers, num_stages, boundary, spans);

  const double b_star = run_split(cost, boundary, num_stages, MinMax{}).best[num_stages][n];
  SMP_CHECK(b_star < kInf);
  const SplitTable balanced =
      run_split(cost, boundary, num_stages, MinSquares{b_star + kRelTol * b_star});
  return trace_back(balanced, n, num_stages);
}

Partition manual_partition(const std::vector<int>& stage_per_layer, int num_stages,
                           int default_partition, const std::vector<LayerCost>& layers) {
  check_num_stages(num_stages);
  const int n = static_cast<int>(stage_per_layer.size());
  if (!layers.empty() && static_cast<int>(layers.size()) != n) {
    throw ConfigError("manual partition: " + std::to_string(n) + " stage assignments for " +
                      std::to_string(layers.size()) + " layers");
  }
  const std::string allowed = " pipeline stages (0.." + std::to_string(num_stages - 1) + ")";
  Partition partition{std::vector<int>(n, 0), num_stages};
  for (int i = 0; i < n; ++i) {
    int stage = stage_per_layer[i];
    if (stage == -1) {
      stage = default_partition;
      if (stage < 0 || stage >= num_stages) {
        throw ConfigError(layer_label(layers, i) + " has no stage and default_partition " +
                          std::to_string(stage) + " is outside the " +
                          std::to_string(num_stages) + allowed);
      }
    } else if (stage < 0 || stage >= num_stages) {
      throw ConfigError(layer_label(layers, i) + " is assigned to stage " +
                        std::to_string(stage) + ", outside the " + std::to_string(num_stages) +
                        allowed);
    }
    if (i > 0 && stage < partition.stage_of_layer[i - 1]) {
      throw ConfigError(layer_label(layers, i) + " is on stage " + std::to_string(stage) +
                        " after " + layer_label(layers, i - 1) + " on stage " +
                        std::to_string(partition.stage_of_layer[i - 1]) +
                        ": each stage must hold one contiguous run of layers, in stage order");
    }
    partition.stage_of_layer[i] = stage;
  }
  for (int s = 0; s < num_stages; ++s) {
    if (partition.begin(s) == partition.end(s)) {
      throw ConfigError("pipeline stage " + std::to_string(s) + " of " +
                        std::to_string(num_stages) + " holds no layers (" + std::to_string(n) +
                        " layers assigned); every stage needs at least one");
    }
  }
  for (const ShareSpan& span : share_spans(layers)) {
    for (int i = span.first; i <= span.last; ++i) {
      if (layers[i].share_group != span.group) continue;
      const int a = partition.stage_of_layer[span.first];
      const int b = partition.stage_of_layer[i];
      if (a == b) continue;
      throw ConfigError(describe_span(layers, {span.group, span.first, i}) +
                        " but are on stages " + std::to_string(a) + " and " +
                        std::to_string(b) + "; layers sharing a parameter need one stage");
    }
  }
  return partition;
}

std::string describe(const Partition& partition, const std::vector<LayerCost>& layers) {
  const bool have_costs = !layers.empty();
  if (have_costs) SMP_CHECK_EQ(layers.size(), partition.stage_of_layer.size());
  double total_time = 0;
  int64_t total_bytes = 0;
  for (const LayerCost& layer : layers) {
    total_time += layer.time_s;
    total_bytes += layer.param_bytes + layer.activation_bytes;
  }
  std::ostringstream out;
  out << "Partition assignments:\n";
  for (int s = 0; s < partition.num_stages; ++s) {
    const int begin = partition.begin(s);
    const int end = partition.end(s);
    out << "  stage " << s << ": " << layer_range(begin, end);
    if (have_costs) {
      double time = 0;
      int64_t bytes = 0;
      int64_t params = 0;
      for (int i = begin; i < end; ++i) {
        time += layers[i].time_s;
        bytes += layers[i].param_bytes + layers[i].activation_bytes;
        params += layers[i].num_params;
      }
      out << " (" << layer_names(layers, begin, end) << "), " << format_count(params)
          << " params, time " << format_ms(time) << " (" << format_share(time, total_time)
          << "), memory " << format_bytes(bytes) << " ("
          << format_share(static_cast<double>(bytes), static_cast<double>(total_bytes)) << ")";
    }
    out << "\n";
  }
  return out.str();
}

}  // namespace smp::pipeline
