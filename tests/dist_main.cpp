// main() for multi-rank tests: every rank runs the same gtest binary under mpirun.
// A failure on any rank makes that rank exit non-zero, and so mpirun.
#include <gtest/gtest.h>

#include "smp/smp.h"

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  smp::comm::init_mpi();
  const int rank = smp::comm::world_rank();
  if (rank != 0) {
    // Only rank 0 prints progress; every rank still prints its failures.
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
  }
  const int failed = RUN_ALL_TESTS();
  if (failed) std::fprintf(stderr, "[rank %d] tests failed\n", rank);
  smp::shutdown();  // no-op when not initialised; leaves MPI to us, who started it
  smp::comm::finalize_mpi();
  return failed;
}
