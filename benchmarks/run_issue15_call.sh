#!/usr/bin/env bash
# Issue 15's device call: SD3.5 Medium and Flux.1-dev shaped (full size, random weights) LoRA at 1024 px, batch 1,
# ours side by side with diffusers' train_dreambooth_lora_sd3.py / train_dreambooth_lora_flux.py, then ours alone in
# the smallest memory configuration. One model per call (each saves ~16 / ~34 GB of bf16 weights first).
#   BUDGET_S=560 bash benchmarks/run_issue15_call.sh PEER_SCRIPTS_DIR sd35m|flux [STEPS]
# Carry bitsandbytes' wheel beside diffusers' to measure the NF4 base; it is kept only if it quantises on this GPU.
# If our run fails with the default settings, it is run once more with the CUDA graph off (a separate row), so that a
# capture problem on a new family still leaves a measured row and the failing log.
# Results: $OUT/e2e.jsonl (side_by_side.py: wall time, steady it/s, peak GPU memory, ours and theirs), logs archived.
set -u
peers="$1"; model="${2:-sd35m}"; steps="${3:-100}"
export PYTHONUNBUFFERED=1 SDTUNE_HOME=/tmp/sdt HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
out=${OUT:-/tmp/out}; mkdir -p "$out"
deadline=$(( $(date +%s) + ${BUDGET_S:-560} ))
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$out/gpu.txt" 2>&1
python3 -c 'import torch, diffusers, transformers, peft, accelerate; print(torch.__version__, diffusers.__version__, transformers.__version__, peft.__version__, accelerate.__version__)' >> "$out/gpu.txt" 2>&1
if python3 -c 'import bitsandbytes' 2>/dev/null; then
  python3 -c 'import torch, bitsandbytes.functional as F; F.quantize_4bit(torch.randn(64, 64, device="cuda", dtype=torch.bfloat16), quant_type="nf4"); import bitsandbytes; print("bitsandbytes", bitsandbytes.__version__, "quantises")' >> "$out/gpu.txt" 2>&1 \
    || { echo "bitsandbytes does not quantise here: uninstalled" >> "$out/gpu.txt"; python3 -m pip uninstall -y -q bitsandbytes; }
fi
sbs() { python3 benchmarks/side_by_side.py --peer-scripts "$peers" --work /tmp/sbs --out "$out/e2e.jsonl" \
          --deadline "$deadline" "$@" 2>> "$out/side_by_side.err"; }
sbs "$model:lora:$steps"
if ! python3 -c 'import json, sys; r = json.loads(open(sys.argv[1]).read().splitlines()[-1]); sys.exit((r.get("ours") or {}).get("returncode") != 0)' "$out/e2e.jsonl"; then
  echo "== our default run failed: once more with --cuda-graph off" >&2
  sbs --ours-only --ours-extra "--cuda-graph off" "$model:lora:$steps:ours"
fi
sbs "$model:lora:$steps:small"
tar czf "$out/logs.tar.gz" -C /tmp/sbs $(cd /tmp/sbs && ls *.log */events.jsonl 2>/dev/null)
echo "== done, $(( deadline - $(date +%s) )) s before the deadline" >&2
python3 benchmarks/side_by_side.py --summary "$out/e2e.jsonl"
