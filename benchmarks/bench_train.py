"""Training-step benchmark through the project's real training core, on full-size random-weight models.

    python benchmarks/bench_train.py --model sd15 --method lora --batch 1 [--compile reduce-overhead]

Prints one JSON line: device, versions, settings, steps/s, images/s, peak memory, FLOPs per step
(torch's FlopCounterMode, counted on an eager step) and MFU against a bf16 matmul measured in the same run.
Runs on a GPU (the `device` tool); never in CI.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from full_size import build  # noqa: E402

from sdtune_ui.config import TrainConfig  # noqa: E402
from sdtune_ui.runs import RunDir, is_main_process  # noqa: E402
from sdtune_ui.train.speed import compile_unet  # noqa: E402
from sdtune_ui.train.trainer import Trainer  # noqa: E402

METHODS = {"lora": "lora", "full": "full", "dreambooth": "dreambooth", "ti": "textual_inversion",
           "pivotal": "pivotal"}


def matmul_tflops() -> float:
    """bf16 matmul rate of this GPU, measured now (the MFU denominator)."""
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(20):
        a @ b
    end.record()
    torch.cuda.synchronize()
    return 2 * 8192**3 * 20 / (start.elapsed_time(end) / 1000) / 1e12


def phase_peak() -> tuple[int, int]:
    """Peak allocated and reserved bytes since the last call (then the counters start again)."""
    torch.cuda.synchronize()
    peak = (torch.cuda.max_memory_allocated(), torch.cuda.max_memory_reserved())
    torch.cuda.reset_peak_memory_stats()
    return peak


def make_dataset(folder: Path, resolution: int, count: int = 8) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for index in range(count):
        pixels = rng.integers(0, 255, (resolution, resolution, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{index:02d}.png")
        (folder / f"{index:02d}.txt").write_text("a photo of sks dog on a beach")


def count_flops(trainer: Trainer) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    batch = trainer._batch(0)
    counter = FlopCounterMode(display=False)
    with counter:
        loss = trainer.compute_loss(batch)
        trainer.accelerator.backward(loss)
    trainer.optimizer.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


KERNEL_KINDS = (  # substring of a CUDA kernel's name -> what it does (first match wins)
    ("attention", ("flash", "fmha", "attention", "sdpa")),
    ("matmul", ("gemm", "cutlass", "sm90_xmma", "cublas", "nvjet", "mm_", "splitk")),
    ("convolution", ("conv", "cudnn", "implicit", "wgrad", "dgrad", "fprop")),
    ("normalization", ("norm", "welford")),
    ("optimizer", ("adam", "multi_tensor", "foreach")),
    ("copy", ("memcpy", "memset", "copy")),
    ("fused elementwise (inductor)", ("triton",)),
    ("elementwise", ("elementwise", "vectorized", "reduce", "unrolled", "index")),
)


def kernel_kind(name: str) -> str:
    lowered = name.lower()
    for kind, needles in KERNEL_KINDS:
        if any(needle in lowered for needle in needles):
            return kind
    return "other"


def train_steps(trainer: Trainer, steps: int) -> float:
    """Run `steps` more training steps (no host sync inside); their wall time in seconds, GPU work included."""
    trainer.total_steps = trainer.step + steps
    torch.cuda.synchronize()
    started = time.perf_counter()
    trainer.fit()
    torch.cuda.synchronize()
    return time.perf_counter() - started


def profile_steps(trainer: Trainer, steps: int) -> dict:
    """torch.profiler over a few steps: GPU busy share of the wall time, time by kernel kind, top kernels."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        wall_ms = train_steps(trainer, steps) * 1000 / steps
    kernels = [e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA
               and e.self_device_time_total > 0]
    total_us = sum(e.self_device_time_total for e in kernels)
    by_kind: dict[str, float] = {}
    for event in kernels:
        kind = kernel_kind(event.key)
        by_kind[kind] = by_kind.get(kind, 0.0) + event.self_device_time_total
    top = sorted(kernels, key=lambda e: e.self_device_time_total, reverse=True)[:12]
    return {
        "steps": steps, "wall_ms_per_step": round(wall_ms, 2),
        "gpu_kernel_ms_per_step": round(total_us / 1000 / steps, 2),
        "gpu_busy_share": round(total_us / 1000 / steps / wall_ms, 3),
        "kernel_ms_per_step_by_kind": {k: round(v / 1000 / steps, 2) for k, v in
                                       sorted(by_kind.items(), key=lambda kv: -kv[1])},
        "kernel_launches_per_step": round(sum(e.count for e in kernels) / steps),
        "top_kernels": [{"name": e.key[:90], "ms_per_step": round(e.self_device_time_total / 1000 / steps, 3),
                         "calls_per_step": round(e.count / steps, 1)} for e in top],
    }


