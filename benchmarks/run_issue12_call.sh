#!/usr/bin/env bash
# Issue 12's device calls: the whole run side by side with diffusers' example scripts, plus the captured step's
# correctness and steady state, in priority order, each part cut by the deadline (BUDGET_S from the start).
#   bash benchmarks/run_issue12_call.sh PEER_SCRIPTS_DIR PART
# PART 1: SD1.5 LoRA 400 (+ a second run), the graph-vs-eager check, batch-16 MFU, TI 400, SDXL steady state.
# PART 2: DreamBooth 400, SDXL LoRA 400, SD1.5 LoRA 1000.
# PART 3: SD1.5 LoRA 400 and TI 400 again (after a change to what runs before the first step).
# PART 4: SDXL LoRA 400 at the 12 GB settings (ours with gradient checkpointing, now captured; the peer at its
#         default), the checkpointed captured step's steady rate, what a fresh process's first steps pay by
#         attention backend (first_step.py), and the captured step against the eager one for TI with checkpointing.
# PART 5: SD1.5 LoRA 1000, LoRA 400, TI 400, LoRA 400 again (after the start-up phase in the log and cuDNN
#         attention left out of short runs; each first run with an empty kernel cache of its own).
# Results: $OUT/e2e.jsonl (side_by_side.py), $OUT/steady.jsonl (graph_check.py, bench_train.py), logs archived.
set -u
peers="$1"; part="${2:-1}"
export PYTHONUNBUFFERED=1 SDTUNE_HOME=/tmp/sdt HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
out=${OUT:-/tmp/out}; logs=/tmp/issue12_logs; mkdir -p "$out" "$logs"
deadline=$(( $(date +%s) + ${BUDGET_S:-560} ))
left() { echo $(( deadline - $(date +%s) )); }
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv > "$out/gpu.txt" 2>&1
python3 -c 'import torch, diffusers, transformers, peft, accelerate; print(torch.__version__, diffusers.__version__, transformers.__version__, peft.__version__, accelerate.__version__)' >> "$out/gpu.txt" 2>&1
e2e() { python3 benchmarks/side_by_side.py --peer-scripts "$peers" --work /tmp/sbs --out "$out/e2e.jsonl" \
          --deadline "$deadline" "$@" 2>> "$logs/side_by_side.err"; }
steady() {  # bench_train case, cut by the deadline
  local limit; limit=$(left); [ "$limit" -gt "$1" ] && limit=$1; shift
  [ "$limit" -lt 30 ] && { echo "{\"case\": \"$*\", \"error\": \"skipped: no time left\"}" >> "$out/steady.jsonl"; return; }
  timeout "$limit" python3 benchmarks/bench_train.py "$@" >> "$out/steady.jsonl" 2>> "$logs/bench_train.err" \
    || echo "{\"case\": \"$*\", \"error\": \"rc $? (see bench_train.err)\"}" >> "$out/steady.jsonl"
}
if [ "$part" = 1 ]; then
  e2e sd15:lora:400 sd15:lora:400:again
  limit=$(left); [ "$limit" -gt 90 ] && limit=90
  [ "$limit" -gt 30 ] && timeout "$limit" python3 benchmarks/graph_check.py --model sd15 --methods lora ti --steps 8 \
    >> "$out/steady.jsonl" 2>> "$logs/graph_check.err"
  steady 70 --model sd15 --method lora --batch 16 --cuda-graph auto --steps 15 --warmup 4 --profile 3
  e2e sd15:ti:400
  steady 80 --model sdxl --method lora --batch 1 --cuda-graph auto --steps 20 --warmup 4
elif [ "$part" = 2 ]; then
  e2e sd15:dreambooth:400 sdxl:lora:400 sd15:lora:1000
elif [ "$part" = 4 ]; then
  e2e --ours-extra=--gradient-checkpointing sdxl:lora:400
  for model in sd15 sdxl; do
    [ "$(left)" -gt 130 ] && timeout 120 python3 benchmarks/first_step.py --model $model >> "$out/first_step.jsonl" \
      2>> "$logs/first_step.err"
  done
  steady 80 --model sdxl --method lora --batch 1 --cuda-graph auto --gradient-checkpointing --steps 20 --warmup 4
  limit=$(left); [ "$limit" -gt 60 ] && limit=60
  [ "$limit" -gt 30 ] && timeout "$limit" python3 benchmarks/graph_check.py --model sd15 --methods ti --steps 8 \
    --gradient-checkpointing >> "$out/steady.jsonl" 2>> "$logs/graph_check.err"
  cat "$out/first_step.jsonl" 2>/dev/null
elif [ "$part" = 5 ]; then
  e2e sd15:lora:1000 sd15:lora:400 sd15:ti:400 sd15:lora:400:again
else
  e2e sd15:lora:400 sd15:ti:400
fi
tar czf "$out/logs.tar.gz" -C / tmp/issue12_logs $(cd / && ls -d tmp/sbs/*.log tmp/sbs/ours-*/events.jsonl 2>/dev/null)
echo "== done, $(left) s before the deadline" >&2
python3 benchmarks/side_by_side.py --summary "$out/e2e.jsonl"
python3 - "$out/steady.jsonl" <<'EOF'
import json, sys, pathlib
path = pathlib.Path(sys.argv[1])
for line in (path.read_text().splitlines() if path.exists() else []):
    r = json.loads(line)
    if r.get("check"):
        print(f"check {r['method']}: rel loss diff {r['max_rel_loss_diff']:.2e}, weight diff {r['max_abs_weight_diff']:.2e}, "
              f"eager {r['eager_steps_per_s']} graph {r['graph_steps_per_s']} steps/s {r.get('graph_logs', [])[-1:]}")
    else:
        print(f"steady {r.get('model')} {r.get('method')} bs{r.get('batch')}: {r.get('steps_per_s')} steps/s "
              f"mfu {r.get('mfu')} peak {r.get('peak_allocated_gib')}/{r.get('peak_reserved_gib')} GiB "
              f"graph {r.get('cuda_graph')} {r.get('error', '')[:300] if r.get('error') else ''}")
EOF
