# smp_add_test(NAME <name> SOURCES <files...> LIBS <targets...> [RANKS <n>...] [TIMEOUT <s>]
#              [SPLIT <suffix> <gtest filter> <skip message>])
#
# One test executable. Without RANKS it is a plain unit test: no processes, no MPI.
# With RANKS n1 n2 ... the same executable runs once per rank count under mpiexec
# (tests <name>_np<n>), with --oversubscribe and one intra-op thread per rank.
# SPLIT: the cases matching the filter (e.g. "*Gpu*") that GTEST_SKIP with <skip message> where
# they cannot run (no CUDA device here) become their own test, <name>_<suffix> (one rank), which
# ctest then reports as skipped, not passed; the other entries run every other case.
function(smp_add_test)
  cmake_parse_arguments(T "" "NAME;TIMEOUT" "SOURCES;LIBS;RANKS;SPLIT" ${ARGN})
  add_executable(${T_NAME} ${T_SOURCES})
  target_link_libraries(${T_NAME} PRIVATE ${T_LIBS} GTest::gtest)
  if(NOT T_TIMEOUT)
    set(T_TIMEOUT 300)
  endif()
  set(env "OMP_NUM_THREADS=1;OMPI_ALLOW_RUN_AS_ROOT=1;OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1")
  set(filter)
  if(T_SPLIT)
    list(GET T_SPLIT 0 suffix)
    list(GET T_SPLIT 1 split_filter)
    list(GET T_SPLIT 2 skip_message)
    set(filter --gtest_filter=-${split_filter})
    if(T_RANKS)
      set(split_command ${MPIEXEC_EXECUTABLE} ${SMP_MPIEXEC_FLAGS} ${MPIEXEC_NUMPROC_FLAG} 1)
    endif()
    add_test(NAME ${T_NAME}_${suffix}
             COMMAND ${split_command} $<TARGET_FILE:${T_NAME}> --gtest_filter=${split_filter})
    set_tests_properties(${T_NAME}_${suffix} PROPERTIES LABELS "dist" TIMEOUT ${T_TIMEOUT}
                         ENVIRONMENT "${env}" SKIP_REGULAR_EXPRESSION "${skip_message}")
  endif()
  if(NOT T_RANKS)
    add_test(NAME ${T_NAME} COMMAND ${T_NAME} ${filter})
    set_tests_properties(${T_NAME} PROPERTIES LABELS "unit" TIMEOUT ${T_TIMEOUT} ENVIRONMENT "${env}")
    return()
  endif()
  foreach(n ${T_RANKS})
    add_test(NAME ${T_NAME}_np${n}
             COMMAND ${MPIEXEC_EXECUTABLE} ${SMP_MPIEXEC_FLAGS} ${MPIEXEC_NUMPROC_FLAG} ${n}
                     $<TARGET_FILE:${T_NAME}> ${filter})
    set_tests_properties(${T_NAME}_np${n} PROPERTIES LABELS "dist" PROCESSORS ${n}
                         TIMEOUT ${T_TIMEOUT} ENVIRONMENT "${env}")
  endforeach()
endfunction()

# Flags every multi-rank run uses: more ranks than cores is normal here, and an idle MPI rank
# yields its core instead of spinning.
set(SMP_MPIEXEC_FLAGS --oversubscribe --mca mpi_yield_when_idle 1 --bind-to none)
