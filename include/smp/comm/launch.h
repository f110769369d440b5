// Launch: the MPI world smp runs in, started by mpirun or Slurm's srun.
//
// This is the only place smp starts or stops MPI: rank and size come from MPI whether mpirun
// or srun started the job. (The node-local rank comes from MPI's shared-memory split, made
// once by ProcessGroups.)
#pragma once

namespace smp::comm {

// Initialises MPI with MPI_THREAD_MULTIPLE if nobody has yet; safe to call many times.
// Throws smp::CommError when MPI cannot give MPI_THREAD_MULTIPLE.
void init_mpi();
// Finalises MPI if smp initialised it and it is not finalised yet. Blocks until every rank
// calls it.
void finalize_mpi();
bool mpi_initialized();

int world_rank();
int world_size();

// Ranks per node as the environment variable SMP_RANKS_PER_NODE=k fakes them (world ranks
// k*j..k*j+k-1 make node j, so a test shows several nodes on one machine), or 0 when it is
// unset: nodes are then the hosts. Throws smp::ConfigError when it is not a positive integer.
int faked_ranks_per_node();

// Kills every rank of the job with `code` (MPI_Abort). For mains that caught an error while
// other ranks may be waiting on this one: without it they would wait for their timeout.
[[noreturn]] void abort_world(int code);

}  // namespace smp::comm
