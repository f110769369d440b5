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
# and the functions below (need_exe, need_python, make_out_dir, alternate_rounds, and for
# scripts that set `script`, `out` and `limit`: fail, timed_run, keep).
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

# fail <what> <log>: says which run failed (prefixed by $script), shows its log's end, exits.
fail() { echo "$script: $1 failed; its output:" >&2; tail -30 "$2" >&2; exit 1; }

# Around each run the machine's CPU time (/proc/stat) and the run's own (user + sys of its
# processes) are taken: busy minus the run's own is what other jobs used meanwhile, kept as
# `others` (their share of all the cores' time over the run).
cpu_jiffies() {  # all CPUs' time so far, in jiffies: total (idle included) and busy
  awk '/^cpu / { t = 0; for (i = 2; i <= 9; ++i) t += $i; print t, t - $5 - $6; exit }' /proc/stat
}
# timed_run <what> <log> command...: runs it under `timeout $limit`, output to the log; sets
# others.
timed_run() {
  local what=$1 log=$2 t0 b0 t1 b1 u s tick
  shift 2
  tick=$(getconf CLK_TCK)
  read -r t0 b0 < <(cpu_jiffies)
  /usr/bin/time -f "%U %S" -o "$out/time" timeout "$limit" "$@" > "$log" 2>&1 || fail "$what" "$log"
  read -r t1 b1 < <(cpu_jiffies)
  read -r u s < "$out/time"
  others=$(awk -v t="$((t1 - t0))" -v b="$((b1 - b0))" -v tick="$tick" -v u="$u" -v s="$s" \
    'BEGIN { o = t > 0 ? (b - (u + s) * tick) / t : 0; printf "%.3f", (o < 0 ? 0 : o) }')
}
# keep <name> <round> <log> <what>: the run's result line, with others=, into $out/<name>.<round>.
keep() {
  local line
  line=$(grep "^$1 " "$3") || fail "$4" "$3"
  echo "$line others=$others" > "$out/$1.$2"
}
