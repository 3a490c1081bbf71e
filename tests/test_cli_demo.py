"""The README's offline demo: one CLI command trains a LoRA on the example dataset in under two minutes."""

from __future__ import annotations

import subprocess
import sys
import time

import torch

from sdtune_ui.models import load_pipeline
from tests.conftest import EXAMPLE_DATASET, REPO
from tests.train_helpers import generate_latents


def test_demo_command_trains_a_lora_that_loads_and_changes_the_output(tmp_path):
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "sdtune_ui", "train", "--model", "tiny-sd1", "--method", "lora", "--data",
         str(EXAMPLE_DATASET), "--steps", "30", "--output", str(tmp_path / "demo")],
        capture_output=True, text=True, cwd=REPO, timeout=300)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr[-2000:]
    assert "completed" in result.stdout
    assert elapsed < 120
    # The user sees where the time goes and how far it got: set-up phases, then progress lines.
    assert "Dataset and model loaded in" in result.stderr
    progress = [line for line in result.stderr.splitlines() if "/30" in line and "loss" in line]
    assert progress and "30/30" in progress[-1] and "it/s" in progress[-1] and "ETA" in progress[-1]
    lora = tmp_path / "demo" / "output" / "pytorch_lora_weights.safetensors"
    assert lora.exists()

    base = generate_latents(load_pipeline("tiny-sd1"), "a photo of sks robot")
    pipe = load_pipeline("tiny-sd1")
    pipe.load_lora_weights(str(lora.parent))
    assert not torch.allclose(generate_latents(pipe, "a photo of sks robot"), base)


def test_bad_settings_exit_with_a_message_per_field_before_loading_anything(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "sdtune_ui", "train", "--data", str(tmp_path), "--resolution", "100", "--lr", "0"],
        capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 2
    assert "resolution" in result.stderr and "learning_rate" in result.stderr
