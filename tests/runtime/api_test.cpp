// SMP's rank helpers, groups and object messaging through smp::init, on 1, 2, 3 and 4 ranks.
#include <gtest/gtest.h>

#include "smp/smp.h"

namespace smp {
namespace {

// pp = 2 where the world is even, and tp = 2 as well on 4 ranks (SMP wants ddp with tp > 1).
Config layout_for(int world) {
  const int pp = world % 2 == 0 ? 2 : 1;
  const int tp = world == 4 ? 2 : 1;
  return Config::from_json_string("{\"pipeline_parallel_degree\": " + std::to_string(pp) +
                                  ", \"tensor_parallel_degree\": " + std::to_string(tp) +
                                  ", \"ddp\": true, \"placement_strategy\": \"spread\"," +
                                  " \"comm_timeout_s\": 30}");
}

void ensure_init() {
  if (!is_initialized()) init(layout_for(comm::world_size()));
}

TEST(Init, ALayoutThatDoesNotFitTheWorldIsAConfigError) {
  ASSERT_FALSE(is_initialized());
  const int world = comm::world_size();
  const Config too_deep = Config::from_json_string(
      "{\"pipeline_parallel_degree\": " + std::to_string(world + 1) + "}");
  try {
    init(too_deep);
    ADD_FAILURE() << "expected ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find(std::to_string(world)), std::string::npos) << e.what();
  }
  EXPECT_FALSE(is_initialized());
}

TEST(Init, RankHelpersAgreeWithTheTopology) {
  ensure_init();
  const Topology& topo = topology();
  const Coord coord = topo.coord(rank());
  EXPECT_EQ(size(), comm::world_size());
  EXPECT_EQ(pp_rank(), coord.pp);
  EXPECT_EQ(tp_rank(), coord.tp);
  EXPECT_EQ(rdp_rank(), coord.rdp);
  EXPECT_EQ(dp_rank(), topo.rank_in(CommGroup::DP_GROUP, rank()));
  EXPECT_EQ(mp_rank(), topo.rank_in(CommGroup::MP_GROUP, rank()));
  EXPECT_EQ(pp_size(), config().pipeline_parallel_degree);
  EXPECT_EQ(tp_size(), config().tensor_parallel_degree);
  EXPECT_EQ(rdp_size() * tp_size(), dp_size());
  EXPECT_EQ(pp_size() * tp_size() * rdp_size(), size());
  EXPECT_EQ(mp_size(), pp_size() * tp_size());
  EXPECT_EQ(get_mp_group(), topo.group(CommGroup::MP_GROUP, rank()));
  EXPECT_EQ(get_dp_group(), topo.group(CommGroup::DP_GROUP, rank()));
  EXPECT_EQ(get_tp_group(), topo.group(CommGroup::TP_GROUP, rank()));
  EXPECT_EQ(get_pp_group(), topo.group(CommGroup::PP_GROUP, rank()));
  EXPECT_EQ(get_rdp_group(), topo.group(CommGroup::RDP_GROUP, rank()));
  // mpirun starts every rank on this one machine.
  EXPECT_EQ(local_size(), size());
  EXPECT_EQ(local_rank(), rank());
}

TEST(Init, InitTwiceIsAnError) {
  ensure_init();
  EXPECT_THROW(init(config()), Error);
}

TEST(Objects, BroadcastReachesEveryOtherMember) {
  ensure_init();
  if (rank() == 0) {
    broadcast("hello from 0", CommGroup::WORLD);
  } else {
    EXPECT_EQ(recv_from(0, RankType::WORLD_RANK), "hello from 0");
  }
}

TEST(Objects, SendAndRecvFromCountInMpAndDpRanks) {
  ensure_init();
  // mp rank 0 sends each other member of its MP group its own greeting.
  if (mp_rank() == 0) {
    for (int r = 1; r < mp_size(); ++r) send("mp " + std::to_string(r), r, RankType::MP_RANK);
  } else {
    EXPECT_EQ(recv_from(0, RankType::MP_RANK), "mp " + std::to_string(mp_rank()));
  }
  if (dp_rank() == dp_size() - 1) {
    for (int r = 0; r + 1 < dp_size(); ++r) send(std::string(r, 'x'), r, RankType::DP_RANK);
  } else {
    EXPECT_EQ(recv_from(dp_size() - 1, RankType::DP_RANK), std::string(dp_rank(), 'x'));
  }
  EXPECT_THROW(recv_from(size(), RankType::WORLD_RANK), CommError);
}

TEST(Objects, AllgatherKeepsEveryLengthInGroupOrder) {
  ensure_init();
  for (CommGroup group : all_comm_groups()) {
    const std::string mine = rank() == 0 ? std::string() : std::string(rank() * 3, 'a' + rank());
    const std::vector<std::string> all = allgather(mine, group);
    const std::vector<int> members = process_group(group).world_ranks();
    ASSERT_EQ(all.size(), members.size()) << to_string(group);
    for (size_t i = 0; i < members.size(); ++i) {
      const int r = members[i];
      EXPECT_EQ(all[i], r == 0 ? std::string() : std::string(r * 3, 'a' + r)) << to_string(group);
    }
  }
}

// A failure on one rank reaches every rank, with the kind of error that rank threw.
TEST(Agree, OnEveryRankRethrowsTheFailingRanksKindEverywhere) {
  ensure_init();
  const int last = size() - 1;
  EXPECT_NO_THROW(on_every_rank("nothing", [] {}));
  try {
    on_every_rank("parsing", [&] {
      if (rank() == last) throw ConfigError("bad key");
    });
    ADD_FAILURE() << "expected ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_EQ(std::string(e.what()), "parsing failed on rank " + std::to_string(last) + ": bad key");
  }
  try {
    on_every_rank("loading", [&] {
      if (rank() == last) throw CheckpointError("corrupt file");
    });
    ADD_FAILURE() << "expected CheckpointError";
  } catch (const CheckpointError& e) {
    EXPECT_NE(std::string(e.what()).find("corrupt file"), std::string::npos) << e.what();
  }
  try {
    on_every_rank("working", [&] {
      if (rank() == last) throw std::runtime_error("disk full");
    });
    ADD_FAILURE() << "expected smp::Error";
  } catch (const ConfigError&) {
    ADD_FAILURE() << "a plain failure became a ConfigError";
  } catch (const CheckpointError&) {
    ADD_FAILURE() << "a plain failure became a CheckpointError";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("disk full"), std::string::npos) << e.what();
  }
  // on_rank0: every rank gets rank 0's result, or its error as a ConfigError.
  EXPECT_EQ(on_rank0("deciding", [] { return std::string("42"); }), "42");
  EXPECT_THROW(on_rank0("deciding", []() -> std::string { throw Error("no"); }), ConfigError);
}

TEST(Objects, BarriersComplete) {
  ensure_init();
  barrier();
  dp_barrier();
  mp_barrier();
  barrier(CommGroup::TP_GROUP);
}

}  // namespace
}  // namespace smp
