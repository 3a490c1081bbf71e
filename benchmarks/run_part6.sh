#!/usr/bin/env bash
# The H100 part-6 run (issue 6: LoRA without peft's fp32 input casts: eager SD1.5 and SDXL, compiled batch 8 and 16;
# with profiles), one device call:
#   run(kind=nvidia-h100-x1, carry=["wheels"], command="python3 -m pip install --no-deps --no-index -q wheels/*.whl; BUDGET_S=560 bash benchmarks/run_part6.sh")
# Cases in priority order, each cut by DEADLINE; results in $OUT, logs bundled into one archive.
set -u
export PYTHONUNBUFFERED=1 SDTUNE_HOME=/tmp/sdt
out=${OUT:-/tmp/out}; logs=/tmp/part6_logs; mkdir -p "$out" "$logs"
export DEADLINE=$(( $(date +%s) + ${BUDGET_S:-560} )) LOG_DIR="$logs" CASE_TIMEOUT=300
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv > "$out/gpu.txt" 2>&1
bash benchmarks/run_cases.sh "$out/part6.jsonl" \
  "--method lora --batch 1 --steps 30" \
  "--model sdxl --method lora --batch 1 --steps 10 --profile 3" \
  "--method lora --batch 16 --steps 20 --compile reduce-overhead --channels-last --profile 3" \
  "--method lora --batch 8 --steps 20 --compile reduce-overhead --profile 3"
tar czf "$out/logs.tar.gz" -C "$logs" .
echo "== done, $(( DEADLINE - $(date +%s) ))s before the deadline" >&2
