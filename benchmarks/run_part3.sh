#!/usr/bin/env bash
# The H100 part-3 run (issue 6: SDXL speed/memory, batch-8 MFU, profiler evidence), one device call:
#   run(kind=nvidia-h100-x1, carry=["wheels"], command="python3 -m pip install --no-deps --no-index -q wheels/*.whl; BUDGET_S=560 bash benchmarks/run_part3.sh")
# Cases in priority order, each cut by DEADLINE; results and per-case logs go to $OUT.
set -u
export PYTHONUNBUFFERED=1 SDTUNE_HOME=/tmp/sdt
out=${OUT:-/tmp/out}; mkdir -p "$out/logs"
export DEADLINE=$(( $(date +%s) + ${BUDGET_S:-560} )) LOG_DIR="$out/logs" CASE_TIMEOUT=200
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv > "$out/gpu.txt" 2>&1
bash benchmarks/run_cases.sh "$out/part3.jsonl" \
  "--model sdxl --method lora --batch 1 --steps 10 --profile 3" \
  "--model sdxl --method lora --batch 1 --steps 20 --compile reduce-overhead --compile-scope blocks --profile 3" \
  "--method lora --batch 8 --steps 20 --compile reduce-overhead --compile-scope blocks --profile 3" \
  "--model sdxl --method lora --batch 1 --steps 20 --gradient-checkpointing --compile reduce-overhead --compile-scope blocks" \
  "--method lora --batch 8 --steps 20 --compile reduce-overhead --channels-last --profile 3" \
  "--model sdxl --method lora --batch 1 --steps 20 --compile reduce-overhead"
echo "== done, $(( DEADLINE - $(date +%s) ))s before the deadline" >&2
