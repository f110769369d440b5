#!/usr/bin/env bash
# smp-train end to end: a short pp=2 x tp=2 run writes everything it promises into its run
# directory; bad input (missing data, a corrupt shard, a config error, a layout that does not
# fit the ranks, a sequence longer than the model's positions) ends every rank quickly with a
# clear message and a non-zero exit, leaving nothing half-written. A run fine-tunes from the
# Hugging Face folder an earlier run saved (model.from_hf) and starts from its trained loss. A
# run resumed from an earlier step into its own run directory logs each step once.
#   smp_train_test.sh <smp-train> <mpiexec>
source "$(dirname "${BASH_SOURCE[0]}")/../testing/preamble.sh"
train=$1
mpiexec=$2
make_work_dir train_test
write_text "$work/text.txt"

config() {  # config <name> <smp json> <training overrides> [data json]
  local data="{\"text\": \"$work/text.txt\"}"
  [ $# -ge 4 ] && data=$4
  cat > "$work/$1.json" <<JSON
{"model": {"name": "tiny", "num_layers": 2, "max_seq_len": 32},
 "data": $data,
 "training": {"steps": 4, "global_batch": 8, "seq_len": 32, "val_every": 2, "val_batches": 1,
              "sample_tokens": 8 $3},
 "smp": $2, "run_dir": "$work/runs/$1"}
JSON
}

run() {  # run <name> <ranks> -> sets out, rc
  out=$(timeout 120 "$mpiexec" "${mpirun_flags[@]}" -np "$2" "$train" --config "$work/$1.json" 2>&1)
  rc=$?
}

expect_failure() {  # expect_failure <name> <ranks> <message>
  run "$1" "$2"
  if [ "$rc" -eq 0 ] || [ "$rc" -eq 124 ]; then fail "$1: exit code $rc"; return; fi
  if ! grep -qF -- "$3" <<< "$out"; then
    echo "FAIL $1: no \"$3\" in:"; echo "$out"; failed=1; return
  fi
  if [ -n "$(find "$work/runs" -name '*.tmp*' 2>/dev/null)" ]; then
    echo "FAIL $1: half-written files:"; find "$work/runs" -name '*.tmp*'; failed=1; return
  fi
  ok "$1: exit $rc, \"$3\""
}

# --- the happy path -------------------------------------------------------------------------
config good '{"pipeline_parallel_degree": 2, "tensor_parallel_degree": 2, "ddp": true, "microbatches": 2}' ""
run good 4
if [ "$rc" -ne 0 ]; then echo "FAIL good: exit $rc"; echo "$out"; failed=1; else
  for f in config.json metrics.jsonl loss.svg timeline.svg timeline.json sample.txt summary.json data/train_000.bin data/val_000.bin; do
    [ -s "$work/runs/good/$f" ] || fail "good: no $f in the run directory"
  done
  steps=$(grep -c '"tokens_per_s"' "$work/runs/good/metrics.jsonl")
  [ "$steps" -eq 4 ] || fail "good: $steps step lines in metrics.jsonl, expected 4"
  for want in "Partition assignments:" "rank  pp  tp  rdp" "step     4/4" "validation loss" "unigram entropy" "run directory: $work/runs/good"; do
    grep -qF -- "$want" <<< "$out" || fail "good: no \"$want\" in the output"
  done
  grep -q $'\r' <<< "$out" && fail "good: carriage returns in a log"
  ok "good: a pp=2 x tp=2 run wrote its run directory"
fi

# --- fine-tuning from a Hugging Face folder: the good run's full checkpoint ---------------------
cat > "$work/from_hf.json" <<JSON
{"model": {"from_hf": "$work/runs/hf_source/checkpoints/final"},
 "data": {"text": "$work/text.txt"},
 "training": {"steps": 2, "global_batch": 8, "seq_len": 32, "val_every": 0, "val_batches": 1,
              "sample_tokens": 0},
 "smp": {"tensor_parallel_degree": 2, "ddp": true}, "run_dir": "$work/runs/from_hf"}
JSON
config hf_source '{}' ', "steps": 30, "lr": 0.003' && sed -i 's/"smp": {}/"checkpoint": {"full_at_end": true}, "smp": {}/' "$work/hf_source.json"
run hf_source 1
[ "$rc" -eq 0 ] || { echo "FAIL hf_source: exit $rc"; echo "$out"; failed=1; }
run from_hf 2
first_loss() { python3 -c "import json,sys; print([json.loads(l)['loss'] for l in open(sys.argv[1]) if '\"loss\"' in l][0])" "$1"; }
if [ "$rc" -ne 0 ]; then echo "FAIL from_hf: exit $rc"; echo "$out"; failed=1; else
  fresh=$(first_loss "$work/runs/hf_source/metrics.jsonl"); tuned=$(first_loss "$work/runs/from_hf/metrics.jsonl")
  if python3 -c "import sys; sys.exit(0 if $tuned < $fresh - 0.5 else 1)"; then
    ok "from_hf: starts at loss $tuned from the trained weights (a fresh model: $fresh)"
  else fail "from_hf: first loss $tuned, not well below a fresh model's $fresh"; fi
  # The same weights under sharded data parallelism with delayed initialisation: each layer
  # takes them from the file as it is built, then only this rank's slices stay. Same global
  # batch, same weights: the same first loss.
  sed 's|"smp": {[^}]*}|"smp": {"sharded_data_parallel_degree": 2, "ddp": true, "delayed_parameter_initialization": true}|; s|runs/from_hf"|runs/from_hf_sdp"|' \
    "$work/from_hf.json" > "$work/from_hf_sdp.json"
  run from_hf_sdp 2
  if [ "$rc" -ne 0 ]; then echo "FAIL from_hf_sdp: exit $rc"; echo "$out"; failed=1; else
    sliced=$(first_loss "$work/runs/from_hf_sdp/metrics.jsonl")
    if python3 -c "import sys; sys.exit(0 if abs($sliced - $tuned) <= 1e-5 * abs($tuned) else 1)"; then
      ok "from_hf_sdp: delayed initialisation under sdp 2 starts at the same loss ($sliced)"
    else fail "from_hf_sdp: first loss $sliced, the whole model's was $tuned"; fi
  fi
fi

# --- resumed into its own run directory: metrics.jsonl holds each step once ---------------
# The first run goes on past its step-2 checkpoint (as one that crashed or was stopped later
# would); resumed from step 2, its metrics.jsonl is cut back to step 2 before the run appends.
config resumed '{"pipeline_parallel_degree": 2, "microbatches": 2}' ""
sed -i 's/"smp": {/"checkpoint": {"every": 2}, "smp": {/' "$work/resumed.json"
sed 's/"checkpoint": {"every": 2}/"checkpoint": {"every": 2, "resume": "step_2"}/' "$work/resumed.json" > "$work/resumed_again.json"
run resumed 2
[ "$rc" -eq 0 ] || { echo "FAIL resumed (first run): exit $rc"; echo "$out"; failed=1; }
run resumed_again 2
metrics_steps() {  # the steps of the training lines, then of the validation lines
  python3 -c "import json,sys; lines=[json.loads(l) for l in open(sys.argv[1])]
print([j['step'] for j in lines if 'loss' in j], [j['step'] for j in lines if 'val_loss' in j])" "$1"
}
if [ "$rc" -ne 0 ]; then echo "FAIL resumed: exit $rc"; echo "$out"; failed=1; else
  grep -qF "resumed at step 2" <<< "$out" || fail "resumed: no \"resumed at step 2\" in the output"
  steps=$(metrics_steps "$work/runs/resumed/metrics.jsonl")
  if [ "$steps" = "[1, 2, 3, 4] [2, 4]" ]; then ok "resumed: metrics.jsonl steps $steps, each once"
  else
    fail "resumed: metrics.jsonl steps $steps, expected [1, 2, 3, 4] [2, 4]"
    cat "$work/runs/resumed/metrics.jsonl"
  fi
fi

# --- bad input ------------------------------------------------------------------------------
config missing '{}' "" "{\"text\": \"$work/no_such.txt\"}"
expect_failure missing 2 "cannot read the text file $work/no_such.txt"

mkdir -p "$work/shards"
cp "$work/runs/good/data/train_000.bin" "$work/shards/train_000.bin"
cp "$work/runs/good/data/val_000.bin" "$work/shards/val_000.bin"
printf '\x01\x02\x03\x04' | dd of="$work/shards/train_000.bin" bs=1 seek=0 conv=notrunc 2>/dev/null
config corrupt '{}' "" "{\"shards_dir\": \"$work/shards\"}"
expect_failure corrupt 2 "train_000.bin: magic is"

sed "s|runs/hf_source/checkpoints/final|no_such_folder|; s|runs/from_hf|runs/bad_hf|" "$work/from_hf.json" > "$work/bad_hf.json"
expect_failure bad_hf 2 "model.from_hf: cannot open $work/no_such_folder/config.json"

config typo '{"pipeline_parallel_degre": 2}' ""
expect_failure typo 2 'did you mean "pipeline_parallel_degree"'

config layout '{"pipeline_parallel_degree": 3}' ""
expect_failure layout 2 "does not divide the world size (2)"

config long_seq '{}' ', "seq_len": 33'
expect_failure long_seq 2 "seq_len (33) is longer than the model's max_seq_len (32)"

finish
