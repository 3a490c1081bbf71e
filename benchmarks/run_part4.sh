#!/usr/bin/env bash
# The H100 part-4 run (issue 6: SDXL with gradient checkpointing, regional vs whole compile, MFU at batch >= 8
# with channels_last), one device call:
#   run(kind=nvidia-h100-x1, carry=["wheels"], command="python3 -m pip install --no-deps --no-index -q wheels/*.whl; BUDGET_S=560 bash benchmarks/run_part4.sh")
# Cases in priority order, each cut by DEADLINE; results in $OUT, logs bundled into one archive.
set -u
export PYTHONUNBUFFERED=1 SDTUNE_HOME=/tmp/sdt
out=${OUT:-/tmp/out}; logs=/tmp/part4_logs; mkdir -p "$out" "$logs"
export DEADLINE=$(( $(date +%s) + ${BUDGET_S:-560} )) LOG_DIR="$logs" CASE_TIMEOUT=200
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv > "$out/gpu.txt" 2>&1
bash benchmarks/run_cases.sh "$out/part4.jsonl" \
  "--model sdxl --method lora --batch 1 --steps 10 --gradient-checkpointing" \
  "--model sdxl --method lora --batch 1 --steps 20 --gradient-checkpointing --compile reduce-overhead --compile-scope blocks" \
  "--method lora --batch 1 --steps 30 --compile reduce-overhead --compile-scope blocks" \
  "--method lora --batch 16 --steps 20 --compile reduce-overhead --channels-last --profile 3" \
  "--method lora --batch 32 --steps 10 --compile default --channels-last --profile 2" \
  "--model sdxl --method lora --batch 1 --steps 20 --compile reduce-overhead"
tar czf "$out/logs.tar.gz" -C "$logs" .
echo "== done, $(( DEADLINE - $(date +%s) ))s before the deadline" >&2
