#!/usr/bin/env bash
# The H100 part-3 run (issue 6: SDXL speed/memory, batch-8 MFU, profiler evidence), one device call:
#   run(kind=nvidia-h100-x1, carry=["wheels"], command="python3 -m pip install --no-deps --no-index -q wheels/*.whl; BUDGET_S=560 bash benchmarks/run_part3.sh")
# (run_call.sh: priority order, each case cut by the deadline, results and logs in $OUT)
exec bash benchmarks/run_call.sh part3 \
  "--model sdxl --method lora --batch 1 --steps 10 --profile 3" \
  "--model sdxl --method lora --batch 1 --steps 20 --compile reduce-overhead --compile-scope blocks --profile 3" \
  "--method lora --batch 8 --steps 20 --compile reduce-overhead --compile-scope blocks --profile 3" \
  "--model sdxl --method lora --batch 1 --steps 20 --gradient-checkpointing --compile reduce-overhead --compile-scope blocks" \
  "--method lora --batch 8 --steps 20 --compile reduce-overhead --channels-last --profile 3" \
  "--model sdxl --method lora --batch 1 --steps 20 --compile reduce-overhead"
