# SMP_SANITIZE=ON (scripts/test.sh --sanitize configures build-sanitize/ so): every C++ object of
# smp and of its tests is compiled and linked with AddressSanitizer (LeakSanitizer included) and
# UndefinedBehaviorSanitizer. Any UBSan finding aborts (-fno-sanitize-recover), as ASan's do, so
# a finding fails its test. -O1 keeps ASan's slowdown small; frame pointers give whole stacks.
# libtorch, Open MPI and GTest stay uninstrumented (they are prebuilt): ASan still sees every
# access smp makes, and LeakSanitizer's reports from inside them are suppressed by
# tests/sanitize/lsan.supp (third-party frames only), which scripts/test.sh names.
if(NOT SMP_SANITIZE)
  return()
endif()
if(NOT CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang")
  message(FATAL_ERROR "SMP_SANITIZE needs GCC or Clang (-fsanitize=address,undefined)")
endif()
set(SMP_SANITIZE_FLAGS -fsanitize=address,undefined -fno-sanitize-recover=undefined)
add_compile_options("$<$<COMPILE_LANGUAGE:CXX>:${SMP_SANITIZE_FLAGS};-fno-omit-frame-pointer;-O1;-g>")
add_link_options(${SMP_SANITIZE_FLAGS})
message(STATUS "smp: sanitizers ON (${SMP_SANITIZE_FLAGS}, -O1)")

# smp._C would land in python/smp/ of the source tree, where the normal build's extension module
# lives (and an instrumented module cannot be loaded by an uninstrumented Python without
# preloading libasan): keep it in this build directory and out of `all`.
function(_smp_sanitize_python_module)
  if(TARGET smp_python)
    set_target_properties(smp_python PROPERTIES EXCLUDE_FROM_ALL ON
                          LIBRARY_OUTPUT_DIRECTORY "${CMAKE_BINARY_DIR}/python/smp")
  endif()
endfunction()
cmake_language(DEFER DIRECTORY ${PROJECT_SOURCE_DIR} CALL _smp_sanitize_python_module)
