// MPI start-up, the world's shape, and aborting the whole job.
#include "smp/comm/launch.h"

#include <mpi.h>

#include <cstdlib>
#include <string>

#include "smp/core/error.h"

namespace smp::comm {
namespace {

bool g_we_initialised = false;  // set once at start-up, read at shutdown

}  // namespace

bool mpi_initialized() {
  int initialised = 0;
  int finalised = 0;
  MPI_Initialized(&initialised);
  MPI_Finalized(&finalised);
  return initialised && !finalised;
}

void init_mpi() {
  if (mpi_initialized()) return;
  int provided = 0;
  MPI_Init_thread(nullptr, nullptr, MPI_THREAD_MULTIPLE, &provided);
  g_we_initialised = true;
  if (provided < MPI_THREAD_MULTIPLE) {
    throw CommError("smp: MPI gave thread level " + std::to_string(provided) +
                    "; smp needs MPI_THREAD_MULTIPLE (" + std::to_string(MPI_THREAD_MULTIPLE) +
                    "). Use an MPI built with thread support (Open MPI is).");
  }
  // Errors come back as return codes that smp turns into exceptions naming the call.
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
}

void finalize_mpi() {
  if (g_we_initialised && mpi_initialized()) MPI_Finalize();
}

int world_rank() {
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  return rank;
}

int world_size() {
  int size = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  return size;
}

int faked_ranks_per_node() {
  const char* value = std::getenv("SMP_RANKS_PER_NODE");
  if (value == nullptr || *value == '\0') return 0;
  char* end = nullptr;
  const long k = std::strtol(value, &end, 10);
  if (*end != '\0' || k < 1 || k > 1 << 20) {
    throw ConfigError("environment variable SMP_RANKS_PER_NODE: got \"" + std::string(value) +
                      "\"; allowed: a positive integer (ranks per faked node), or unset");
  }
  return static_cast<int>(k);
}

void abort_world(int code) {
  if (mpi_initialized()) MPI_Abort(MPI_COMM_WORLD, code);
  std::_Exit(code);
}

}  // namespace smp::comm
