// Topology: which rank holds which (pp, tp, rdp) coordinate, and who is in each group.
//
// Pure functions of (world size, pipeline degree, tensor degree, placement strategy):
// no processes, no MPI. SMP's identities hold: rdp * tp = dp, pp * tp * rdp = world,
// mp = pp * tp. The placement strategy is a permutation of the letters D, P, T whose
// right-most letter varies fastest over consecutive world ranks; "cluster" is DPT and
// "spread" is TPD (SMP semantics).
#pragma once

#include <string>
#include <vector>

namespace smp {

// SMP's smp.CommGroup.
enum class CommGroup { WORLD, MP_GROUP, DP_GROUP, PP_GROUP, TP_GROUP, RDP_GROUP };

const char* to_string(CommGroup group);
std::vector<CommGroup> all_comm_groups();

// A rank's position in the 3D grid.
struct Coord {
  int pp = 0;   // pipeline stage
  int tp = 0;   // tensor-parallel shard
  int rdp = 0;  // reduced-data-parallel replica
  bool operator==(const Coord& other) const {
    return pp == other.pp && tp == other.tp && rdp == other.rdp;
  }
};

class Topology {
 public:
  // Throws smp::ConfigError when world_size is not pp * tp * rdp for a whole rdp, or the
  // placement is not cluster, spread or a permutation of DPT; the message names the values.
  Topology(int world_size, int pp_degree, int tp_degree, const std::string& placement_strategy);

  int world_size() const { return world_size_; }
  int pp_size() const { return pp_; }
  int tp_size() const { return tp_; }
  int rdp_size() const { return rdp_; }
  int dp_size() const { return tp_ * rdp_; }
  int mp_size() const { return pp_ * tp_; }
  // The normalised placement, always three letters ("DPT" for cluster).
  const std::string& placement() const { return placement_; }

  // All calls below are pure and cheap; a rank outside 0..world_size-1 or a coordinate
  // outside its degree throws smp::ConfigError naming the value and the allowed range.
  Coord coord(int rank) const;
  int rank_of(const Coord& coord) const;

  // The world ranks of `rank`'s group of that kind, ascending. A rank's rank inside a
  // group is its index in this list.
  std::vector<int> group(CommGroup kind, int rank) const;
  // Every group of that kind, each ascending, ordered by their smallest member; together
  // they partition the world.
  std::vector<std::vector<int>> groups(CommGroup kind) const;
  // Index of `rank`'s group in groups(kind).
  int group_index(CommGroup kind, int rank) const;
  // `rank`'s rank inside its group of that kind (its index in group(kind, rank)).
  int rank_in(CommGroup kind, int rank) const;

  // Sharded data parallelism (SMP's sharded_data_parallel_degree s, which must divide
  // rdp_size; s = 1 is a group of the rank alone). `rank`'s sharding group is s consecutive
  // members of its RDP group (together they hold one copy of the parameters, each a slice);
  // its replica group is the members of that RDP group holding the same slice (rdp / s of
  // them). World ranks, ascending; both kinds partition the world.
  std::vector<int> sdp_group(int rank, int sdp_degree) const {
    return sdp_members(rank, sdp_degree, false);
  }
  std::vector<int> sdp_replica_group(int rank, int sdp_degree) const {
    return sdp_members(rank, sdp_degree, true);
  }
  // A number equal for exactly the members of one such group (an MPI_Comm_split colour).
  int sdp_group_color(int rank, int sdp_degree, bool replicas) const;

 private:
  // The members of `rank`'s RDP group with its sdp colour (sharding or replica group).
  std::vector<int> sdp_members(int rank, int sdp_degree, bool replicas) const;
  int size_of(char axis) const;            // the degree of placement letter 'D', 'P' or 'T'
  int group_size(CommGroup kind) const;    // the product of the degrees of its varying axes
  // Mixed-radix index of c's varying (or fixed) axes for `kind`, in placement order.
  int pack(const Coord& c, CommGroup kind, bool varying) const;
  // The inverse: overwrite c's varying (or fixed) axes with the digits of `index`.
  void unpack(int index, CommGroup kind, bool varying, Coord& c) const;

  int world_size_;
  int pp_;
  int tp_;
  int rdp_;
  std::string placement_;
  int stride_pp_ = 0;  // how far apart in world rank two ranks one pp step apart are
  int stride_tp_ = 0;
  int stride_rdp_ = 0;
};

}  // namespace smp
