// main() for multi-rank tests: every rank runs the same gtest binary under mpirun.
// A failure on any rank makes that rank exit non-zero, and so mpirun. A test that fails on one
// rank ends the whole job at once: its ranks may have left collectives unmatched (an ASSERT
// that returned early, an exception), and the next test's collectives would pair up wrongly
// and report something misleading or hang.
#include <gtest/gtest.h>

#include <cstdio>

#include "smp/smp.h"

namespace {

class AbortOnFailure : public ::testing::EmptyTestEventListener {
 public:
  explicit AbortOnFailure(bool print_failures) : print_failures_(print_failures) {}

 private:
  // Ranks other than 0 have no result printer: their failures are printed here.
  void OnTestPartResult(const ::testing::TestPartResult& result) override {
    if (!print_failures_ || !result.failed()) return;
    std::fprintf(stderr, "[rank %d] %s:%d: Failure\n%s\n", smp::comm::world_rank(),
                 result.file_name() ? result.file_name() : "?", result.line_number(),
                 result.message());
  }
  void OnTestEnd(const ::testing::TestInfo& test) override {
    if (!test.result()->Failed()) return;
    std::fprintf(stderr, "[rank %d] %s.%s failed: ending every rank (later tests would run on "
                         "collectives that no longer line up)\n",
                 smp::comm::world_rank(), test.test_suite_name(), test.name());
    std::fflush(stdout);
    std::fflush(stderr);
    smp::comm::abort_world(1);
  }
  bool print_failures_;
};

}  // namespace

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  smp::comm::init_mpi();
  const int rank = smp::comm::world_rank();
  auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
  if (rank != 0) {
    // Only rank 0 prints progress; every rank prints its failures (AbortOnFailure).
    delete listeners.Release(listeners.default_result_printer());
  }
  listeners.Append(new AbortOnFailure(/*print_failures=*/rank != 0));
  const int failed = RUN_ALL_TESTS();
  if (failed) std::fprintf(stderr, "[rank %d] tests failed\n", rank);
  smp::shutdown();  // no-op when not initialised; leaves MPI to us, who started it
  smp::comm::finalize_mpi();
  return failed;
}
