#!/usr/bin/env bash
# Everything smp checks on a CUDA machine, in one go, for a GPU machine that can fetch nothing
# (the `device` tool's): build there against the machine's own torch, run the GPU tests, run
# bench/gpu_train.sh. The log also goes to $OUT/gpu_check.log when OUT is set.
#
#   here, once:   bash scripts/gpu_check.sh --pack    fills .devdeps/ (git-ignored) with the
#                 build's header-only and static dependencies from this machine's Debian packages
#                 (nlohmann-json, GoogleTest, zlib's headers), for a machine that lacks them
#   there:        bash scripts/gpu_check.sh           (carry .devdeps)
#
# The GPU tests: NCCL on one rank (tests/comm/nccl_test), the tiny GPT on one GPU against the
# golden CPU curve in fp32 and bf16, and a GPU checkpoint resumed on the GPU and on the CPU
# (tests/train/loss_parity_test). SMP_JOBS sets the build's parallelism (default: every core).
set -uo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--pack" ]; then
  set -e
  rm -rf .devdeps && mkdir -p .devdeps/include .devdeps/share/cmake .devdeps/lib/x86_64-linux-gnu/cmake
  cp -r /usr/include/nlohmann /usr/include/gtest /usr/include/zlib.h /usr/include/zconf.h .devdeps/include/
  cp -r /usr/share/cmake/nlohmann_json .devdeps/share/cmake/
  cp -r /usr/lib/x86_64-linux-gnu/cmake/GTest .devdeps/lib/x86_64-linux-gnu/cmake/
  cp /usr/lib/x86_64-linux-gnu/libgtest*.a /usr/lib/x86_64-linux-gnu/libgmock*.a .devdeps/lib/x86_64-linux-gnu/
  du -sh .devdeps
  exit 0
fi

log=${OUT:-/tmp}/gpu_check.log
exec > >(tee "$log") 2>&1
status=0
step() { echo; echo "=== $* ($(date +%T))"; }

step "the machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || status=1
python3 -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, '| transformers', transformers.__version__)"
for tool in mpirun mpicxx g++ cmake ninja; do printf '%-8s %s\n' "$tool" "$(command -v $tool || echo MISSING)"; done
printf 'mpi.h    %s\n' "$(find /usr/include /usr/lib /usr/local/include /opt -name mpi.h 2>/dev/null | head -1)"

step "build (targets: smp-train, nccl_test, loss_parity_test)"
torch_prefix=$(python3 -c "import torch.utils; print(torch.utils.cmake_prefix_path)")
zlib=()
if ! ls /usr/lib/x86_64-linux-gnu/libz.so /usr/lib/libz.so >/dev/null 2>&1; then
  zlib=(-DZLIB_LIBRARY="$(ldconfig -p | awk '/libz\.so\.1 .*x86-64/ {print $NF; exit}')")
fi
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release \
      -DCMAKE_PREFIX_PATH="$torch_prefix;$PWD/.devdeps" -DPython3_EXECUTABLE="$(command -v python3)" \
      -DCUDAToolkit_ROOT=/usr/local/cuda "${zlib[@]}" > build-gpu-configure.log 2>&1 \
  || { tail -40 build-gpu-configure.log; exit 1; }
grep -E "smp: NCCL" build-gpu-configure.log
time cmake --build build-gpu -j "${SMP_JOBS:-$(nproc)}" --target smp-train nccl_test loss_parity_test \
  || exit 1

export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
step "GPU tests"
mpirun -np 1 --bind-to none build-gpu/tests/comm/nccl_test || status=1
OMP_NUM_THREADS=4 mpirun -np 1 --bind-to none build-gpu/tests/train/loss_parity_test \
  --gtest_filter='LossParity.OnOneGpu:LossParity.GpuCheckpointResumesOnGpuAndCpu' || status=1

step "bench/gpu_train.sh"
SMP_BUILD_DIR=build-gpu SMP_PYTHON=python3 bash bench/gpu_train.sh || status=1
step "done: exit $status"
exit $status
