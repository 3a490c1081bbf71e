"""Generation benchmark: our GenerationEngine vs a plain diffusers pipeline, same weights, same run.

    python benchmarks/bench_generate.py [--models sd15,sdxl] [--steps 25] [--repeats 3]

For each model (SD1.5 at 512px, SDXL at 1024px) the full-size architecture is built with random weights
(benchmarks/full_size.py), saved once with `save_pretrained` in half precision, and loaded twice from that
folder: through the engine (`GenerationEngine.generate`, the path the app and the CLI take) and as a plain
`StableDiffusionPipeline` / `StableDiffusionXLPipeline` with DPMSolverMultistepScheduler (dpmsolver++).
Both run 25 steps with classifier-free guidance, one image, in the same dtype; one warm-up each, then the
timed calls alternate ours / plain; the median seconds per image is reported. One JSON line per model.
Runs on a GPU (the `device` tool); never in CI. `--tiny --device cpu` is a smoke test of this script only.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is built locally; the GPU machine has no network

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

PROMPT = "a photo of a dog on the beach"
NEGATIVE = "blue"
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def saved_pipeline(model: str, folder: Path, dtype: torch.dtype, device: str, tiny: bool) -> tuple[Path, float]:
    """The random full-size pipeline saved as a diffusers folder (built and saved once)."""
    started = time.perf_counter()
    if not (folder / "model_index.json").exists():
        if tiny:
            from sdtune_ui.models.tiny import build_tiny_pipeline

            pipe = build_tiny_pipeline({"sd15": "tiny-sd1", "sdxl": "tiny-sdxl"}[model])
        else:
            from full_size import build

            with torch.device(device):  # random init on the GPU: seconds instead of a minute on the CPU
                pipe = build(model)
        pipe.to(dtype=dtype)
        pipe.save_pretrained(folder, safe_serialization=True)
        del pipe
        gc.collect()
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    return folder, time.perf_counter() - started


def random_lora(model: str, folder: Path, dtype: torch.dtype) -> Path:
    """A rank-4 LoRA on the UNet's attention projections, saved as diffusers writes one (random numbers)."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    target = folder.parent / f"{folder.name}-lora"
    if not (target / "pytorch_lora_weights.safetensors").exists():
        unet = UNet2DConditionModel.from_pretrained(str(folder), subfolder="unet", torch_dtype=dtype)
        unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian",
                                    target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
        pipeline_class = StableDiffusionXLPipeline if model == "sdxl" else StableDiffusionPipeline
        pipeline_class.save_lora_weights(str(target), unet_lora_layers=get_peft_model_state_dict(unet))
    return target / "pytorch_lora_weights.safetensors"


def timed(call, device: str) -> float:
    _sync(device)
    started = time.perf_counter()
    call()
    _sync(device)
    return time.perf_counter() - started


