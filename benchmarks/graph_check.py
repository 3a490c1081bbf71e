"""On the GPU: does the captured step (cuda_graph=auto) learn what the eager step learns, on full-size models?

    python benchmarks/graph_check.py --model sd15 --methods lora ti --steps 8

For each method: the same random pipeline (copied), the same data and seed, once eager and once captured;
prints one JSON line per method with both loss curves, their largest relative difference, the largest difference
of the trained weights, whether the graph was captured (or why not), each run's steps/s and peak allocated memory.

`--gradient-checkpointing` checks both runs with checkpointing (the captured one then recomputes inside the
graph); `--no-rng-stash` also stops torch.utils.checkpoint from saving the CUDA generator's state per block (the
UNets have no dropout to replay; the check that made capture_plan accept checkpointing ran both ways).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_train import METHODS, make_dataset  # noqa: E402
from full_size import build  # noqa: E402

from sdtune_ui.config import TrainConfig  # noqa: E402
from sdtune_ui.runs import RunDir  # noqa: E402
from sdtune_ui.train.trainer import Trainer  # noqa: E402


def train(pipeline, config: TrainConfig, folder: Path) -> tuple[list[float], dict, list[str], float, float]:
    run = RunDir(folder).create()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    trainer = Trainer(config, run, pipeline=pipeline)
    trainer.setup()
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    started = time.perf_counter()
    trainer.fit()
    sync()
    seconds = time.perf_counter() - started
    events = run.read_events()
    losses = [e["loss"] for e in events if e["kind"] == "step"]
    logs = [e["message"] for e in events if e["kind"] == "log" and ("graph" in e["message"] or "eager" in e["message"])]
    state = {k: v.float().cpu() for k, v in trainer.method.trainable_state(trainer.parts).items()}
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0
    del trainer
    torch.cuda.empty_cache()
    return losses, state, logs, config.max_train_steps / seconds, peak


def checkpoint_without_rng_stash() -> None:
    """torch.utils.checkpoint without saving and restoring the CUDA generator's state per block."""
    import functools

    import torch.utils.checkpoint

    torch.utils.checkpoint.checkpoint = functools.partial(torch.utils.checkpoint.checkpoint, preserve_rng_state=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("sd15", "sdxl"), default="sd15")
    parser.add_argument("--methods", nargs="+", default=["lora", "ti"])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--tiny", action="store_true", help="CPU smoke test of this script with the tiny model.")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="Both runs with gradient checkpointing.")
    parser.add_argument("--no-rng-stash", action="store_true",
                        help="Checkpointing without saving and restoring the CUDA generator per block.")
    args = parser.parse_args()
    if args.no_rng_stash:
        checkpoint_without_rng_stash()
    resolution = 64 if args.tiny else 1024 if args.model == "sdxl" else 512
    work = Path(tempfile.mkdtemp())
    make_dataset(work / "data", resolution, count=5)
    torch.manual_seed(0)
    if args.tiny:
        from sdtune_ui.models import load_pipeline

        original = load_pipeline("tiny-sd1")
    else:
        with torch.device("cuda"):
            original = build(args.model)
        original.to("cpu")
    for name in args.methods:
        method = METHODS[name]
        prompt = "a photo of <sks> dog" if method in ("textual_inversion", "pivotal") else "a photo of sks dog"
        common = dict(model=f"random-{args.model}", method=method, data=str(work / "data"), resolution=resolution,
                      mixed_precision="bf16", max_train_steps=args.steps, checkpointing_steps=0, validation_steps=0,
                      log_every=1, instance_prompt=prompt, learning_rate=1e-4 if name != "ti" else 5e-4,
                      lr_scheduler="linear", lr_warmup_steps=3, compile_unet="none",
                      gradient_checkpointing=args.gradient_checkpointing)
        eager = train(copy.deepcopy(original), TrainConfig(cuda_graph="off", **common), work / f"{name}-eager")
        graphed = train(copy.deepcopy(original), TrainConfig(cuda_graph="auto", **common), work / f"{name}-graph")
        loss_diff = max(abs(a - b) / max(abs(a), 1e-8) for a, b in zip(eager[0], graphed[0]))
        weight_diff = max(float((eager[1][k] - graphed[1][k]).abs().max()) for k in eager[1])
        print(json.dumps({"check": "graph_vs_eager", "model": args.model, "method": name, "steps": args.steps,
                          "eager_losses": eager[0], "graph_losses": graphed[0], "max_rel_loss_diff": loss_diff,
                          "max_abs_weight_diff": weight_diff, "graph_logs": graphed[2],
                          "eager_steps_per_s": round(eager[3], 2), "graph_steps_per_s": round(graphed[3], 2),
                          "eager_peak_gib": round(eager[4], 2), "graph_peak_gib": round(graphed[4], 2),
                          "gradient_checkpointing": args.gradient_checkpointing, "no_rng_stash": args.no_rng_stash,
                          "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"}),
              flush=True)


if __name__ == "__main__":
    main()
