"""Make the README's before/after pictures of the offline demo: docs/images/demo-before.png, demo-after.png.

Runs the README's demo training command (a LoRA on the example dataset, on demo-sd1; read from README.md,
the first command after the "# The offline demo" comment) into a temporary folder, then draws the same
prompts and seeds with the base model and with the LoRA:

    python scripts/make_demo_images.py

Each picture is one row per prompt ("a photo of sks robot", "a photo of a robot"), four seeds, 2x upscaled.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def readme_demo_command(output: Path) -> list[str]:
    """The README's demo training command (backslash-continued lines joined), writing to `output`."""
    lines = (REPO / "README.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("# The offline demo"))
    command = ""
    for line in lines[start + 1:]:
        if line.startswith("#"):
            continue
        command += line.rstrip("\\").strip() + " "
        if not line.endswith("\\"):
            break
    argv = shlex.split(command)
    assert argv[:3] == ["python", "-m", "sdtune_ui"], argv
    return [sys.executable, *argv[1:], "--output", str(output)]


PROMPTS = ("a photo of sks robot", "a photo of a robot")
SEEDS = range(4)


def draw(pipe, scale: int = 2) -> Image.Image:
    pipe.set_progress_bar_config(disable=True)
    rows = []
    for prompt in PROMPTS:
        images = [pipe(prompt, num_inference_steps=20, guidance_scale=5.0, output_type="np",
                       generator=torch.Generator().manual_seed(seed)).images[0] for seed in SEEDS]
        rows.append(np.concatenate(images, axis=1))
    grid = Image.fromarray((np.concatenate(rows, axis=0) * 255).round().astype(np.uint8))
    return grid.resize((grid.width * scale, grid.height * scale), Image.Resampling.NEAREST)


def main() -> None:
    from sdtune_ui.models import load_pipeline

    torch.set_num_threads(1)
    out = REPO / "docs" / "images"
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        started = time.monotonic()
        subprocess.run(readme_demo_command(Path(tmp) / "demo"), cwd=REPO, check=True)
        print(f"the demo command took {time.monotonic() - started:.0f} s")
        draw(load_pipeline("demo-sd1")).save(out / "demo-before.png", optimize=True)
        tuned = load_pipeline("demo-sd1")
        tuned.load_lora_weights(str(Path(tmp) / "demo" / "output"))
        draw(tuned).save(out / "demo-after.png", optimize=True)
    print(f"wrote {out / 'demo-before.png'} and {out / 'demo-after.png'}")


if __name__ == "__main__":
    main()
