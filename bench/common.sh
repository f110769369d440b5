# What the benchmark scripts share; each bench/<name>.sh sources it right after its
# `set -euo pipefail`:
#   source "$(dirname "$0")/common.sh"
# It moves to the repository root and sets:
#   build     SMP_BUILD_DIR, default build (made by scripts/setup.sh)
#   python    .venv/bin/python
#   OMP_NUM_THREADS=1 (one intra-op thread per rank on both sides; a script may export another
#             value after sourcing) and Open MPI's run-as-root permission, exported;
#   mpi_flags the launcher flags every multi-rank run of smp uses (SMP_MPIEXEC_FLAGS in
#             cmake/smp_add_test.cmake): more ranks than cores is normal on these machines, and
#             no binding, so the ranks and the OS share the cores freely (gloo's processes are
#             not bound either). Nothing is tuned beyond that: Open MPI's defaults are what an
#             smp user gets. SMP_BENCH_MPI_FLAGS (word-split, default none) adds flags, e.g.
#             "--mca btl_vader_single_copy_mechanism none" (see bench/comm.sh);
#             --allow-run-as-root is added when running as root.
# and the functions below (need_exe, need_python, make_out_dir, alternate_rounds).
cd "$(dirname "${BASH_SOURCE[0]}")/.."

build=${SMP_BUILD_DIR:-build}
python=.venv/bin/python

export OMP_NUM_THREADS=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
mpi_flags=(--oversubscribe --mca mpi_yield_when_idle 1 --bind-to none)
read -r -a bench_extra_mpi_flags <<< "${SMP_BENCH_MPI_FLAGS:-}"
mpi_flags+=("${bench_extra_mpi_flags[@]}")
if [ "$(id -u)" -eq 0 ]; then mpi_flags+=(--allow-run-as-root); fi

# need_exe <script> <path> <ninja target>: exits with a message saying how to build a missing
# executable.
need_exe() {
  [ -x "$2" ] || { echo "$1: $2 is missing; build it (ninja -C $build $3)" >&2; exit 1; }
}

# need_python <script>: exits when the virtual environment's Python is missing.
need_python() {
  [ -x "$python" ] || { echo "$1: $python is missing; run scripts/setup.sh" >&2; exit 1; }
}

# make_out_dir: sets out to a fresh temporary directory, removed when the script exits.
make_out_dir() {
  out=$(mktemp -d)
  trap 'rm -rf "$out"' EXIT
}

# alternate_rounds <script> <rounds> <first> <second>: rounds 1..<rounds>; odd rounds call
# `<first> r` then `<second> r`, even rounds the reverse, so that the load other jobs put on
# this shared machine falls on both alike. Says "<script>: round r of <rounds> done" on stderr
# after each.
alternate_rounds() {
  local script=$1 rounds=$2 first=$3 second=$4 r
  for ((r = 1; r <= rounds; r++)); do
    if ((r % 2)); then "$first" "$r"; "$second" "$r"; else "$second" "$r"; "$first" "$r"; fi
    echo "$script: round $r of $rounds done" >&2
  done
}
