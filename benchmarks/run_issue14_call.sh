#!/usr/bin/env bash
# Issue 14's device call: SD1.5 inpainting LoRA and SD1.5 ControlNet, side by side with diffusers' example scripts.
#   BUDGET_S=150 [ROWS="sd15:controlnet:100"] bash benchmarks/run_issue14_call.sh PEER_SCRIPTS_DIR
# The inpainting LoRA's peer (the research project's train_dreambooth_inpaint_lora.py) fails at start-up on diffusers
# 0.42.1 (ENGINEERING_NOTES), so that row is ours only; the ControlNet row runs train_controlnet.py then ours.
# Results: $OUT/e2e.jsonl (side_by_side.py), logs in $OUT/logs.tar.gz. The first call (results/h200-issue14-call1.jsonl)
# ran the inpainting row first and saved the inpainting UNet's random weights on the CPU (43 s): the ControlNet row
# was then skipped by the deadline. Now the ControlNet row runs first and the weights are made on the GPU.
set -u
peers="$1"
export PYTHONUNBUFFERED=1 SDTUNE_HOME=/tmp/sdt HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
out=${OUT:-/tmp/out}; mkdir -p "$out"
deadline=$(( $(date +%s) + ${BUDGET_S:-150} ))
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$out/gpu.txt" 2>&1
python3 -c 'import torch, diffusers, transformers, peft, accelerate, datasets; print(torch.__version__, diffusers.__version__, transformers.__version__, peft.__version__, accelerate.__version__, datasets.__version__)' >> "$out/gpu.txt" 2>&1
python3 benchmarks/side_by_side.py --peer-scripts "$peers" --work /tmp/sbs --out "$out/e2e.jsonl" \
  --deadline "$deadline" ${ROWS:-sd15:controlnet:100 sd15-inpaint:lora:150:ours} 2> "$out/side_by_side.err"
tar czf "$out/logs.tar.gz" -C /tmp/sbs $(cd /tmp/sbs && ls *.log */events.jsonl 2>/dev/null)
echo "== done, $(( deadline - $(date +%s) )) s before the deadline" >&2
python3 benchmarks/side_by_side.py --summary "$out/e2e.jsonl"
