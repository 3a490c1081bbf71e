#!/usr/bin/env bash
# The H100 part-4 run (issue 6: SDXL with gradient checkpointing, regional vs whole compile, MFU at batch >= 8
# with channels_last), one device call:
#   run(kind=nvidia-h100-x1, carry=["wheels"], command="python3 -m pip install --no-deps --no-index -q wheels/*.whl; BUDGET_S=560 bash benchmarks/run_part4.sh")
# (run_call.sh: priority order, each case cut by the deadline, results and logs in $OUT)
exec bash benchmarks/run_call.sh part4 \
  "--model sdxl --method lora --batch 1 --steps 10 --gradient-checkpointing" \
  "--model sdxl --method lora --batch 1 --steps 20 --gradient-checkpointing --compile reduce-overhead --compile-scope blocks" \
  "--method lora --batch 1 --steps 30 --compile reduce-overhead --compile-scope blocks" \
  "--method lora --batch 16 --steps 20 --compile reduce-overhead --channels-last --profile 3" \
  "--method lora --batch 32 --steps 10 --compile default --channels-last --profile 2" \
  "--model sdxl --method lora --batch 1 --steps 20 --compile reduce-overhead"
