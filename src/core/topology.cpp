// Topology: world rank <-> (pp, tp, rdp) coordinate, and the groups built from them.
//
// The placement string names the three axes from slowest (left) to fastest (right) varying
// over consecutive world ranks, so a rank is a mixed-radix number whose digits are the
// coordinates in placement order. Every group fixes some axes and lets the others vary:
//
//   group      varies      fixed        size
//   WORLD      D, P, T     -            world
//   MP_GROUP   P, T        D            pp * tp   (one full model replica)
//   DP_GROUP   D, T        P            tp * rdp  (one pipeline partition)
//   PP_GROUP   P           D, T         pp        (one pipeline)
//   TP_GROUP   T           D, P         tp
//   RDP_GROUP  D           P, T         rdp       (identical pp and tp shards)
//
// Packing the varying digits (in placement order) gives a rank's index inside its group;
// packing the fixed digits gives the group's index. Both orders agree with ascending world
// rank, which is why group() and groups() come out sorted without sorting.
#include "smp/core/topology.h"

#include <algorithm>
#include <cctype>
#include <sstream>

#include "smp/core/error.h"

namespace smp {

const char* to_string(CommGroup group) {
  switch (group) {
    case CommGroup::WORLD: return "WORLD";
    case CommGroup::MP_GROUP: return "MP_GROUP";
    case CommGroup::DP_GROUP: return "DP_GROUP";
    case CommGroup::PP_GROUP: return "PP_GROUP";
    case CommGroup::TP_GROUP: return "TP_GROUP";
    case CommGroup::RDP_GROUP: return "RDP_GROUP";
  }
  return "UNKNOWN_GROUP";
}

std::vector<CommGroup> all_comm_groups() {
  return {CommGroup::WORLD,    CommGroup::MP_GROUP, CommGroup::DP_GROUP,
          CommGroup::PP_GROUP, CommGroup::TP_GROUP, CommGroup::RDP_GROUP};
}

namespace {

// The axes a group of this kind spans (the others are fixed), as placement letters.
std::string varying_axes(CommGroup kind) {
  switch (kind) {
    case CommGroup::WORLD: return "DPT";
    case CommGroup::MP_GROUP: return "PT";
    case CommGroup::DP_GROUP: return "DT";
    case CommGroup::PP_GROUP: return "P";
    case CommGroup::TP_GROUP: return "T";
    case CommGroup::RDP_GROUP: return "D";
  }
  SMP_CHECK(false && "unknown CommGroup");
  return "";
}

bool varies(CommGroup kind, char axis) { return varying_axes(kind).find(axis) != std::string::npos; }

int& digit(Coord& c, char axis) { return axis == 'P' ? c.pp : axis == 'T' ? c.tp : c.rdp; }
int digit(const Coord& c, char axis) { return axis == 'P' ? c.pp : axis == 'T' ? c.tp : c.rdp; }

// "cluster" -> "DPT", "spread" -> "TPD", "ptd" -> "PTD"; anything else is a ConfigError.
std::string normalise_placement(const std::string& strategy) {
  std::string s = strategy;
  for (char& ch : s) ch = static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
  if (s == "CLUSTER") return "DPT";
  if (s == "SPREAD") return "TPD";
  std::string sorted = s;
  std::sort(sorted.begin(), sorted.end());
  if (sorted != "DPT") {
    throw ConfigError("placement_strategy \"" + strategy +
                      "\": allowed \"cluster\", \"spread\" or a permutation of D, P, T such as \"DPT\"");
  }
  return s;
}

void require_at_least_one(const char* name, int value) {
  if (value < 1) {
    throw ConfigError(std::string(name) + " (" + std::to_string(value) + ") must be >= 1");
  }
}

void require_in_range(const char* name, int value, int size) {
  if (value < 0 || value >= size) {
    std::ostringstream out;
    out << name << " (" << value << ") is out of range: allowed 0.." << size - 1;
    throw ConfigError(out.str());
  }
}

}  // namespace

Topology::Topology(int world_size, int pp_degree, int tp_degree,
                   const std::string& placement_strategy)
    : world_size_(world_size), pp_(pp_degree), tp_(tp_degree), rdp_(0) {
  require_at_least_one("world size", world_size);
  require_at_least_one("pipeline_parallel_degree", pp_degree);
  require_at_least_one("tensor_parallel_degree", tp_degree);
  const long long mp = static_cast<long long>(pp_degree) * tp_degree;
  if (world_size % mp != 0) {
    std::ostringstream out;
    out << "pipeline_parallel_degree (" << pp_degree << ") * tensor_parallel_degree ("
        << tp_degree << ") = " << mp << " does not divide the world size (" << world_size << ")";
    throw ConfigError(out.str());
  }
  rdp_ = static_cast<int>(world_size / mp);
  placement_ = normalise_placement(placement_strategy);

  // The right-most letter has stride 1; each letter to its left steps over all to its right.
  int stride = 1;
  for (auto it = placement_.rbegin(); it != placement_.rend(); ++it) {
    int& axis_stride = *it == 'P' ? stride_pp_ : *it == 'T' ? stride_tp_ : stride_rdp_;
    axis_stride = stride;
    stride *= size_of(*it);
  }
  SMP_CHECK_EQ(stride, world_size_);
}

int Topology::size_of(char axis) const { return axis == 'P' ? pp_ : axis == 'T' ? tp_ : rdp_; }

Coord Topology::coord(int rank) const {
  require_in_range("rank", rank, world_size_);
  Coord c;
  c.pp = rank / stride_pp_ % pp_;
  c.tp = rank / stride_tp_ % tp_;
  c.rdp = rank / stride_rdp_ % rdp_;
  return c;
}

int Topology::rank_of(const Coord& c) const {
  require_in_range("coord pp", c.pp, pp_);
  require_in_range("coord tp", c.tp, tp_);
  require_in_range("coord rdp", c.rdp, rdp_);
  return c.pp * stride_pp_ + c.tp * stride_tp_ + c.rdp * stride_rdp_;
}

int Topology::pack(const Coord& c, CommGroup kind, bool varying) const {
  int index = 0;
  for (char axis : placement_) {
    if (varies(kind, axis) == varying) index = index * size_of(axis) + digit(c, axis);
  }
  return index;
}

void Topology::unpack(int index, CommGroup kind, bool varying, Coord& c) const {
  for (auto it = placement_.rbegin(); it != placement_.rend(); ++it) {
    if (varies(kind, *it) != varying) continue;
    digit(c, *it) = index % size_of(*it);
    index /= size_of(*it);
  }
}

int Topology::group_size(CommGroup kind) const {
  int size = 1;
  for (char axis : varying_axes(kind)) size *= size_of(axis);
  return size;
}

std::vector<int> Topology::group(CommGroup kind, int rank) const {
  Coord c = coord(rank);
  std::vector<int> members(group_size(kind));
  for (int i = 0; i < static_cast<int>(members.size()); ++i) {
    unpack(i, kind, /*varying=*/true, c);
    members[i] = rank_of(c);
  }
  return members;
}

std::vector<std::vector<int>> Topology::groups(CommGroup kind) const {
  std::vector<std::vector<int>> all(world_size_ / group_size(kind));
  for (int g = 0; g < static_cast<int>(all.size()); ++g) {
    Coord first;  // the group's smallest member: fixed axes from g, varying axes at 0
    unpack(g, kind, /*varying=*/false, first);
    all[g] = group(kind, rank_of(first));
  }
  return all;
}

int Topology::group_index(CommGroup kind, int rank) const {
  return pack(coord(rank), kind, /*varying=*/false);
}

int Topology::rank_in(CommGroup kind, int rank) const {
  return pack(coord(rank), kind, /*varying=*/true);
}

int Topology::sdp_group_color(int rank, int sdp_degree, bool replicas) const {
  if (sdp_degree < 1 || rdp_ % sdp_degree != 0) {
    throw ConfigError("sharded_data_parallel_degree: got " + std::to_string(sdp_degree) +
                      "; allowed: a divisor of the reduced-data-parallel degree " +
                      std::to_string(rdp_));
  }
  const int r = rank_in(CommGroup::RDP_GROUP, rank);
  const int within = replicas ? r % sdp_degree : r / sdp_degree;
  return group_index(CommGroup::RDP_GROUP, rank) * rdp_ + within;
}

std::vector<int> Topology::sdp_members(int rank, int sdp_degree, bool replicas) const {
  std::vector<int> out;
  const int color = sdp_group_color(rank, sdp_degree, replicas);
  for (int member : group(CommGroup::RDP_GROUP, rank)) {
    if (sdp_group_color(member, sdp_degree, replicas) == color) out.push_back(member);
  }
  return out;
}

}  // namespace smp
