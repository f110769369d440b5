#!/usr/bin/env bash
# Checkpoint benchmark: smp's partial checkpoint of gpt2-124m with its AdamW state (fp32
# weights + two moments, ~1.5 GB, one rank) against the raw sequential speed of the same disk,
# measured in the same run with dd on a file of the same size in the same folder.
#
# save_over_disk  (bytes / smp save time) / dd write speed; dd writes with conv=fdatasync, as
#                 smp fsyncs every file (and the folder) before it renames the checkpoint in.
# load_over_disk  (bytes / smp resume time) / dd read speed. Both read a file that was just
#                 written and then evicted from the page cache (posix_fadvise DONTNEED on the
#                 fsynced files; dd iflag=nocache), so both read the disk. smp's load also
#                 verifies every piece's CRC-32 and lands in the live parameters and state.
# SMP_BENCH_ROUNDS rounds (default 5), each smp's save and load then dd's write and read; the
# result is the median over rounds of each round's ratio (the disk's speed drifts; pairing
# each smp round with the dd round right after it cancels most of that).
#
# Usage: bash bench/checkpoint.sh   (SMP_BUILD_DIR, default build; SMP_BENCH_DIR, default
#        /tmp/smp_checkpoint_bench: the disk measured)
set -euo pipefail
source "$(dirname "$0")/common.sh"  # cd to the root; build, python, OMP_NUM_THREADS=1
rounds=${SMP_BENCH_ROUNDS:-5}
dir=${SMP_BENCH_DIR:-/tmp/smp_checkpoint_bench}
bench=$build/bench/checkpoint/checkpoint_bench
need_exe checkpoint.sh "$bench" checkpoint_bench
mkdir -p "$dir"
trap 'rm -rf "$dir"' EXIT

out=$(mpirun --oversubscribe --bind-to none -np 1 "$bench" "$dir" "$rounds")
echo "$out" | grep -v '^smp: resuming'
python3 - <<PY
import statistics
rows = [dict(kv.split("=") for kv in line.split()) for line in """$out""".split("\n")
        if line.startswith("save_s=")]
gbs = lambda n, s: n / s / 1e9
save = [gbs(int(r["bytes"]), float(r["save_s"])) for r in rows]
load = [gbs(int(r["bytes"]), float(r["load_s"])) for r in rows]
write = [gbs(int(r["bytes"]), float(r["dd_write_s"])) for r in rows]
read = [gbs(int(r["bytes"]), float(r["dd_read_s"])) for r in rows]
med = statistics.median
print(f"median GB/s over {len(rows)} rounds: smp save {med(save):.2f}, load {med(load):.2f}; "
      f"dd write {med(write):.2f}, read {med(read):.2f}")
print(f"RESULT checkpoint save_over_disk={med(s / w for s, w in zip(save, write)):.2f} "
      f"load_over_disk={med(l / r for l, r in zip(load, read)):.2f}")
PY
