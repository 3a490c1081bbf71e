#!/usr/bin/env bash
# Issue 15's last call: Flux.1-dev side by side now that the crash is known (kernel_check.py, results/
# h200-issue15-kernels.jsonl: cuDNN's attention kernel fails on Flux's joint attention in training). Ours leaves cuDNN
# attention out by itself (Family.trains_with_cudnn_attention); the peer's script gets the same one-line environment
# fix through a sitecustomize.py on its PYTHONPATH (its code unchanged). Then SD3.5 Medium, ours alone, default and
# smallest memory, for the allocated peak at the end of each set-up phase (the peer's row is call 1's).
#   BUDGET_S=560 bash benchmarks/run_issue15_call3.sh PEER_SCRIPTS_DIR
set -u
peers="$1"
export PYTHONUNBUFFERED=1 SDTUNE_HOME=/tmp/sdt HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
out=${OUT:-/tmp/out}; mkdir -p "$out" /tmp/nocudnn
deadline=$(( $(date +%s) + ${BUDGET_S:-560} ))
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$out/gpu.txt" 2>&1
echo 'import torch; torch.backends.cuda.enable_cudnn_sdp(False)' > /tmp/nocudnn/sitecustomize.py
sbs() { python3 benchmarks/side_by_side.py --peer-scripts "$peers" --work /tmp/sbs --out "$out/e2e.jsonl" \
          --deadline "$deadline" "$@" 2>> "$out/side_by_side.err"; }
sbs --peer-pythonpath /tmp/nocudnn flux:lora:50
rm -rf /tmp/sbs/weights-flux
sbs sd35m:lora:100:small sd35m:lora:100:ours
tar czf "$out/logs.tar.gz" -C /tmp/sbs $(cd /tmp/sbs && ls *.log */events.jsonl 2>/dev/null)
echo "== done, $(( deadline - $(date +%s) )) s before the deadline" >&2
python3 benchmarks/side_by_side.py --summary "$out/e2e.jsonl"