def bench_model(model: str, args: argparse.Namespace) -> dict:
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline

    from sdtune_ui.generate.artifacts import Artifact
    from sdtune_ui.generate.engine import GenerationEngine, default_dtype
    from sdtune_ui.generate.options import GenerationOptions

    device = args.device
    dtype = DTYPES[args.dtype] if args.dtype != "auto" else default_dtype(device)
    name = f"{'tiny' if args.tiny else 'random'}-{model}-{args.dtype}"
    folder, build_s = saved_pipeline(model, Path(args.dir) / name, dtype, device, args.tiny)

    # Ours: the engine loads the folder the way the app loads any local model.
    engine = GenerationEngine(device=device, dtype=dtype)
    # With --lora both load the same LoRA: ours merges it into the weights (fuse_lora), plain diffusers keeps
    # it as separate layers (its default after load_lora_weights).
    lora_file = random_lora(model, folder, dtype) if args.lora else None
    artifacts = [Artifact("lora", str(lora_file), 1.0)] if lora_file else []
    options = GenerationOptions(prompt=PROMPT, negative_prompt=NEGATIVE, scheduler="dpm++", steps=args.steps,
                                guidance=7.5, seed=0, fuse_lora=bool(lora_file))
    load_ours = timed(lambda: engine.load_model(str(folder)), device)

    # Plain diffusers, same folder, same dtype, same scheduler and settings.
    pipeline_class = StableDiffusionXLPipeline if model == "sdxl" else StableDiffusionPipeline
    started = time.perf_counter()
    plain = pipeline_class.from_pretrained(str(folder), torch_dtype=dtype).to(device)
    plain.scheduler = DPMSolverMultistepScheduler.from_config(plain.scheduler.config, algorithm_type="dpmsolver++")
    plain.set_progress_bar_config(disable=True)
    if lora_file:
        plain.load_lora_weights(str(lora_file.parent))
    _sync(device)
    load_plain = time.perf_counter() - started

    def run_ours():
        result = engine.generate(str(folder), artifacts, options)
        assert len(result.images) == 1
        return result

    def run_plain():
        generator = torch.Generator(device=device).manual_seed(0)
        images = plain(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=args.steps, guidance_scale=7.5,
                       generator=generator).images
        assert len(images) == 1
        return images

    size = run_ours().images[0].size  # warm-up (cuDNN autotuning, allocator)
    run_plain()
    ours, theirs = [], []
    for _ in range(args.repeats):  # alternate, so drift in clocks hits both alike
        ours.append(timed(run_ours, device))
        theirs.append(timed(run_plain, device))
    ours_s, plain_s = statistics.median(ours), statistics.median(theirs)

    import diffusers

    record = {
        "bench": "generate", "device": torch.cuda.get_device_name() if device.startswith("cuda") else device,
        "torch": torch.__version__, "diffusers": diffusers.__version__, "model": model,
        "width": size[0], "height": size[1], "steps": args.steps,
        "scheduler": "dpm++ (DPMSolverMultistep, dpmsolver++)",
        "lora": "rank 4, attention; ours fused, plain unfused" if lora_file else None,
        "guidance": 7.5, "dtype": str(dtype).removeprefix("torch."), "repeats": args.repeats, "tiny": args.tiny,
        "ours_s_per_image": round(ours_s, 4), "plain_s_per_image": round(plain_s, 4),
        "speedup_vs_plain": round(plain_s / ours_s, 3),
        "ours_all_s": [round(t, 4) for t in ours], "plain_all_s": [round(t, 4) for t in theirs],
        "load_ours_s": round(load_ours, 2), "load_plain_s": round(load_plain, 2), "build_and_save_s": round(build_s, 2),
    }
    if device.startswith("cuda"):
        record["peak_allocated_gib_both_pipelines"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    engine.unload()
    plain = engine = None  # free both pipelines before the next model
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    return record


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="sd15,sdxl", help="Comma-separated: sd15, sdxl.")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--repeats", type=int, default=3, help="Timed calls per pipeline (median reported).")
    parser.add_argument("--dtype", choices=("auto", *DTYPES), default="auto",
                        help="auto = the engine's own default (bf16 on GPUs that support it, else fp16).")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dir", default="/tmp/sdtune-bench-models", help="Where the random pipelines are saved.")
    parser.add_argument("--lora", action="store_true", help="Both pipelines load the same random rank-4 LoRA.")
    parser.add_argument("--tiny", action="store_true", help="Tiny demo-sized models: a smoke test of this script.")
    args = parser.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = set(models) - {"sd15", "sdxl"}
    if unknown or not models:
        parser.error(f"--models takes sd15 and/or sdxl, not {', '.join(sorted(unknown)) or 'nothing'}")
    args.model_list = models
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    warnings.filterwarnings("ignore", message=".*invalid value encountered in cast.*")  # random weights: NaN pixels
    for model in args.model_list:
        try:
            record = bench_model(model, args)
        except Exception as err:  # noqa: BLE001 - one model failing must not hide the other's result
            record = {"bench": "generate", "model": model, "error": f"{type(err).__name__}: {err}"[:600]}
        print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
