#!/usr/bin/env bash
# Run benchmark cases on the GPU machine: `bash benchmarks/run_cases.sh OUT_FILE CASE...`
# where each CASE is a quoted argument list for bench_train.py. Each case runs in its own process
# (a fresh CUDA context, so peak memory is per case); failures are recorded, not fatal.
# CASE_TIMEOUT (seconds, default 420) limits each case; DEADLINE (epoch seconds) stops the whole list in time;
# LOG_DIR (default /tmp) keeps each case's stderr (compile logs, tracebacks).
set -u
out="$1"; shift
n=0
mkdir -p "${LOG_DIR:-/tmp}"
for case in "$@"; do
  n=$((n + 1)); err="${LOG_DIR:-/tmp}/$(basename "$out" .jsonl)_$n.err"
  limit=${CASE_TIMEOUT:-420}
  if [ -n "${DEADLINE:-}" ]; then
    left=$(( DEADLINE - $(date +%s) ))
    [ "$left" -lt "$limit" ] && limit=$left
  fi
  if [ "$limit" -lt 20 ]; then
    echo "{\"case\": \"$case\", \"error\": \"skipped: no time left before DEADLINE\"}" >> "$out"
    continue
  fi
  echo "== $case (limit ${limit}s)" >&2
  timeout "$limit" python3 benchmarks/bench_train.py $case >> "$out" 2> "$err"
  rc=$?
  if [ "$rc" -ne 0 ]; then
    echo "{\"case\": \"$case\", \"rc\": $rc, \"limit_s\": $limit, \"error\": $(tail -c 600 "$err" | python3 -c 'import json,sys; print(json.dumps(sys.stdin.read()))')}" >> "$out"
  fi
  tail -n 1 "$out" >&2
done
