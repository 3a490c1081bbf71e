#!/usr/bin/env bash
# The H100 part-2 run of 2026-11-23 (issue 6), one device call of at most 600 s:
#   run(kind=nvidia-h100-x1, carry=["wheels"], command="python3 -m pip install --no-deps --no-index -q wheels/*.whl; export PYTHONUNBUFFERED=1 SDTUNE_HOME=/tmp/sdt; BUDGET_S=570 bash benchmarks/run_part2.sh")
# Cases in order of priority; each is cut by DEADLINE so the whole run ends before the call's limit.
# The last slot is SDXL LoRA without gradient checkpointing: compiled (reduce-overhead) if enough time is
# left for its compilation, else eager (which still gives the memory figure for the <= 12 GB target).
set -u
export PYTHONUNBUFFERED=1 SDTUNE_HOME=/tmp/sdt
out=${OUT:-/tmp/out}; mkdir -p "$out/logs"
export DEADLINE=$(( $(date +%s) + ${BUDGET_S:-570} )) LOG_DIR="$out/logs" CASE_TIMEOUT=170
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv > "$out/gpu.txt" 2>&1
bash benchmarks/run_cases.sh "$out/part2.jsonl" \
  "--method ti --batch 1 --compile reduce-overhead" \
  "--method lora --batch 8 --compile reduce-overhead" \
  "--model sdxl --method lora --batch 1 --gradient-checkpointing --steps 10"
left=$(( DEADLINE - $(date +%s) ))
limit=$(( left < 150 ? left : 150 ))
echo "== generate (limit ${limit}s)" >&2
[ "$limit" -gt 30 ] && timeout "$limit" python3 benchmarks/bench_generate.py > "$out/generate.jsonl" 2> "$out/logs/generate.err"
left=$(( DEADLINE - $(date +%s) ))
if [ "$left" -ge 230 ]; then
  CASE_TIMEOUT=$left bash benchmarks/run_cases.sh "$out/part2-sdxl.jsonl" \
    "--model sdxl --method lora --batch 1 --compile reduce-overhead --steps 20"
else
  CASE_TIMEOUT=$left bash benchmarks/run_cases.sh "$out/part2-sdxl.jsonl" \
    "--model sdxl --method lora --batch 1 --steps 10"
fi
echo "== done, $(( DEADLINE - $(date +%s) ))s before the deadline" >&2
