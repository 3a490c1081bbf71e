#!/usr/bin/env bash
# Run benchmark cases on the GPU machine: `bash benchmarks/run_cases.sh OUT_FILE CASE...`
# where each CASE is a quoted argument list for bench_train.py. Each case runs in its own process
# (a fresh CUDA context, so peak memory is per case); failures are recorded, not fatal.
set -u
out="$1"; shift
for case in "$@"; do
  echo "== $case" >&2
  if ! timeout 420 python3 benchmarks/bench_train.py $case >> "$out" 2> /tmp/bench_err.txt; then
    echo "{\"case\": \"$case\", \"error\": $(tail -c 600 /tmp/bench_err.txt | python3 -c 'import json,sys; print(json.dumps(sys.stdin.read()))')}" >> "$out"
  fi
  tail -n 1 "$out" >&2
done
