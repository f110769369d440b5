// Topology tests: properties over every layout of small worlds, SMP's documented examples
// verbatim, and bad input with the messages a user sees. Pure: no processes.
#include "smp/core/topology.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <functional>
#include <iterator>
#include <set>
#include <string>
#include <vector>

#include "smp/core/error.h"

namespace smp {
namespace {

// ---- helpers ------------------------------------------------------------------------------

struct Layout {
  int world;
  int pp;
  int tp;
  std::string placement;
};

std::vector<Layout> all_layouts() {
  const std::vector<std::string> placements = {"cluster", "spread", "DPT", "DTP",
                                               "PDT",     "PTD",    "TDP", "TPD"};
  std::vector<Layout> layouts;
  for (int world : {1, 2, 3, 4, 8, 16}) {
    for (int pp = 1; pp <= world; ++pp) {
      for (int tp = 1; pp * tp <= world; ++tp) {
        if (world % (pp * tp) != 0) continue;
        for (const auto& placement : placements) layouts.push_back({world, pp, tp, placement});
      }
    }
  }
  return layouts;
}

int axis_value(const Coord& c, char axis) { return axis == 'P' ? c.pp : axis == 'T' ? c.tp : c.rdp; }
int axis_size(const Topology& t, char axis) {
  return axis == 'P' ? t.pp_size() : axis == 'T' ? t.tp_size() : t.rdp_size();
}

// The axes each group kind fixes (its members agree on them), as placement letters.
std::string fixed_axes(CommGroup kind) {
  switch (kind) {
    case CommGroup::WORLD: return "";
    case CommGroup::MP_GROUP: return "D";
    case CommGroup::DP_GROUP: return "P";
    case CommGroup::PP_GROUP: return "DT";
    case CommGroup::TP_GROUP: return "DP";
    case CommGroup::RDP_GROUP: return "PT";
  }
  return "?";
}

int expected_group_size(const Topology& t, CommGroup kind) {
  switch (kind) {
    case CommGroup::WORLD: return t.world_size();
    case CommGroup::MP_GROUP: return t.pp_size() * t.tp_size();
    case CommGroup::DP_GROUP: return t.tp_size() * t.rdp_size();
    case CommGroup::PP_GROUP: return t.pp_size();
    case CommGroup::TP_GROUP: return t.tp_size();
    case CommGroup::RDP_GROUP: return t.rdp_size();
  }
  return -1;
}

// Runs fn, expects a ConfigError whose message contains every one of `parts`.
void expect_config_error(const std::function<void()>& fn, const std::vector<std::string>& parts) {
  try {
    fn();
  } catch (const ConfigError& e) {
    const std::string message = e.what();
    for (const auto& part : parts) {
      EXPECT_NE(message.find(part), std::string::npos)
          << "message \"" << message << "\" lacks \"" << part << "\"";
    }
    return;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected smp::ConfigError, got another exception: " << e.what();
    return;
  }
  ADD_FAILURE() << "expected smp::ConfigError, nothing was thrown";
}

Coord make_coord(int pp, int tp, int rdp) {
  Coord c;
  c.pp = pp;
  c.tp = tp;
  c.rdp = rdp;
  return c;
}

// ---- properties over every layout -------------------------------------------------------

class TopologyLayoutTest : public ::testing::TestWithParam<Layout> {
 protected:
  Topology topo() const {
    const Layout& l = GetParam();
    return Topology(l.world, l.pp, l.tp, l.placement);
  }
};

TEST_P(TopologyLayoutTest, SizesSatisfySmpIdentities) {
  const Topology t = topo();
  const int mp = t.mp_size(), dp = t.dp_size(), pp = t.pp_size(), tp = t.tp_size();
  const int rdp = t.rdp_size(), size = t.world_size();
  EXPECT_EQ(size, GetParam().world);
  EXPECT_EQ(pp, GetParam().pp);
  EXPECT_EQ(tp, GetParam().tp);
  EXPECT_EQ(mp * rdp, size);
  EXPECT_EQ(pp * dp, size);
  EXPECT_EQ(pp * tp * rdp, size);
  EXPECT_EQ(rdp * tp, dp);
  EXPECT_EQ(mp, pp * tp);
  EXPECT_EQ(t.placement().size(), 3u);
}

TEST_P(TopologyLayoutTest, CoordAndRankOfAreInverseBijections) {
  const Topology t = topo();
  std::set<std::vector<int>> seen;
  for (int r = 0; r < t.world_size(); ++r) {
    const Coord c = t.coord(r);
    EXPECT_GE(c.pp, 0);
    EXPECT_LT(c.pp, t.pp_size());
    EXPECT_GE(c.tp, 0);
    EXPECT_LT(c.tp, t.tp_size());
    EXPECT_GE(c.rdp, 0);
    EXPECT_LT(c.rdp, t.rdp_size());
    EXPECT_EQ(t.rank_of(c), r);
    seen.insert({c.pp, c.tp, c.rdp});
  }
  EXPECT_EQ(static_cast<int>(seen.size()), t.world_size());
  for (int pp = 0; pp < t.pp_size(); ++pp)
    for (int tp = 0; tp < t.tp_size(); ++tp)
      for (int rdp = 0; rdp < t.rdp_size(); ++rdp) {
        const Coord c = make_coord(pp, tp, rdp);
        EXPECT_EQ(t.coord(t.rank_of(c)), c);
      }
}

TEST_P(TopologyLayoutTest, RightMostLetterVariesFastest) {
  const Topology t = topo();
  const std::string& order = t.placement();
  // Letter i's stride is the product of the degrees of the letters to its right.
  for (int i = 0; i < 3; ++i) {
    int stride = 1;
    for (int j = i + 1; j < 3; ++j) stride *= axis_size(t, order[j]);
    for (int r = 0; r < t.world_size(); ++r) {
      Coord c = t.coord(r);
      const char axis = order[i];
      if (axis_value(c, axis) + 1 == axis_size(t, axis)) continue;
      (axis == 'P' ? c.pp : axis == 'T' ? c.tp : c.rdp) += 1;
      EXPECT_EQ(t.rank_of(c), r + stride) << "axis " << axis << " from rank " << r;
    }
  }
  // Consecutive ranks step the right-most axis unless it wraps.
  const char fastest = order[2];
  for (int r = 0; r + 1 < t.world_size(); ++r) {
    const Coord a = t.coord(r), b = t.coord(r + 1);
    if (axis_value(a, fastest) + 1 < axis_size(t, fastest)) {
      EXPECT_EQ(axis_value(b, fastest), axis_value(a, fastest) + 1);
      for (char other : order) {
        if (other != fastest) {
          EXPECT_EQ(axis_value(a, other), axis_value(b, other));
        }
      }
    } else {
      EXPECT_EQ(axis_value(b, fastest), 0);
    }
  }
}

TEST_P(TopologyLayoutTest, GroupsOfEachKindPartitionTheWorld) {
  const Topology t = topo();
  for (CommGroup kind : all_comm_groups()) {
    SCOPED_TRACE(to_string(kind));
    const auto groups = t.groups(kind);
    const int size = expected_group_size(t, kind);
    EXPECT_EQ(static_cast<int>(groups.size()) * size, t.world_size());
    std::vector<int> count(t.world_size(), 0);
    int previous_first = -1;
    for (const auto& g : groups) {
      ASSERT_EQ(static_cast<int>(g.size()), size);
      EXPECT_TRUE(std::is_sorted(g.begin(), g.end()));
      EXPECT_GT(g.front(), previous_first);  // ordered by smallest member
      previous_first = g.front();
      for (int r : g) {
        ASSERT_GE(r, 0);
        ASSERT_LT(r, t.world_size());
        ++count[r];
      }
    }
    for (int r = 0; r < t.world_size(); ++r) EXPECT_EQ(count[r], 1) << "rank " << r;
  }
}

TEST_P(TopologyLayoutTest, GroupMembersAgreeOnFixedAxesOnly) {
  const Topology t = topo();
  for (CommGroup kind : all_comm_groups()) {
    SCOPED_TRACE(to_string(kind));
    const std::string fixed = fixed_axes(kind);
    for (const auto& g : t.groups(kind)) {
      const Coord first = t.coord(g.front());
      std::set<std::vector<int>> varying_seen;
      for (int r : g) {
        const Coord c = t.coord(r);
        std::vector<int> varying;
        for (char axis : std::string("DPT")) {
          if (fixed.find(axis) != std::string::npos) {
            EXPECT_EQ(axis_value(c, axis), axis_value(first, axis)) << "axis " << axis;
          } else {
            varying.push_back(axis_value(c, axis));
          }
        }
        varying_seen.insert(varying);
      }
      // Members differ on the varying axes, so the group spans all of them.
      EXPECT_EQ(varying_seen.size(), g.size());
    }
  }
}

TEST_P(TopologyLayoutTest, GroupLookupsAgree) {
  const Topology t = topo();
  for (CommGroup kind : all_comm_groups()) {
    SCOPED_TRACE(to_string(kind));
    const auto groups = t.groups(kind);
    for (int r = 0; r < t.world_size(); ++r) {
      const std::vector<int> g = t.group(kind, r);
      const int index = t.group_index(kind, r);
      ASSERT_GE(index, 0);
      ASSERT_LT(index, static_cast<int>(groups.size()));
      EXPECT_EQ(g, groups[index]) << "rank " << r;
      const int rank_in = t.rank_in(kind, r);
      ASSERT_GE(rank_in, 0);
      ASSERT_LT(rank_in, static_cast<int>(g.size()));
      EXPECT_EQ(g[rank_in], r);
    }
  }
  std::vector<int> everyone(t.world_size());
  for (int r = 0; r < t.world_size(); ++r) everyone[r] = r;
  EXPECT_EQ(t.groups(CommGroup::WORLD), std::vector<std::vector<int>>{everyone});
}

// Sharded data parallelism's groups, for every degree dividing rdp: the sharding groups are s
// consecutive members of one RDP group, the replica groups take every s-th member; each kind
// partitions the world, a sharding group and a replica group meet in exactly one rank, and
// the colours tell the groups apart.
TEST_P(TopologyLayoutTest, ShardedDataParallelGroups) {
  const Topology t = topo();
  for (int s = 1; s <= t.rdp_size(); ++s) {
    if (t.rdp_size() % s != 0) continue;
    SCOPED_TRACE("sdp " + std::to_string(s));
    std::set<int> colors[2];
    for (int r = 0; r < t.world_size(); ++r) {
      const std::vector<int> rdp = t.group(CommGroup::RDP_GROUP, r);
      const int i = t.rank_in(CommGroup::RDP_GROUP, r);
      const std::vector<int> shard = t.sdp_group(r, s);
      const std::vector<int> replicas = t.sdp_replica_group(r, s);
      ASSERT_EQ(static_cast<int>(shard.size()), s);
      ASSERT_EQ(static_cast<int>(replicas.size()), t.rdp_size() / s);
      EXPECT_EQ(shard, std::vector<int>(rdp.begin() + i / s * s, rdp.begin() + (i / s + 1) * s));
      for (size_t k = 0; k < replicas.size(); ++k) EXPECT_EQ(replicas[k], rdp[i % s + k * s]);
      std::vector<int> both;
      std::set_intersection(shard.begin(), shard.end(), replicas.begin(), replicas.end(),
                            std::back_inserter(both));
      EXPECT_EQ(both, std::vector<int>{r});
      for (int m : shard) EXPECT_EQ(t.sdp_group_color(m, s, false), t.sdp_group_color(r, s, false));
      for (int m : replicas) EXPECT_EQ(t.sdp_group_color(m, s, true), t.sdp_group_color(r, s, true));
      colors[0].insert(t.sdp_group_color(r, s, false));
      colors[1].insert(t.sdp_group_color(r, s, true));
    }
    EXPECT_EQ(static_cast<int>(colors[0].size()), t.world_size() / s);
    EXPECT_EQ(static_cast<int>(colors[1].size()), t.world_size() / (t.rdp_size() / s));
  }
  if (t.rdp_size() > 1) {
    EXPECT_THROW(t.sdp_group(0, t.rdp_size() + 1), ConfigError);
  }
}

std::string layout_name(const ::testing::TestParamInfo<Layout>& info) {
  const Layout& l = info.param;
  return "w" + std::to_string(l.world) + "_pp" + std::to_string(l.pp) + "_tp" +
         std::to_string(l.tp) + "_" + l.placement;
}

INSTANTIATE_TEST_SUITE_P(AllSmallWorlds, TopologyLayoutTest, ::testing::ValuesIn(all_layouts()),
                         layout_name);

// ---- SMP's documented examples ------------------------------------------------------------

using Groups = std::vector<std::vector<int>>;

TEST(TopologyExamples, ClusterWithoutTensorParallel) {
  const Topology t(8, /*pp=*/2, /*tp=*/1, "cluster");
  EXPECT_EQ(t.placement(), "DPT");
  EXPECT_EQ(t.groups(CommGroup::MP_GROUP), (Groups{{0, 1}, {2, 3}, {4, 5}, {6, 7}}));
  EXPECT_EQ(t.groups(CommGroup::DP_GROUP), (Groups{{0, 2, 4, 6}, {1, 3, 5, 7}}));
}

TEST(TopologyExamples, SpreadWithoutTensorParallel) {
  const Topology t(8, /*pp=*/2, /*tp=*/1, "spread");
  EXPECT_EQ(t.placement(), "TPD");
  EXPECT_EQ(t.groups(CommGroup::MP_GROUP), (Groups{{0, 4}, {1, 5}, {2, 6}, {3, 7}}));
  EXPECT_EQ(t.groups(CommGroup::DP_GROUP), (Groups{{0, 1, 2, 3}, {4, 5, 6, 7}}));
}

TEST(TopologyExamples, DptMapsRankBitsToRdpPpTp) {
  const Topology t(8, 2, 2, "DPT");
  for (int r = 0; r < 8; ++r) {
    // (rdp, pp, tp) = (r>>2, (r>>1)&1, r&1)
    EXPECT_EQ(t.coord(r), make_coord(/*pp=*/(r >> 1) & 1, /*tp=*/r & 1, /*rdp=*/r >> 2)) << r;
  }
}

TEST(TopologyExamples, PtdVariesRdpFastestThenTp) {
  const Topology t(8, 2, 2, "PTD");
  EXPECT_EQ(t.coord(1), make_coord(/*pp=*/0, /*tp=*/0, /*rdp=*/1));
  EXPECT_EQ(t.coord(2), make_coord(/*pp=*/0, /*tp=*/1, /*rdp=*/0));
  for (int r = 0; r < 8; ++r) {
    EXPECT_EQ(t.coord(r), make_coord(/*pp=*/r >> 2, /*tp=*/(r >> 1) & 1, /*rdp=*/r & 1)) << r;
  }
}

TEST(TopologyExamples, PlacementNamesNormalise) {
  EXPECT_EQ(Topology(8, 2, 2, "cluster").placement(), "DPT");
  EXPECT_EQ(Topology(8, 2, 2, "spread").placement(), "TPD");
  EXPECT_EQ(Topology(8, 2, 2, "ptd").placement(), "PTD");
  EXPECT_EQ(Topology(8, 2, 2, "tDp").placement(), "TDP");
}

TEST(TopologyExamples, GroupsWithTensorParallel) {
  // 8 ranks, pp = tp = rdp = 2, cluster: rank = 4*rdp + 2*pp + tp.
  const Topology t(8, 2, 2, "cluster");
  EXPECT_EQ(t.groups(CommGroup::TP_GROUP), (Groups{{0, 1}, {2, 3}, {4, 5}, {6, 7}}));
  EXPECT_EQ(t.groups(CommGroup::PP_GROUP), (Groups{{0, 2}, {1, 3}, {4, 6}, {5, 7}}));
  EXPECT_EQ(t.groups(CommGroup::RDP_GROUP), (Groups{{0, 4}, {1, 5}, {2, 6}, {3, 7}}));
  EXPECT_EQ(t.groups(CommGroup::DP_GROUP), (Groups{{0, 1, 4, 5}, {2, 3, 6, 7}}));
  EXPECT_EQ(t.groups(CommGroup::MP_GROUP), (Groups{{0, 1, 2, 3}, {4, 5, 6, 7}}));
  EXPECT_EQ(t.group(CommGroup::DP_GROUP, 6), (std::vector<int>{2, 3, 6, 7}));
  EXPECT_EQ(t.group_index(CommGroup::DP_GROUP, 6), 1);
  EXPECT_EQ(t.rank_in(CommGroup::DP_GROUP, 6), 2);
}

TEST(TopologyNames, CommGroupsUseSmpNames) {
  const std::vector<CommGroup> all = all_comm_groups();
  ASSERT_EQ(all.size(), 6u);
  std::vector<std::string> names;
  for (CommGroup g : all) names.push_back(to_string(g));
  EXPECT_EQ(names, (std::vector<std::string>{"WORLD", "MP_GROUP", "DP_GROUP", "PP_GROUP",
                                             "TP_GROUP", "RDP_GROUP"}));
}

// ---- bad input ----------------------------------------------------------------------------

TEST(TopologyBadInput, DegreesThatDoNotDivideTheWorld) {
  expect_config_error([] { Topology(8, 2, 3, "cluster"); },
                      {"pipeline_parallel_degree (2) * tensor_parallel_degree (3) = 6 does not "
                       "divide the world size (8)"});
  expect_config_error([] { Topology(4, 8, 1, "cluster"); }, {"= 8", "world size (4)"});
  expect_config_error([] { Topology(6, 1, 4, "spread"); }, {"tensor_parallel_degree (4)"});
}

TEST(TopologyBadInput, DegreesAndWorldBelowOne) {
  expect_config_error([] { Topology(8, 0, 1, "cluster"); },
                      {"pipeline_parallel_degree (0)", ">= 1"});
  expect_config_error([] { Topology(8, 1, -2, "cluster"); },
                      {"tensor_parallel_degree (-2)", ">= 1"});
  expect_config_error([] { Topology(0, 1, 1, "cluster"); }, {"world size (0)", ">= 1"});
  expect_config_error([] { Topology(-1, 1, 1, "cluster"); }, {"world size (-1)"});
}

TEST(TopologyBadInput, PlacementStrategies) {
  expect_config_error([] { Topology(8, 2, 2, "DPX"); },
                      {"placement_strategy \"DPX\": allowed \"cluster\", \"spread\" or a "
                       "permutation of D, P, T such as \"DPT\""});
  for (const std::string bad : {"", "DP", "DPTT", "DDT", "clusters", "P T D", "round_robin"}) {
    SCOPED_TRACE(bad);
    expect_config_error([&] { Topology(8, 2, 2, bad); },
                        {"placement_strategy \"" + bad + "\"", "permutation of D, P, T"});
  }
}

TEST(TopologyBadInput, RanksOutOfRange) {
  const Topology t(8, 2, 2, "cluster");
  expect_config_error([&] { t.coord(8); }, {"rank (8)", "allowed 0..7"});
  expect_config_error([&] { t.coord(-1); }, {"rank (-1)", "allowed 0..7"});
  expect_config_error([&] { t.group(CommGroup::TP_GROUP, 9); }, {"rank (9)"});
  expect_config_error([&] { t.group_index(CommGroup::DP_GROUP, -3); }, {"rank (-3)"});
  expect_config_error([&] { t.rank_in(CommGroup::MP_GROUP, 100); }, {"rank (100)"});
}

TEST(TopologyBadInput, CoordsOutOfRange) {
  const Topology t(12, 2, 3, "cluster");  // rdp = 2
  expect_config_error([&] { t.rank_of(make_coord(2, 0, 0)); }, {"coord pp (2)", "allowed 0..1"});
  expect_config_error([&] { t.rank_of(make_coord(0, 3, 0)); }, {"coord tp (3)", "allowed 0..2"});
  expect_config_error([&] { t.rank_of(make_coord(0, 0, -1)); },
                      {"coord rdp (-1)", "allowed 0..1"});
}

}  // namespace
}  // namespace smp
