"""Condition images for ControlNet training: the user's own (`a-condlabel.png` beside `a.png`, OneTrainer's name),
or computed from each picture by a detector: Canny edges (OpenCV) or depth (any transformers depth-estimation
model: Depth Anything, DPT, ...; `tiny-depth` offline).

`write_conditions` computes them at ingest into the dataset folder, where the Dataset tab shows them beside their
pictures and the doctor checks that every picture has one; the trainer reads them from there, or computes the
missing ones in memory when the run asks for a detector (TrainConfig.conditioning).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from sdtune_ui.data.formats import condition_name_for
from sdtune_ui.errors import SdtuneError
from sdtune_ui.paths import cache_dir

DETECTORS = ("canny", "depth")
DEFAULT_DEPTH_MODEL = "depth-anything/Depth-Anything-V2-Small-hf"
TINY_DEPTH = "tiny-depth"
# Hysteresis thresholds of the Canny detector on 8-bit grey values: the ones ControlNet's canny model was
# trained with (lllyasviel's annotator and diffusers' examples use 100 / 200).
CANNY_LOW, CANNY_HIGH = 100, 200


def canny(image: Image.Image, low: int = CANNY_LOW, high: int = CANNY_HIGH) -> Image.Image:
    """White edges on black, as an RGB picture the size of `image` (what canny ControlNets read)."""
    try:
        import cv2
    except ImportError as err:
        raise SdtuneError("Canny edges need OpenCV: pip install opencv-python-headless") from err
    grey = np.asarray(image.convert("L"))
    edges = cv2.Canny(grey, low, high)
    return Image.fromarray(np.repeat(edges[..., None], 3, axis=2), "RGB")


class DepthEstimator:
    """A transformers depth-estimation model (any Hub id or folder, or `tiny-depth`): pictures -> depth pictures,
    near = bright, normalised per picture to 0-255 (as depth ControlNets were trained)."""

    def __init__(self, model: str = DEFAULT_DEPTH_MODEL, device: str | None = None):
        from transformers import AutoImageProcessor, AutoModelForDepthEstimation

        source = str(tiny_depth_path()) if model == TINY_DEPTH else model
        try:
            self.processor = AutoImageProcessor.from_pretrained(source)
            self.model = AutoModelForDepthEstimation.from_pretrained(source).eval()
        except (OSError, ValueError) as err:
            raise SdtuneError(f"Could not load the depth model {model!r}: {err}. Give a transformers depth-estimation "
                              f"model (e.g. {DEFAULT_DEPTH_MODEL}) or {TINY_DEPTH} offline.") from err
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(self.device)

    @torch.no_grad()
    def __call__(self, image: Image.Image) -> Image.Image:
        inputs = self.processor(images=image.convert("RGB"), return_tensors="pt").to(self.device)
        outputs = self.model(**inputs)
        depth = self.processor.post_process_depth_estimation(outputs, target_sizes=[(image.height, image.width)])
        values = depth[0]["predicted_depth"].float().cpu().numpy()
        low, high = float(values.min()), float(values.max())
        scaled = (values - low) / (high - low) if high > low else np.zeros_like(values)
        grey = (scaled * 255).round().astype(np.uint8)
        return Image.fromarray(np.repeat(grey[..., None], 3, axis=2), "RGB")


def detector(name: str, depth_model: str = DEFAULT_DEPTH_MODEL) -> Callable[[Image.Image], Image.Image]:
    """The function that turns a picture into its condition picture."""
    if name == "canny":
        return canny
    if name == "depth":
        return DepthEstimator(depth_model)
    raise SdtuneError(f"Unknown condition detector {name!r}; choose one of {', '.join(DETECTORS)}.")


@dataclass
class ConditionReport:
    written: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)      # had a condition image already (not overwritten)
    failed: list[str] = field(default_factory=list)    # "name (why)"


def write_conditions(folder: str | Path, name: str, *, depth_model: str = DEFAULT_DEPTH_MODEL,
                     overwrite: bool = False, progress: Callable[[int, int], None] | None = None) -> ConditionReport:
    """Compute a condition image (`a-condlabel.png`) beside every training picture of a dataset folder, in any
    layout the trainer reads. Pictures that have one keep it unless `overwrite`."""
    from sdtune_ui.data.images import load_image
    from sdtune_ui.data.layouts import scan_dataset

    scan = scan_dataset(Path(folder))
    make = detector(name, depth_model)
    report = ConditionReport()
    for index, file in enumerate(scan.files):
        if progress:
            progress(index, len(scan.files))
        if file.condition_path is not None and not overwrite:
            report.kept.append(file.name)
            continue
        loaded = load_image(file.path, name=file.name)
        if not loaded.ok:
            report.failed.append(f"{file.name} ({loaded.reason})")
            continue
        target = file.path.with_name(condition_name_for(file.path.name))
        partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
        make(loaded.image).save(partial, "PNG")
        partial.replace(target)
        report.written.append(file.name)
    return report


def tiny_depth_path() -> Path:
    """`tiny-depth`: a Depth Anything model at toy width (random weights, built from a config once and cached), so
    the depth path runs offline. Its depth maps are deterministic functions of the pixels, not real depth."""
    target = cache_dir("models") / TINY_DEPTH
    if (target / "config.json").exists():
        return target
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config, DPTImageProcessor

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        backbone = Dinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, mlp_ratio=2,
                                image_size=64, patch_size=8, reshape_hidden_states=False,
                                out_features=["stage1", "stage2", "stage3", "stage4"])
        config = DepthAnythingConfig(backbone_config=backbone, patch_size=8, reassemble_hidden_size=32,
                                     reassemble_factors=[4, 2, 1, 0.5], neck_hidden_sizes=[8, 16, 32, 32],
                                     fusion_hidden_size=16, head_hidden_size=8)
        model: Any = DepthAnythingForDepthEstimation(config)
    processor = DPTImageProcessor(do_resize=True, size={"height": 64, "width": 64}, keep_aspect_ratio=True,
                                  ensure_multiple_of=8, do_normalize=True, image_mean=[0.485, 0.456, 0.406],
                                  image_std=[0.229, 0.224, 0.225])
    partial = target.with_name(f"{TINY_DEPTH}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial, safe_serialization=True)
    processor.save_pretrained(partial)
    if not (target / "config.json").exists():
        shutil.rmtree(target, ignore_errors=True)
        partial.rename(target)
    else:
        shutil.rmtree(partial, ignore_errors=True)
    return target


def attach_conditions(examples: list, conditioning: str, *, depth_model: str = DEFAULT_DEPTH_MODEL,
                      log: Callable[[str], None] = lambda message: None) -> None:
    """Give every example its condition picture (`example.condition`): its `a-condlabel.png`, else (when
    `conditioning` names a detector) computed from the picture in memory. Raises when pictures lack one."""
    missing = []
    for example in examples:
        if example.condition_path:
            with Image.open(example.condition_path) as condition:
                example.condition = condition.convert("RGB")
        else:
            missing.append(example)
    if not missing:
        return
    if conditioning not in DETECTORS:
        names = ", ".join(ex.name for ex in missing[:3])
        raise SdtuneError(f"{len(missing)} of {len(examples)} picture(s) have no condition picture (e.g. {names}): "
                          "put a-condlabel.png beside a.png, compute them with `python -m sdtune_ui dataset "
                          "conditions DATA --detector canny` (or depth), or set conditioning to canny or depth.")
    log(f"Computing {conditioning} conditions for {len(missing)} picture(s) without a-condlabel.png")
    make = detector(conditioning, depth_model)
    for example in missing:
        example.condition = make(example.image)
