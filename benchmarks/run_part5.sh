#!/usr/bin/env bash
# The H100 part-5 run (issue 6: SDXL memory after caching before the UNet moves to the GPU; MFU at batch >= 8
# with channels_last, with profiles), one device call:
#   run(kind=nvidia-h100-x1, carry=["wheels"], command="python3 -m pip install --no-deps --no-index -q wheels/*.whl; BUDGET_S=560 bash benchmarks/run_part5.sh")
# (run_call.sh: priority order, each case cut by the deadline, results and logs in $OUT)
CASE_TIMEOUT=300 exec bash benchmarks/run_call.sh part5 \
  "--model sdxl --method lora --batch 1 --steps 10 --gradient-checkpointing" \
  "--model sdxl --method lora --batch 1 --steps 5" \
  "--method lora --batch 16 --steps 20 --compile reduce-overhead --channels-last --profile 3" \
  "--method lora --batch 8 --steps 20 --compile reduce-overhead --profile 3"
