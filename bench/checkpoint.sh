#!/usr/bin/env bash
# Checkpoint benchmark: smp's partial checkpoint of gpt2-124m with its AdamW state (fp32
# weights + two moments, ~1.5 GB, one rank) against the raw sequential speed of the same disk,
# measured in the same run with dd on a file of the same size in the same folder.
#
# save_over_disk  (bytes / smp save time) / dd write speed; dd writes with conv=fdatasync, as
#                 smp fsyncs every file (and the folder) before it renames the checkpoint in.
# load_over_disk  (bytes / smp resume time) / dd read speed. Both read a file that was just
#                 written, so both read what the page cache holds (dropping it needs root and a
#                 writable /proc/sys/vm; where that works SMP_BENCH_DROP_CACHES=1 does it before
#                 each read). smp's load also verifies every piece's CRC-32 and copies into the
#                 live parameters and optimizer state.
# Each side runs SMP_BENCH_ROUNDS times (default 3); the best round of each is compared.
#
# Usage: bash bench/checkpoint.sh   (SMP_BUILD_DIR, default build; SMP_BENCH_DIR, default
#        /tmp/smp_checkpoint_bench: the disk measured)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${SMP_BUILD_DIR:-build}
rounds=${SMP_BENCH_ROUNDS:-3}
dir=${SMP_BENCH_DIR:-/tmp/smp_checkpoint_bench}
bench=$build/bench/checkpoint/checkpoint_bench
[ -x "$bench" ] || { echo "checkpoint.sh: $bench is missing; build it (ninja -C $build checkpoint_bench)" >&2; exit 1; }
mkdir -p "$dir"
trap 'rm -rf "$dir"' EXIT
drop() { [ "${SMP_BENCH_DROP_CACHES:-0}" = 1 ] && sync && echo 3 > /proc/sys/vm/drop_caches || true; }
export OMP_NUM_THREADS=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

smp_out=$(mpirun --oversubscribe --bind-to none -np 1 "$bench" "$dir" "$rounds")
echo "$smp_out"
bytes=$(echo "$smp_out" | tail -1 | sed 's/.*bytes=//')
mb=$(( (bytes + (1 << 20) - 1) >> 20 ))

dd_write=() dd_read=()
for ((r = 0; r < rounds; r++)); do
  rm -f "$dir/dd.bin"
  start=$(date +%s%N)
  dd if=/dev/zero of="$dir/dd.bin" bs=1M count="$mb" conv=fdatasync status=none
  dd_write+=("$(( $(date +%s%N) - start ))e-9")
  drop
  start=$(date +%s%N)
  dd if="$dir/dd.bin" of=/dev/null bs=1M status=none
  dd_read+=("$(( $(date +%s%N) - start ))e-9")
done
rm -f "$dir/dd.bin"

python3 - "$bytes" "$((mb << 20))" "${dd_write[*]}" "${dd_read[*]}" <<PY
import sys
smp = """$smp_out""".split("\n")
nbytes, dd_bytes = int(sys.argv[1]), int(sys.argv[2])
save = min(float(l.split()[0].split("=")[1]) for l in smp if l.startswith("save_s="))
load = min(float(l.split()[1].split("=")[1]) for l in smp if l.startswith("save_s="))
write = min(map(float, sys.argv[3].split()))
read = min(map(float, sys.argv[4].split()))
gb = lambda b, s: b / s / 1e9
print(f"checkpoint {nbytes / 1e9:.2f} GB: smp save {gb(nbytes, save):.2f} GB/s, load {gb(nbytes, load):.2f} GB/s; "
      f"dd write {gb(dd_bytes, write):.2f} GB/s, read {gb(dd_bytes, read):.2f} GB/s")
print(f"RESULT checkpoint save_over_disk={gb(nbytes, save) / gb(dd_bytes, write):.2f} "
      f"load_over_disk={gb(nbytes, load) / gb(dd_bytes, read):.2f}")
PY
