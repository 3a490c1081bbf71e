#!/usr/bin/env bash
# Issue 12, what the start-up and the batch-1 step spend their time on, on the GPU (one device call):
#   bash benchmarks/run_issue12_diagnose.sh
# 1. our SD1.5 LoRA run (30 steps, full-size random weights) as side_by_side.py runs it, then the same command under
#    `python -X importtime` and under cProfile, and a bare import of what any diffusers trainer imports;
# 2. torch.profiler over the captured batch-1 step of LoRA and textual inversion (bench_train.py --profile);
# 3. SDXL LoRA with gradient checkpointing: does the captured step match the eager one, and at what memory
#    (graph_check.py --gradient-checkpointing, with and without the per-block RNG stash).
# Results under $OUT: e2e.jsonl, importtime.txt, bare_importtime.txt, startup.prof, steady.jsonl.
set -u
export PYTHONUNBUFFERED=1 SDTUNE_HOME=/tmp/sdt HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
out=${OUT:-/tmp/out}; mkdir -p "$out"
deadline=$(( $(date +%s) + ${BUDGET_S:-540} ))
left() { echo $(( deadline - $(date +%s) )); }
python3 benchmarks/side_by_side.py --ours-only --work /tmp/sbs --out "$out/e2e.jsonl" --deadline "$deadline" \
  sd15:lora:30 2>> "$out/side_by_side.err"
run=(-m sdtune_ui train --model /tmp/sbs/weights-sd15 --data /tmp/sbs/images-512 --resolution 512 --batch-size 1
     --steps 30 --seed 0 --checkpointing-steps 0 --validation-steps 0 --method lora
     --instance-prompt "a photo of sks dog" --lr 1e-4 --rank 4 --quiet)
python3 -c 'import time; print("start", time.time())' > "$out/importtime_walls.txt"
python3 -X importtime "${run[@]}" --output /tmp/r-importtime 2> "$out/importtime.txt" >> "$out/importtime_walls.txt"
python3 -c 'import time; print("end", time.time())' >> "$out/importtime_walls.txt"
cp /tmp/r-importtime/events.jsonl "$out/importtime_events.jsonl"
python3 -m cProfile -o "$out/startup.prof" "${run[@]}" --output /tmp/r-cprofile > /dev/null 2>&1
python3 -X importtime -c 'import torch; torch.cuda.init(); torch.empty(1, device="cuda"); import diffusers.training_utils, peft, accelerate' \
  2> "$out/bare_importtime.txt"
for method in ti lora; do
  [ "$(left)" -gt 120 ] && timeout 90 python3 benchmarks/bench_train.py --model sd15 --method $method --batch 1 \
    --cuda-graph auto --steps 30 --warmup 4 --profile 3 >> "$out/steady.jsonl" 2>> "$out/bench_train.err"
done
[ "$(left)" -gt 100 ] && timeout $(( $(left) - 60 )) python3 benchmarks/graph_check.py --model sdxl --methods lora \
  --steps 6 --gradient-checkpointing --no-rng-stash >> "$out/steady.jsonl" 2>> "$out/graph_check.err"
[ "$(left)" -gt 90 ] && timeout $(( $(left) - 10 )) python3 benchmarks/graph_check.py --model sdxl --methods lora \
  --steps 6 --gradient-checkpointing >> "$out/steady.jsonl" 2>> "$out/graph_check.err"
echo "== done, $(left) s before the deadline"
python3 benchmarks/side_by_side.py --summary "$out/e2e.jsonl"
python3 - "$out" <<'PY'
import json, pstats, sys, pathlib
out = pathlib.Path(sys.argv[1])
for line in (out / "steady.jsonl").read_text().splitlines() if (out / "steady.jsonl").exists() else []:
    r = json.loads(line)
    r.pop("profile", None)
    print({k: v for k, v in r.items() if "losses" not in k})
if (out / "startup.prof").exists():
    s = pstats.Stats(str(out / "startup.prof"))
    s.sort_stats("cumulative").print_stats(r"sdtune_ui", 25)
PY
tail -c 1500 "$out/graph_check.err" 2>/dev/null
