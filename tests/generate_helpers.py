"""Tiny trained runs for the generation/export tests, trained once per session and shared by the modules.

Each run trains for a few steps on the example dataset at 32 px on the built-in tiny models (a few
seconds each on CPU). Settings are chosen to exercise the awkward cases: LoRA on every layer type with an
alpha different from the rank and text-encoder LoRA, multi-step checkpoints, SDXL's two text encoders.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from sdtune_ui.examples import EXAMPLE_DATASET

# Offline and isolated even without the shared conftest (its session fixture, when present, sets its own home).
os.environ.setdefault("SDTUNE_HOME", tempfile.mkdtemp(prefix="sdtune-gen-home-"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parent.parent

_RUNS: dict[tuple[str, str], Path] = {}
_ROOT: list[Path] = []

COMMON = dict(data=str(EXAMPLE_DATASET), resolution=32, max_train_steps=6, checkpointing_steps=3,
              learning_rate=1e-2, log_every=1, validation_steps=0, validation_inference_steps=2,
              cache_latents=True)
TI = dict(placeholder_token="<sks>", initializer_token="toy", instance_prompt="a photo of <sks>")
RUN_SETTINGS = {
    "lora": dict(model="tiny-sd1", method="lora", lora_targets="all", rank=4, lora_alpha=8,
                 train_text_encoder=True, instance_prompt="a photo of sks robot",
                 validation_prompts=["a photo of sks robot"]),
    "textual_inversion": dict(model="tiny-sd1", method="textual_inversion", learning_rate=5e-2, **TI),
    "pivotal": dict(model="tiny-sd1", method="pivotal", lora_targets="all", rank=4, **TI),
    "full": dict(model="tiny-sd1", method="full", learning_rate=1e-3, instance_prompt="a photo of sks robot"),
    "sdxl_pivotal": dict(model="tiny-sdxl", method="pivotal", lora_targets="all", rank=4, **TI),
    # LoRA variants and EMA (methods/adapters): every layer type and the text encoders, alpha != rank. The LoKr
    # runs cover both kohya cases: tiny-sd1 at rank 4 has only full factors (scale baked into lokr_w1), tiny-sdxl
    # at rank 2 with factor 8 and decompose_both has low-rank ones (the tools scale by alpha / their rank).
    **{f"{adapter}_{family}": dict(model=f"tiny-{family}", method="lora", adapter=adapter, lora_targets="all", rank=4,
                                   lora_alpha=8, train_text_encoder=True, instance_prompt="a photo of sks robot")
       for adapter in ("dora", "loha") for family in ("sd1", "sdxl")},
    "lokr_sd1": dict(model="tiny-sd1", method="lora", adapter="lokr", lora_targets="all", rank=4, lora_alpha=8,
                     train_text_encoder=True, instance_prompt="a photo of sks robot"),
    "lokr_sdxl": dict(model="tiny-sdxl", method="lora", adapter="lokr", lora_targets="all", rank=2, lora_alpha=4,
                      lokr_factor=8, decompose_both=True, train_text_encoder=True,
                      instance_prompt="a photo of sks robot"),
    **{f"lora_ema_{family}": dict(model=f"tiny-{family}", method="lora", lora_targets="all", rank=4, lora_alpha=8,
                                  train_text_encoder=True, use_ema=True, ema_decay=0.5,
                                  instance_prompt="a photo of sks robot") for family in ("sd1", "sdxl")},
    # Editing (issue 14): inpainting LoRAs on the 9-channel models, text-to-image models converted into inpainting
    # ones, ControlNets on Canny edges computed at the start of the run.
    **{f"inpaint_lora_{family}": dict(model=f"tiny-{family}-inpaint", method="lora", lora_targets="all", rank=4,
                                      instance_prompt="a photo of sks robot",
                                      validation_prompts=["a photo of sks robot"]) for family in ("sd1", "sdxl")},
    **{f"inpaint_convert_{family}": dict(model=f"tiny-{family}", method="inpaint_convert", learning_rate=1e-3,
                                         train_batch_size=1, gradient_checkpointing=False,
                                         instance_prompt="a photo of sks robot") for family in ("sd1", "sdxl")},
    **{f"controlnet_{family}": dict(model=f"tiny-{family}", method="controlnet", conditioning="canny",
                                    learning_rate=1e-3, instance_prompt="a photo of sks robot",
                                    validation_prompts=["a photo of sks robot"]) for family in ("sd1", "sdxl")},
}

# Fast generation settings: 32 px, 3 denoising steps.
FAST = dict(steps=3, width=32, height=32, guidance=5.0)


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """The tiny models are far too small to gain from intra-op threads, and on a busy 2-core machine
    OpenMP threads waiting for each other made one UNet call 100x slower (3 s instead of 0.02 s)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def trained_run(name: str) -> Path:
    """The run folder of RUN_SETTINGS[name], trained on first use (per SDTUNE_HOME)."""
    from sdtune_ui.config import TrainConfig
    from sdtune_ui.train import train

    home = os.environ.get("SDTUNE_HOME", "")
    key = (home, name)
    if key not in _RUNS:
        if not _ROOT:
            _ROOT.append(Path(tempfile.mkdtemp(prefix="sdtune-gen-runs-")))
        run_dir = _ROOT[0] / name
        shutil.rmtree(run_dir, ignore_errors=True)
        status = train(TrainConfig(**{**COMMON, **RUN_SETTINGS[name]}), run_dir)
        log = (run_dir / "train.log").read_text() if (run_dir / "train.log").exists() else ""
        assert status == "completed", log
        _RUNS[key] = run_dir
    return _RUNS[key]


def pixels(result) -> np.ndarray:
    """A GenerationResult's images as one float array (0-255)."""
    return np.stack([np.asarray(image, dtype=np.float32) for image in result.images])
