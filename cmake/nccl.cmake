# Find NCCL when libtorch was built with CUDA. Sets SMP_WITH_NCCL and the imported target smp::nccl.
# The header comes from the CUDA toolkit or the nvidia-nccl wheel; the library we link is the
# wheel's libnccl.so.2 (the one libtorch itself loads), so a process holds one NCCL, not two.
set(SMP_WITH_NCCL OFF)
if(TARGET torch_cuda OR TORCH_CUDA_LIBRARIES)
  execute_process(COMMAND ${Python3_EXECUTABLE} -c "import nvidia.nccl; print(list(nvidia.nccl.__path__)[0])"
                  OUTPUT_VARIABLE SMP_NCCL_WHEEL_DIR OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
  find_path(NCCL_INCLUDE_DIR nccl.h HINTS ${SMP_NCCL_WHEEL_DIR}/include ${CUDAToolkit_INCLUDE_DIRS} /usr/local/cuda/include
            NO_CMAKE_PATH NO_CMAKE_ENVIRONMENT_PATH)
  find_library(NCCL_LIBRARY NAMES libnccl.so.2 nccl NAMES_PER_DIR
               HINTS ${SMP_NCCL_WHEEL_DIR}/lib /usr/local/cuda/lib64 NO_CMAKE_PATH NO_CMAKE_ENVIRONMENT_PATH)
  if(NCCL_INCLUDE_DIR AND NCCL_LIBRARY)
    add_library(smp::nccl INTERFACE IMPORTED)
    target_include_directories(smp::nccl INTERFACE ${NCCL_INCLUDE_DIR})
    target_link_libraries(smp::nccl INTERFACE ${NCCL_LIBRARY})
    set(SMP_WITH_NCCL ON)
    message(STATUS "smp: NCCL device transport ON (${NCCL_LIBRARY})")
  else()
    message(STATUS "smp: libtorch has CUDA but NCCL was not found; device tensors unsupported")
  endif()
else()
  message(STATUS "smp: libtorch without CUDA; NCCL device transport OFF")
endif()
