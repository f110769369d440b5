// Helpers for tests that run on several ranks under mpirun (with tests/dist_main.cpp as main).
#pragma once

#include "smp/comm/communicator.h"
#include "smp/comm/process_groups.h"

namespace smp::testing {

// The groups of a world with no parallelism (pp = tp = 1: every rank its own replica), made on
// first use, collectively over MPI_COMM_WORLD (every rank makes the first call at the same
// point; gtest runs the tests in the same order on every rank), starting MPI if nobody has,
// with a 60 s timeout per operation. They live to the end of the process, independent of
// smp::init and smp::shutdown, so tests of the transport can use them without smp::init, and
// fixtures (a shared TempDir) can outlive a test's init/shutdown cycles.
const comm::ProcessGroups& world_groups();
// world_groups()'s WORLD: every rank of the job.
comm::Communicator& world();

}  // namespace smp::testing
