#!/usr/bin/env bash
# Set up smp from nothing on Debian 12 (as root, or with sudo), then build.
# Idempotent: a second run with nothing changed takes seconds.
#   1. Debian packages (only those missing),
#   2. .venv from requirements.txt (only when requirements.txt changed),
#   3. CMake configure (once) + Ninja build into build/ (RelWithDebInfo, ccache).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

# --- 1. Debian packages ------------------------------------------------------------------
# openmpi-bin/libopenmpi-dev: the launcher and the host-tensor transport.
# nlohmann-json3-dev: config and manifests.  libgtest-dev: tests.  ccache: fast rebuilds.
# cmake/ninja-build/g++: the build.  bible-kjv: the text the demo trains on.
# python3-venv: the venv that holds the torch wheel (libtorch).  python3-dev: Python.h for smp._C.
packages=(build-essential cmake ninja-build ccache openmpi-bin libopenmpi-dev nlohmann-json3-dev zlib1g-dev
          libgtest-dev bible-kjv python3-venv python3-dev)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# A Python other than Debian's (pyenv, say) brings its own venv module.
if [ ${#missing[@]} -gt 0 ] && python3 -c "import venv, ensurepip" 2>/dev/null; then
  missing=("${missing[@]/python3-venv}")
  read -r -a missing <<< "${missing[*]}"
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# --- 2. Python venv with the pinned torch wheel -----------------------------------------------
stamp=.venv/.requirements.sha
want=$(sha256sum requirements.txt | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "setup: creating .venv from requirements.txt (pip's cache makes repeats fast)"
  python3 -m venv .venv
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -r requirements.txt
  echo "$want" > "$stamp"
fi

# --- 3. Configure and build ---------------------------------------------------------------
# ccache's directory lives outside the tree so a fresh clone (CI) reuses earlier objects.
export CCACHE_DIR=${CCACHE_DIR:-$HOME/.cache/smp-ccache}
export CCACHE_BASEDIR=$root
export CCACHE_NOHASHDIR=1
export CCACHE_SLOPPINESS=pch_defines,time_macros,include_file_mtime,include_file_ctime
export CUDACXX=${CUDACXX:-/usr/local/cuda/bin/nvcc}
if [ ! -f build/build.ninja ]; then
  prefix=$(.venv/bin/python -c "import torch.utils; print(torch.utils.cmake_prefix_path)")
  cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
        -DCMAKE_PREFIX_PATH="$prefix" -DPython3_EXECUTABLE="$root/.venv/bin/python" \
        -DCUDAToolkit_ROOT=/usr/local/cuda
fi
cmake --build build -j "${SMP_JOBS:-2}"

# --- 4. The Python front ------------------------------------------------------------------
# `import smp.torch` in the venv: python/ goes on its path (the build put smp/_C*.so there).
site=$(.venv/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
echo "$root/python" > "$site/smp-source.pth"
