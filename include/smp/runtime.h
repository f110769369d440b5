// smp's runtime: SMP v1's init, rank helpers and object messaging.
//
//   smp::init(smp::Config::from_json_file("run.json"));   // every rank, first
//   if (smp::tp_rank() == 0) ...;                          // SMP's rank helpers
//   smp::process_group(smp::CommGroup::DP_GROUP).all_reduce(grad).wait();
//   smp::shutdown();                                        // every rank, last
//
// smp::init builds the one ParallelContext (config, topology, communicators) a program uses;
// everything here reaches it. This is SMP's face: the library below it takes a ParallelContext
// as an argument and never includes this header (only the SMP-API facades do: smp::step,
// smp::nn's default groups, DistributedModel's convenience constructor). Calls marked
// "collective" must be made by every rank of the group named, in the same order.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "smp/comm/communicator.h"
#include "smp/comm/launch.h"
#include "smp/comm/parallel_context.h"
#include "smp/comm/process_groups.h"
#include "smp/core/config.h"
#include "smp/core/error.h"
#include "smp/core/topology.h"

namespace smp {

// Collective over the world. Starts MPI if needed, checks the config against the world size,
// builds the topology and one communicator per group. Throws smp::ConfigError on a layout that
// does not fit the world; calling it twice throws too.
void init(const Config& config);
// SMP's smp.init() with no argument: the config comes from SM_HP_MP_PARAMETERS.
void init();
bool is_initialized();
// Collective over the world. Frees the communicators, and finalises MPI if smp::init started
// it (a program that started MPI itself may init again after shutdown).
void shutdown();

// The context smp::init built (throws smp::Error before init).
ParallelContext& context();
const Config& config();
const Topology& topology();
const comm::ProcessGroups& process_groups();
// The communicator of this rank's group of that kind (SMP's get_*_process_group).
comm::Communicator& process_group(CommGroup group);

// --- SMP's rank helpers -------------------------------------------------------------------
int rank();
int size();
int local_rank();
int local_size();
int pp_rank();
int pp_size();
int tp_rank();
int tp_size();
int dp_rank();
int dp_size();
int rdp_rank();
int rdp_size();
int mp_rank();
int mp_size();
// World ranks of this rank's groups, ascending.
std::vector<int> get_mp_group();
std::vector<int> get_dp_group();
std::vector<int> get_tp_group();
std::vector<int> get_pp_group();
std::vector<int> get_rdp_group();

// --- SMP's object messaging ---------------------------------------------------------------
// Objects are byte strings (serialise with JSON, say). All calls block until done or the
// communication timeout passes.
enum class RankType { WORLD_RANK, MP_RANK, PP_RANK, TP_RANK, DP_RANK, RDP_RANK };

// Sends `obj` to every other member of this rank's `group`; each of them calls recv_from.
// Not collective: only the sender calls it.
void broadcast(const std::string& obj, CommGroup group);
// Receives what `src_rank` sent with broadcast or send. `src_rank` counts in `rank_type`: a
// world rank, or a rank inside this rank's MP, PP, TP, DP or RDP group.
std::string recv_from(int src_rank, RankType rank_type);
void send(const std::string& obj, int dest_rank, RankType rank_type);
// Collective over `group`: every member's object, in group-rank order.
std::vector<std::string> allgather(const std::string& obj, CommGroup group);
void barrier(CommGroup group = CommGroup::WORLD);

// Collective over the world: rank 0 runs `work` (profiling, preparing files, ...) and every
// rank returns its result; if it throws, every rank throws smp::ConfigError with rank 0's
// message, prefixed by `what`. So one rank does the work and no rank waits on a failed one.
std::string on_rank0(const std::string& what, const std::function<std::string()>& work);
// Collective over `group` (default the world): every rank runs `work`; if any throws, every
// rank throws smp::Error "<what> failed on rank <r>: <message>" for the first failing rank,
// so a failure on one rank stops them all together instead of leaving the rest waiting.
void on_every_rank(const std::string& what, const std::function<void()>& work);
void dp_barrier();
void mp_barrier();

}  // namespace smp