def run(args: argparse.Namespace) -> dict:
    import diffusers

    resolution = args.resolution or (1024 if args.model == "sdxl" else 512)
    method = METHODS[args.method]
    work = Path(tempfile.mkdtemp())
    make_dataset(work / "data", resolution)
    prompt = "a photo of <sks> dog" if method in ("textual_inversion", "pivotal") else "a photo of sks dog"
    config = TrainConfig(model=f"random-{args.model}", method=method, data=str(work / "data"), resolution=resolution,
                         train_batch_size=args.batch, mixed_precision="bf16", max_train_steps=10_000,
                         checkpointing_steps=0, validation_steps=0, log_every=10_000, caption_dropout=0.1,
                         instance_prompt=prompt, rank=args.rank, lora_alpha=args.rank,
                         gradient_checkpointing=args.gradient_checkpointing, learning_rate=1e-5,
                         cache_latents=not args.no_cache, cache_text_embeddings=not args.no_cache,
                         offload_frozen_encoders=not args.no_offload, compile_unet="none",
                         cuda_graph=args.cuda_graph, channels_last=args.channels_last)
    torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))  # one GPU per process under accelerate
    with torch.device("cuda"):  # random init on the GPU: seconds instead of a minute on the CPU
        pipeline = build(args.model)
    # Then hand it over on the CPU in fp32, as load_pipeline does in the app: the trainer moves each part to
    # the GPU in its training dtype, so the peak below is the training's, not the fp32 build's.
    pipeline.to("cpu")
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    trainer = Trainer(config, RunDir(work / "run").create(), pipeline=pipeline)
    trainer.setup()
    setup_s = time.perf_counter() - started
    peaks = {"setup": phase_peak()}       # loading to the GPU, latent and text caches
    flops = count_flops(trainer)
    peaks["flop_count"] = phase_peak()    # one eager step under FlopCounterMode
    unet = trainer.parts.unet
    compiled_mode = args.compile
    if args.compile != "none":  # the trainer's own compile step (after the eager FLOP count)
        compiled_mode = compile_unet(unet, args.compile, args.compile_scope, args.gradient_checkpointing)

    # Warm-up (compilation, cuDNN autotuning, allocator), then the timed steps.
    warmup_s = train_steps(trainer, args.warmup)
    elapsed = train_steps(trainer, args.steps)
    peaks["steps"] = phase_peak()         # warm-up (compilation, CUDA graphs) and the timed steps
    steps_per_s = args.steps / elapsed
    profile = profile_steps(trainer, args.profile) if args.profile else None
    peak_tflops = matmul_tflops()
    return {
        "device": torch.cuda.get_device_name(), "torch": torch.__version__, "diffusers": diffusers.__version__,
        "model": args.model, "method": args.method, "batch": args.batch, "resolution": resolution,
        "compile": compiled_mode, "cuda_graph": bool(trainer.graphed and trainer.graphed.captured),
        "capture_s": round(trainer.graphed.capture_seconds, 2) if trainer.graphed else None,
        "gradient_checkpointing": args.gradient_checkpointing, "rank": args.rank,
        "cache": not args.no_cache, "steps": args.steps,
        "processes": trainer.accelerator.num_processes,
        "steps_per_s": round(steps_per_s, 3),
        "images_per_s": round(steps_per_s * args.batch * trainer.accelerator.num_processes, 2),
        # Training's peak: setup and steps. The FLOP count's extra eager step is the benchmark's own (a compiled
        # run never takes an eager step); its peak stays visible by phase.
        "peak_allocated_gib": round(max(peaks[p][0] for p in ("setup", "steps")) / 2**30, 2),
        "peak_reserved_gib": round(max(peaks[p][1] for p in ("setup", "steps")) / 2**30, 2),
        "peak_allocated_gib_by_phase": {name: round(a / 2**30, 2) for name, (a, _) in peaks.items()},
        "tflop_per_step": round(flops / 1e12, 3), "matmul_tflops": round(peak_tflops, 1),
        "mfu": round(flops * steps_per_s / (peak_tflops * 1e12), 4),
        "channels_last": args.channels_last, "compile_scope": args.compile_scope, "offload": not args.no_offload,
        "profile": profile,
        "setup_s": round(setup_s, 1), "warmup_s": round(warmup_s, 1), "peak_from": "trainer setup (model on CPU)",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("sd15", "sdxl"), default="sd15")
    parser.add_argument("--method", choices=tuple(METHODS), default="lora")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--resolution", type=int, default=0)
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--compile", default="none", choices=("none", "default", "reduce-overhead",
                                                              "max-autotune-no-cudagraphs"))
    parser.add_argument("--compile-scope", choices=("whole", "blocks"), default="whole",
                        help="Compile the whole UNet, or each repeated transformer block once (faster compile).")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--cuda-graph", choices=("auto", "off"), default="off",
                        help="Capture the whole step as a CUDA graph (the trainer's cuda_graph setting).")
    parser.add_argument("--profile", type=int, default=0, help="Profile this many extra steps (torch.profiler).")
    parser.add_argument("--no-offload", action="store_true", help="Keep cached encoders on the GPU.")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--no-cache", action="store_true", help="Encode images and prompts every step.")
    result = run(parser.parse_args())
    if is_main_process():
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
