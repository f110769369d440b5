# smp_add_test(NAME <name> SOURCES <files...> LIBS <targets...> [RANKS <n>] [TIMEOUT <s>])
#
# One test executable. With RANKS n > 1 (or RANKS 1 for tests that need MPI) the test
# runs under mpiexec with n ranks, --oversubscribe, and one intra-op thread per rank.
# Without RANKS it is a plain unit test: no processes, no MPI.
function(smp_add_test)
  cmake_parse_arguments(T "" "NAME;RANKS;TIMEOUT" "SOURCES;LIBS" ${ARGN})
  add_executable(${T_NAME} ${T_SOURCES})
  target_link_libraries(${T_NAME} PRIVATE ${T_LIBS} GTest::gtest)
  if(NOT T_TIMEOUT)
    set(T_TIMEOUT 300)
  endif()
  if(T_RANKS)
    add_test(NAME ${T_NAME}
             COMMAND ${MPIEXEC_EXECUTABLE} ${SMP_MPIEXEC_FLAGS} ${MPIEXEC_NUMPROC_FLAG} ${T_RANKS}
                     $<TARGET_FILE:${T_NAME}>)
    set_tests_properties(${T_NAME} PROPERTIES LABELS "dist" PROCESSORS ${T_RANKS})
  else()
    add_test(NAME ${T_NAME} COMMAND ${T_NAME})
    set_tests_properties(${T_NAME} PROPERTIES LABELS "unit")
  endif()
  set_tests_properties(${T_NAME} PROPERTIES TIMEOUT ${T_TIMEOUT}
                       ENVIRONMENT "OMP_NUM_THREADS=1;OMPI_ALLOW_RUN_AS_ROOT=1;OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1")
endfunction()

# Flags every multi-rank run uses: more ranks than cores is normal here, and ranks
# must not busy-wait each other out of the core (MPI's own yield when idle).
set(SMP_MPIEXEC_FLAGS --oversubscribe --mca mpi_yield_when_idle 1 --bind-to none)
