"""What the first training steps of a fresh process pay once, by attention backend (issue 12's warm-up).

    python benchmarks/first_step.py            # every case, each in its own process
    python benchmarks/first_step.py --case cudnn --model sd15

Each case builds the full-size UNet (random, bf16 weights) on the GPU, then times, with a sync after each:
the first three forward+backward passes at batch 1 (what lazy kernel loading and per-shape plan building add),
20 eager passes (steady), and 20 replays of the same pass captured as a CUDA graph. Cases, in this order, each
with an empty CUDA kernel cache (CUDA_CACHE_PATH) unless said: `cudnn` (torch's default attention order, cuDNN
first on Hopper), `cudnn-again` (the same, reusing `cudnn`'s kernel cache: what a second run on the machine
pays), `flash` (cuDNN attention off: flash or memory-efficient). One JSON line per case.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

CASES = ("cudnn", "cudnn-again", "flash")


def timed(fn, repeats: int) -> list[float]:
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        seconds.append(round(time.perf_counter() - started, 4))
    return seconds


def measure(case: str, model: str) -> dict:
    from full_size import build

    started = time.perf_counter()
    torch.empty(1, device="cuda")
    context_s = time.perf_counter() - started
    if case == "flash":   # the others keep torch's default order
        torch.backends.cuda.enable_cudnn_sdp(False)
    torch.manual_seed(0)
    with torch.device("cuda"):
        unet = build(model).unet.to(torch.bfloat16)
    unet.requires_grad_(False)
    for module in unet.modules():   # one trainable weight (the first square Linear), a stand-in for an adapter
        if isinstance(module, torch.nn.Linear) and module.out_features == module.in_features:
            module.weight.requires_grad_(True)
            break
    size = 128 if model == "sdxl" else 64
    latents = torch.randn(1, 4, size, size, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    text = torch.randn(1, 77, unet.config.cross_attention_dim, device="cuda", dtype=torch.bfloat16)
    timestep = torch.tensor([500], device="cuda")
    extra = {}
    if model == "sdxl":
        extra["added_cond_kwargs"] = {"text_embeds": torch.randn(1, 1280, device="cuda", dtype=torch.bfloat16),
                                      "time_ids": torch.randn(1, 6, device="cuda", dtype=torch.bfloat16)}

    def step() -> None:
        out = unet(latents, timestep, text, **extra).sample
        out.float().pow(2).mean().backward()

    first = timed(step, 3)
    eager = timed(step, 20)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    started = time.perf_counter()
    with torch.cuda.graph(graph):
        step()
    capture_s = time.perf_counter() - started
    replays = timed(graph.replay, 20)
    return {"case": case, "model": model, "context_s": round(context_s, 3), "first_steps_s": first,
            "eager_step_s": sorted(eager)[len(eager) // 2], "capture_s": round(capture_s, 3),
            "graph_step_s": sorted(replays)[len(replays) // 2], "device": torch.cuda.get_device_name(),
            "torch": torch.__version__}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=CASES)
    parser.add_argument("--model", default="sd15", choices=("sd15", "sdxl"))
    args = parser.parse_args()
    if args.case:
        print(json.dumps(measure(args.case, args.model)), flush=True)
        return
    caches = Path(tempfile.mkdtemp())
    for case in CASES:
        kernels = caches / case.removesuffix("-again")
        subprocess.run([sys.executable, __file__, "--case", case, "--model", args.model], check=False,
                       env={**os.environ, "CUDA_CACHE_PATH": str(kernels)})
        size = sum(f.stat().st_size for f in kernels.rglob("*") if f.is_file()) if kernels.exists() else 0
        print(json.dumps({"case": case, "kernel_cache_mib": round(size / 2**20, 1)}), flush=True)


if __name__ == "__main__":
    main()
