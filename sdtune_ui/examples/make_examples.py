"""Make the example dataset in sdtune_ui/examples/toy_robot: a small made-up subject, drawn in code.

Eight 128x128 photos-to-be of "sks robot" (a red robot with a yellow visor) on varied backgrounds,
with captions in metadata.jsonl and sidecar .txt files, plus a DreamBooth dataset_info.json.
Run again to regenerate: `python assets/make_examples.py`.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from PIL import Image, ImageDraw

OUT = Path(__file__).parent / "examples" / "toy_robot"
BACKGROUNDS = [("on a beach", (238, 214, 175), (120, 180, 230)), ("in a forest", (40, 110, 50), (90, 150, 90)),
               ("in a city", (120, 120, 130), (180, 190, 200)), ("on a table", (150, 100, 60), (230, 225, 215))]


def draw_robot(background: tuple, sky: tuple, rng: random.Random) -> Image.Image:
    image = Image.new("RGB", (128, 128), sky)
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 80, 128, 128), fill=background)
    x, y, s = rng.randint(24, 56), rng.randint(20, 36), rng.randint(40, 52)
    draw.rectangle((x, y + s // 3, x + s, y + s + s // 3), fill=(200, 30, 30))          # body
    draw.rectangle((x + s // 5, y, x + 4 * s // 5, y + s // 3), fill=(210, 40, 40))      # head
    draw.rectangle((x + s // 4, y + s // 10, x + 3 * s // 4, y + s // 4), fill=(250, 220, 40))  # visor
    draw.rectangle((x + s // 6, y + s + s // 3, x + s // 3, y + s + s // 2 + 6), fill=(60, 60, 60))
    draw.rectangle((x + 2 * s // 3, y + s + s // 3, x + 5 * s // 6, y + s + s // 2 + 6), fill=(60, 60, 60))
    return image


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    rows = []
    for index in range(8):
        place, ground, sky = BACKGROUNDS[index % len(BACKGROUNDS)]
        name = f"robot_{index:02d}.png"
        draw_robot(ground, sky, rng).save(OUT / name, optimize=True)
        caption = f"a photo of sks robot {place}"
        (OUT / name).with_suffix(".txt").write_text(caption + "\n")
        rows.append({"file_name": name, "text": caption})
    (OUT / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (OUT / "dataset_info.json").write_text(json.dumps(
        {"instance_prompt": "a photo of sks robot", "class_prompt": "a photo of a robot"}, indent=2) + "\n")


if __name__ == "__main__":
    main()
