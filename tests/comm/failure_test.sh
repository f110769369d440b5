#!/usr/bin/env bash
# A rank that dies (SIGKILL), hangs, never reaches smp::init or inits another layout: every
# other rank must exit non-zero within the configured timeout, with a message naming the
# operation, the group and the peer, and no process of the job may be left behind.
#   failure_test.sh <failure_probe> <mpiexec>
source "$(dirname "${BASH_SOURCE[0]}")/../testing/preamble.sh"
probe=$1
mpiexec=$2
timeout_s=3
slack_s=12  # mpirun start-up and tear-down on a loaded 2-core machine

run_case() {
  local mode=$1
  shift
  local start end elapsed out rc
  start=$(date +%s%N)
  # orte_abort_on_non_zero_status 0: let the survivors report before mpirun tears the job
  # down (by default it kills them the moment rank 1 dies, which also ends the job, silently).
  out=$(timeout 120 "$mpiexec" "${mpirun_flags[@]}" --mca orte_abort_on_non_zero_status 0 \
        -np 3 "$probe" "$mode" "$timeout_s" 2>&1)
  rc=$?
  end=$(date +%s%N)
  elapsed=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", (b - a) / 1e9 }')
  local ok=1
  [ "$rc" -ne 0 ] && [ "$rc" -ne 124 ] || { echo "FAIL $mode: exit code $rc"; ok=0; }
  awk -v e="$elapsed" -v t="${limit_s:-$((timeout_s + slack_s))}" 'BEGIN { exit !(e < t) }' ||
    { echo "FAIL $mode: took ${elapsed}s"; ok=0; }
  for want in "$@"; do
    grep -qF -- "$want" <<< "$out" || { echo "FAIL $mode: no \"$want\" in the output"; ok=0; }
  done
  if pgrep -f "^$probe " > /dev/null; then
    echo "FAIL $mode: processes left behind:"; pgrep -af "^$probe "; pkill -9 -f "^$probe "; ok=0
  fi
  if [ $ok -eq 1 ]; then
    ok "$mode: exit $rc after ${elapsed}s"
  else
    failed=1
    echo "---- output of $mode ----"; echo "$out"; echo "----"
  fi
}

run_case kill "timed out after" "all_reduce #1 on WORLD (world ranks [0, 1, 2])" \
              "no word from rank 1 (world rank 1)"
run_case hang "timed out after" "all_reduce #1 on WORLD" "no word from rank 1 (world rank 1)"
run_case p2p-hang "recv on WORLD (world ranks [0, 1, 2]) with peer rank 1 (world rank 1) timed out" \
                  "barrier #1 on WORLD"
# smp::init's first collective is bounded too, and the ranks check they agree before splitting.
run_case init-hang "smp::init on world rank 0: MPI_Comm_idup of the world (every rank's arrival) did not complete within comm_timeout_s"
run_case init-disagree "smp::init: the ranks disagree: rank 0 has init #1 of 3 ranks, pp 1 tp 1" \
                       "rank 1 has init #1 of 3 ranks, pp 3 tp 1"
# So is every communicator smp::init makes after the agreement (a split of MPI_COMM_WORLD
# cannot be polled: it waits on a thread of its own), and the emulated NCCL bootstrap.
for call in "MPI_Comm_split_type for the node's ranks" "MPI_Comm_split for TP_GROUP" \
            "MPI_Comm_split for SDP_REPLICA_GROUP" "MPI_Comm_idup for DP_GROUP's control channel"; do
  run_case "stall:$call" "smp::init on world rank 0: $call did not complete within comm_timeout_s"
done
SMP_EMULATE_NCCL=1 run_case "stall:NCCL init (emulated) on DP_GROUP" \
  "smp::init on world rank 0: NCCL init (emulated) on DP_GROUP (world ranks [0, 1, 2]) did not complete"
# A stage whose step throws tells the others: they stop at once (comm_timeout_s is 60 here),
# naming it and its error.
limit_s=20 run_case step-throws "world rank 2 failed in its step: injected failure in fc2's forward" \
  "abandoned: world rank 2 failed"
# After a failure, smp::shutdown's barrier fails within the timeout instead of hanging.
run_case shutdown-after-failure "all_reduce #1 on WORLD" "barrier #2 on WORLD (world ranks [0, 1, 2])"
# A long phase some ranks run alone is bounded by phase_timeout_s (6 s here), not comm_timeout_s.
limit_s=$((4 + 6 + slack_s)) run_case phases "[rank 1] the 4 s phase passed" \
  "writing the checkpoint: a member did not finish this phase within phase_timeout_s (6.000000 s)" \
  "no word from rank 2 (world rank 2)"
finish
