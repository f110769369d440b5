# What every shell test shares; each sources it first:
#   source "$(dirname "${BASH_SOURCE[0]}")/../testing/preamble.sh"
# It gives:
#   set -u (not -e: the tests run commands that are meant to fail and read their exit codes);
#   the environment mpirun needs here (root allowed, one OpenMP thread unless set);
#   mpirun_flags: the launcher flags every multi-rank run uses (SMP_MPIEXEC_FLAGS in
#     cmake/smp_add_test.cmake): more ranks than cores, no binding;
#   failed=0, fail <message> (prints "FAIL <message>" and sets failed=1), ok <message>
#     (prints "ok   <message>"), finish (exits with 1 if anything failed, else 0);
#   make_work_dir <name>: sets work to a fresh /tmp/smp_<name>_XXXXXX, removed on exit;
#   write_text <file>: 20000 seeded words of a small vocabulary, the tests' training text.
set -u

export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mpirun_flags=(--oversubscribe --bind-to none)

failed=0
fail() { echo "FAIL $*"; failed=1; }
ok() { echo "ok   $*"; }
finish() { exit "$failed"; }

make_work_dir() {
  work=$(mktemp -d "/tmp/smp_$1_XXXXXX")
  trap 'rm -rf "$work"' EXIT
}

write_text() {
  python3 -c "
import random
random.seed(1)
words = 'in the beginning god created the heaven and the earth and the earth was without form'.split()
print(' '.join(random.choice(words) for _ in range(20000)))" > "$1"
}
