"""The pre-trained offline demo model, shipped as package data: a tiny SD1 pipeline that really draws.

`demo-sd1` was trained by scripts/pretrain_demo_model.py on the captioned toy scenes of `scenes.py`
(robots, cats, houses, cars and trees in eleven colours on five backgrounds, 64x64 pixels). Unlike the
random `tiny-*` models it draws what the prompt says, so a fine-tune visibly learns a subject.

`demo-dino`, its feature model for the metrics, was trained by scripts/pretrain_demo_features.py on the same
scenes: a small DINOv2 whose features see the object, its colour, the background and the example subject
(sdtune_ui/evaluate loads it by name, like the random tiny-dino).
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
DEMO_MODELS: dict[str, Path] = {"demo-sd1": HERE / "demo-sd1"}
DEMO_FEATURE_MODELS: dict[str, Path] = {"demo-dino": HERE / "demo-dino"}


def demo_model_path(name: str) -> Path:
    """The shipped diffusers folder of a demo model."""
    if name not in DEMO_MODELS:
        raise ValueError(f"unknown demo model {name!r}; choose one of {', '.join(DEMO_MODELS)}")
    return DEMO_MODELS[name]
