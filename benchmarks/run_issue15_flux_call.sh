#!/usr/bin/env bash
# Issue 15's second Flux call. In the first (results/h200-issue15-flux-call1.jsonl) both trainers, the peer's
# train_dreambooth_lora_flux.py and ours, died in the first backward of a bf16 Flux LoRA step at 1024 px with "an
# illegal memory access"; with gradient checkpointing and an NF4 base ours trained. This call finds the kernel
# (kernel_check.py, while the weights are saved), then runs both trainers side by side with gradient checkpointing,
# then, if leaving cuDNN attention out is what fixes the block, ours without checkpointing and without cuDNN attention.
#   BUDGET_S=550 bash benchmarks/run_issue15_flux_call.sh PEER_SCRIPTS_DIR [STEPS]
set -u
peers="$1"; steps="${2:-50}"
export PYTHONUNBUFFERED=1 SDTUNE_HOME=/tmp/sdt HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
out=${OUT:-/tmp/out}; mkdir -p "$out" /tmp/sbs
deadline=$(( $(date +%s) + ${BUDGET_S:-550} ))
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$out/gpu.txt" 2>&1
python3 -c 'import torch, diffusers; print(torch.__version__, torch.version.cuda, torch.backends.cudnn.version(), diffusers.__version__)' >> "$out/gpu.txt" 2>&1
python3 benchmarks/kernel_check.py > "$out/kernels.jsonl" 2> "$out/kernels.err" &
checker=$!
python3 benchmarks/side_by_side.py --save-weights flux /tmp/sbs/weights-flux 2>> "$out/side_by_side.err" \
  && echo "== weights saved" >&2
wait $checker
cat "$out/kernels.jsonl"
sbs() { python3 benchmarks/side_by_side.py --peer-scripts "$peers" --work /tmp/sbs --out "$out/e2e.jsonl" \
          --deadline "$deadline" "$@" 2>> "$out/side_by_side.err"; }
sbs "flux:lora:$steps:ckpt"
if grep -q '"flux:all", "ok": false' "$out/kernels.jsonl" && grep -q '"flux:no-cudnn", "ok": true' "$out/kernels.jsonl"; then
  mkdir -p /tmp/nocudnn && echo 'import torch; torch.backends.cuda.enable_cudnn_sdp(False)' > /tmp/nocudnn/sitecustomize.py
  PYTHONPATH=/tmp/nocudnn sbs --ours-only "flux:lora:$steps:ours"
fi
tar czf "$out/logs.tar.gz" -C /tmp/sbs $(cd /tmp/sbs && ls *.log */events.jsonl 2>/dev/null)
echo "== done, $(( deadline - $(date +%s) )) s before the deadline" >&2
python3 benchmarks/side_by_side.py --summary "$out/e2e.jsonl"
