"""Evaluate and sweep on full-size SD1.5 with random weights (issue 11's GPU line). GPU only; never in CI.

Builds (no download) a full-size SD1.5 pipeline, a ViT-B/32-sized CLIP and a DINOv2-small-sized model, all
random, saves them as folders, makes 5 training images at 512 px, then times through the real CLI:
- one plain LoRA run (the cost of one trial on its own, process start to output),
- a 2 learning rates x 2 step counts sweep (two trials, each checkpoint evaluated with every metric),
- `evaluate` of one run's checkpoints (seconds per checkpoint evaluation).
Prints JSON lines: {"case", "wall_s", ...} and the sweep's own timing split (train / evaluate / other).

    python3 benchmarks/bench_evaluate.py --work /tmp/bench-eval > $OUT/evaluate.jsonl
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def build_models(work: Path) -> tuple[Path, Path, Path]:
    import torch
    from full_size import build
    from transformers import (
        BitImageProcessor,
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPProcessor,
        Dinov2Config,
        Dinov2Model,
    )

    from sdtune_ui.models.tiny import _clip_tokenizer

    sd, clip, dino = work / "sd15", work / "clip-b32", work / "dinov2-small"
    torch.manual_seed(0)
    if not (sd / "model_index.json").exists():
        build("sd15").save_pretrained(sd, safe_serialization=True)
    if not (clip / "config.json").exists():
        tokenizer = _clip_tokenizer()
        # ViT-B/32 image tower and the 512-wide text tower: the real model's shapes, so its compute.
        config = CLIPConfig(text_config=dict(vocab_size=49408, bos_token_id=0, eos_token_id=1, pad_token_id=1),
                            vision_config=dict(patch_size=32), projection_dim=512)
        processor = CLIPProcessor(image_processor=CLIPImageProcessor(), tokenizer=tokenizer)
        CLIPModel(config).save_pretrained(clip)
        processor.save_pretrained(clip)
    if not (dino / "config.json").exists():
        Dinov2Model(Dinov2Config(hidden_size=384, num_attention_heads=6, num_hidden_layers=12)).save_pretrained(dino)
        BitImageProcessor(size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224}, do_center_crop=True,
                          image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]).save_pretrained(dino)
    return sd, clip, dino


def make_dataset(work: Path, size: int) -> Path:
    from PIL import Image

    from sdtune_ui.examples import EXAMPLE_DATASET

    folder = work / "data"
    folder.mkdir(parents=True, exist_ok=True)
    for path in sorted(EXAMPLE_DATASET.glob("*.png"))[:5]:
        Image.open(path).convert("RGB").resize((size, size)).save(folder / path.name)
        (folder / path.with_suffix(".txt").name).write_text("a photo of sks robot\n")
    return folder


def timed(case: str, argv: list[str], **extra) -> dict:
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "sdtune_ui", *argv], capture_output=True, text=True)
    row = {"case": case, "wall_s": round(time.perf_counter() - started, 2), "returncode": result.returncode,
           "command": "python -m sdtune_ui " + " ".join(argv), **extra}
    if result.returncode:
        row["stderr"] = result.stderr[-1500:]
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", default="/tmp/bench-eval")
    parser.add_argument("--steps", default="100,200")
    parser.add_argument("--learning-rates", default="1e-4,3e-4")
    parser.add_argument("--num-images", type=int, default=4)
    parser.add_argument("--tiny", action="store_true", help="CPU smoke test with the tiny offline models, 64 px")
    args = parser.parse_args()
    work = Path(args.work)
    started = time.perf_counter()
    sd, clip, dino = ("tiny-sd1", "tiny-clip", "tiny-dino") if args.tiny else build_models(work)
    data = make_dataset(work, 64 if args.tiny else 512)
    print(json.dumps({"case": "setup", "wall_s": round(time.perf_counter() - started, 2)}), flush=True)
    last = max(int(s) for s in args.steps.split(","))
    base = dict(model=str(sd), method="lora", data=str(data), instance_prompt="a photo of sks robot",
                mixed_precision="no" if args.tiny else "bf16", resolution=64 if args.tiny else 512,
                max_train_steps=last, checkpointing_steps=last // 2, validation_steps=0, caption_dropout=0.0,
                learning_rate=1e-4, seed=0)
    (work / "base.json").write_text(json.dumps(base))
    features = ["--clip-model", str(clip), "--dino-model", str(dino), "--fid-features", "dino",
                "--num-images", str(args.num_images)] + (["--inference-steps", "4"] if args.tiny else [])
    timed("train_one_trial", ["train", "--config", str(work / "base.json"), "--output", str(work / "plain")],
          steps=last)
    timed("evaluate_run", ["evaluate", str(work / "plain"), "--json", *features], checkpoints=2)
    metrics = [json.loads(line) for line in (work / "plain" / "metrics.jsonl").read_text().splitlines() if line]
    print(json.dumps({"case": "evaluate_per_checkpoint", "seconds": [m.get("seconds") for m in metrics]}),
          flush=True)
    timed("sweep", ["sweep", "--config", str(work / "base.json"), "--learning-rates", args.learning_rates,
                    "--steps", args.steps, "--metric", "dino", "--out", str(work / "sweep"), "--json", *features])
    sweep = json.loads((work / "sweep" / "sweep.json").read_text())
    print(json.dumps({"case": "sweep_timing", **sweep.get("timing", {})}), flush=True)


if __name__ == "__main__":
    main()
