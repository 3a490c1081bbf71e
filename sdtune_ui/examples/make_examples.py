"""Make the example dataset in sdtune_ui/examples/toy_robot: a small made-up subject, drawn in code.

Eight 128x128 pictures of "sks robot" on the five backgrounds of the demo model's scenes, drawn by the same
code (sdtune_ui/models/demo/scenes.py), so the subject matches the demo model's style but looks like none
of its robots: red, round head, yellow visor, antenna, no arms. Captions go in metadata.jsonl and sidecar
.txt files, plus a DreamBooth dataset_info.json. Run again to regenerate:
`python -m sdtune_ui.examples.make_examples`.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from sdtune_ui.models.demo.scenes import BACKGROUNDS, Scene, draw_scene

OUT = Path(__file__).resolve().parent / "toy_robot"
INSTANCE_PROMPT = "a photo of sks robot"
CLASS_PROMPT = "a photo of a robot"
SIZE = 128


def subject_scenes(count: int = 8, seed: int = 0) -> list[Scene]:
    """Where the subject stands in each picture: every background, varied size and place."""
    rng = random.Random(seed)
    return [Scene("robot", "red", BACKGROUNDS[i % len(BACKGROUNDS)], x=rng.uniform(0.4, 0.6),
                  ground=rng.uniform(0.84, 0.92), scale=rng.uniform(0.6, 0.78)) for i in range(count)]


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for old in OUT.glob("robot_*"):
        old.unlink()
    rows = []
    for index, scene in enumerate(subject_scenes()):
        name = f"robot_{index:02d}.png"
        draw_scene(scene, SIZE, subject=True).save(OUT / name, optimize=True)
        caption = f"{INSTANCE_PROMPT} {scene.background}"
        (OUT / name).with_suffix(".txt").write_text(caption + "\n")
        rows.append({"file_name": name, "text": caption})
    (OUT / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (OUT / "dataset_info.json").write_text(json.dumps(
        {"instance_prompt": INSTANCE_PROMPT, "class_prompt": CLASS_PROMPT}, indent=2) + "\n")


if __name__ == "__main__":
    main()
