#!/usr/bin/env bash
# Issue 12's evidence of what a short run waits for before its first step, on the GPU with full-size random SD1.5:
#   BUDGET_S=170 bash benchmarks/run_startup_call.sh
# Writes $OUT/startup.jsonl (startup_time.py: wall and CPU seconds from process start to the first event, the
# "running" status and the first step, 3 repeats of a 20-step LoRA run), $OUT/importtime.txt (python -X importtime
# of one such run) and $OUT/floor.jsonl (a bare process: import torch, CUDA start, diffusers' training imports).
set -u
export PYTHONUNBUFFERED=1 SDTUNE_HOME=/tmp/sdt HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
out=${OUT:-/tmp/out}; mkdir -p "$out"
deadline=$(( $(date +%s) + ${BUDGET_S:-170} ))
left() { echo $(( deadline - $(date +%s) )); }
python3 benchmarks/side_by_side.py --save-weights sd15 /tmp/w-sd15 2> "$out/save.err"
python3 - <<'PY'
import numpy as np, pathlib
from PIL import Image
folder = pathlib.Path("/tmp/imgs"); folder.mkdir(exist_ok=True)
rng = np.random.default_rng(0)
for i in range(5):
    Image.fromarray(rng.integers(0, 255, (512, 512, 3), dtype=np.uint8)).save(folder / f"{i}.png")
PY
args=(--model /tmp/w-sd15 --data /tmp/imgs --resolution 512 --steps 20 --method lora --instance-prompt "a photo of sks dog"
      --checkpointing-steps 0 --validation-steps 0)
python3 - > "$out/floor.jsonl" <<'PY'
import json, time
t0 = time.perf_counter(); import torch; t1 = time.perf_counter()
torch.cuda.init(); torch.zeros(1, device="cuda"); torch.cuda.synchronize(); t2 = time.perf_counter()
import diffusers.training_utils, peft, accelerate  # noqa: E401,F401
from diffusers import StableDiffusionPipeline  # noqa: F401
t3 = time.perf_counter()
print(json.dumps({"import_torch_s": round(t1 - t0, 2), "cuda_start_s": round(t2 - t1, 2),
                  "import_diffusers_training_s": round(t3 - t2, 2)}))
PY
timeout $(( $(left) - 40 )) python3 benchmarks/startup_time.py --repeats 3 -- "${args[@]}" > "$out/startup.jsonl" 2> "$out/startup.err"
[ "$(left)" -gt 35 ] && timeout $(( $(left) - 5 )) python3 -X importtime -m sdtune_ui train --quiet --output /tmp/run-it "${args[@]}" \
  2> "$out/importtime.txt" > /dev/null
echo "== done, $(left) s before the deadline" >&2
cat "$out/floor.jsonl"; tail -1 "$out/startup.jsonl"
python3 - "$out/importtime.txt" <<'PY'
import re, sys
rows = [(int(m.group(2)), m.group(3).strip()) for m in re.finditer(r"import time:\s+(\d+) \|\s+(\d+) \|(.*)", open(sys.argv[1]).read())]
for cumulative, name in sorted(rows, reverse=True)[:25]:
    print(f"{cumulative / 1e6:7.2f} s  {name}")
PY
