#!/usr/bin/env bash
# The H100 part-6 run (issue 6: LoRA without peft's fp32 input casts: eager SD1.5 and SDXL, compiled batch 8 and 16;
# with profiles), one device call:
#   run(kind=nvidia-h100-x1, carry=["wheels"], command="python3 -m pip install --no-deps --no-index -q wheels/*.whl; BUDGET_S=560 bash benchmarks/run_part6.sh")
# (run_call.sh: priority order, each case cut by the deadline, results and logs in $OUT)
CASE_TIMEOUT=300 exec bash benchmarks/run_call.sh part6 \
  "--method lora --batch 1 --steps 30" \
  "--model sdxl --method lora --batch 1 --steps 10 --profile 3" \
  "--method lora --batch 16 --steps 20 --compile reduce-overhead --channels-last --profile 3" \
  "--method lora --batch 8 --steps 20 --compile reduce-overhead --profile 3"
