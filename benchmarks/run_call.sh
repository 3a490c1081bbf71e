#!/usr/bin/env bash
# One device call's worth of bench_train cases, in priority order, ending within BUDGET_S seconds:
#   BUDGET_S=560 bash benchmarks/run_call.sh NAME "CASE" ...
# Results in $OUT/NAME.jsonl; per-case logs bundled into $OUT/logs.tar.gz (the device tool returns a limited
# number of files). CASE_TIMEOUT (default 200 s) bounds each case.
set -u
name="$1"; shift
export PYTHONUNBUFFERED=1 SDTUNE_HOME=/tmp/sdt
out=${OUT:-/tmp/out}; logs=/tmp/${name}_logs; mkdir -p "$out" "$logs"
export DEADLINE=$(( $(date +%s) + ${BUDGET_S:-560} )) LOG_DIR="$logs" CASE_TIMEOUT=${CASE_TIMEOUT:-200}
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv > "$out/gpu.txt" 2>&1
bash benchmarks/run_cases.sh "$out/$name.jsonl" "$@"
tar czf "$out/logs.tar.gz" -C "$logs" .
echo "== done, $(( DEADLINE - $(date +%s) ))s before the deadline" >&2
