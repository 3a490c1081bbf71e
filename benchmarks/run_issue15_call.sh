#!/usr/bin/env bash
# Issue 15's device call: SD3.5 Medium and Flux.1-dev shaped (full size, random weights) LoRA at 1024 px, batch 1,
# ours side by side with diffusers' train_dreambooth_lora_sd3.py / train_dreambooth_lora_flux.py, then ours alone in
# the smallest memory configuration. One part per call (each saves ~16 / ~34 GB of bf16 weights first).
#   bash benchmarks/run_issue15_call.sh PEER_SCRIPTS_DIR sd35m|flux [STEPS]
# Results: $OUT/e2e.jsonl (side_by_side.py: wall time, steady it/s, peak GPU memory, ours and theirs), logs archived.
set -u
peers="$1"; model="${2:-sd35m}"; steps="${3:-100}"
export PYTHONUNBUFFERED=1 SDTUNE_HOME=/tmp/sdt HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
out=${OUT:-/tmp/out}; logs=/tmp/issue15_logs; mkdir -p "$out" "$logs"
deadline=$(( $(date +%s) + ${BUDGET_S:-560} ))
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$out/gpu.txt" 2>&1
python3 -c 'import torch, diffusers, transformers, peft, accelerate; print(torch.__version__, diffusers.__version__, transformers.__version__, peft.__version__, accelerate.__version__)' >> "$out/gpu.txt" 2>&1
python3 benchmarks/side_by_side.py --peer-scripts "$peers" --work /tmp/sbs --out "$out/e2e.jsonl" \
  --deadline "$deadline" "$model:lora:$steps" "$model:lora:$steps:small" 2>> "$logs/side_by_side.err"
tar czf "$out/logs.tar.gz" -C / tmp/issue15_logs $(cd / && ls -d tmp/sbs/*.log tmp/sbs/ours-*/events.jsonl 2>/dev/null)
cat "$out/e2e.jsonl" 2>/dev/null
