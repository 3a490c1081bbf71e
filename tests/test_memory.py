"""The memory estimate against the measured GPU peaks, the next memory saver, and presets that only pick
optimizers that are installed."""

from __future__ import annotations

import importlib.util
import logging
import sys
from pathlib import Path

import pytest
import torch

from sdtune_ui.config import TrainConfig, installed_optimizer
from sdtune_ui.families import family_named
from sdtune_ui.presets import preset, preset_values
from sdtune_ui.train.memory import MemoryEstimate, estimate_memory, memory_line, next_memory_saving
from sdtune_ui.train.setup import build_optimizer

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def measured_cases():
    spec = importlib.util.spec_from_file_location("fit_memory", BENCHMARKS / "fit_memory.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module.load_cases()


CASES = measured_cases()


@pytest.mark.parametrize("case", CASES, ids=[f"{c.source} {c.label}" for c in CASES])
def test_estimate_is_within_20_percent_of_the_measured_peak(case):
    estimate = case.estimate().total_gib
    assert estimate == pytest.approx(case.measured_gib, rel=0.20), case.estimate().parts


def test_the_cases_cover_each_family_method_and_memory_setting():
    labels = " | ".join(c.label for c in CASES)
    for words in ("sd15 lora", "sdxl lora", "sd15 dreambooth", "sdxl full", "sd15 ti", "GC", "compiled (whole)",
                  "compiled (blocks)", "2 GPUs DDP", "2 GPUs FSDP", "bs16"):
        assert words in labels
    assert len(CASES) >= 20


def test_memory_savers_lower_the_estimate_in_the_expected_directions():
    sdxl = family_named("sdxl")
    base = TrainConfig(model="m", data="d", method="full", mixed_precision="bf16", compile_unet="none")
    plain = estimate_memory(base, sdxl).total_gib
    assert estimate_memory(TrainConfig(**{**base.to_dict(), "gradient_checkpointing": True}), sdxl).total_gib < plain
    assert estimate_memory(TrainConfig(**{**base.to_dict(), "optimizer": "adamw8bit"}), sdxl).total_gib < plain - 10
    assert estimate_memory(TrainConfig(**{**base.to_dict(), "use_ema": True}), sdxl).total_gib > plain + 9
    assert estimate_memory(TrainConfig(**{**base.to_dict(), "train_batch_size": 2}), sdxl).total_gib > plain
    lora = TrainConfig(model="m", data="d", method="lora", mixed_precision="bf16", compile_unet="none")
    small, big = estimate_memory(lora, sdxl).total_gib, estimate_memory(
        TrainConfig(**{**lora.to_dict(), "rank": 128, "lora_targets": "all", "train_text_encoder": True}), sdxl)
    assert big.total_gib > small + 1 and big.parts["weights"] > estimate_memory(lora, sdxl).parts["weights"]
    assert estimate_memory(TrainConfig(**{**lora.to_dict(), "resolution": 512}), sdxl).total_gib < small - 3


def test_the_line_says_whether_it_fits_and_what_to_try():
    config = TrainConfig(model="m", data="d", method="full", mixed_precision="bf16")
    estimate = estimate_memory(config, family_named("sd1"))
    assert not estimate.fits(12) and estimate.fits(24)
    assert "WILL NOT FIT" in estimate.describe("RTX 3060", 12) and estimate.describe("RTX 4090", 24).endswith("fits")
    assert "no GPU detected" in estimate.describe(None, None)
    assert "demo model" in memory_line(TrainConfig(model="tiny-sd1", data="d"), "RTX", 8)
    assert MemoryEstimate(1.0, summary="x").fits(2.0)


def test_next_memory_saver_order():
    config = TrainConfig(model="m", data="d", train_batch_size=4, resolution=768, optimizer="adamw")
    seen = []
    while (fallback := next_memory_saving(config)) is not None:
        seen.append(fallback.changes)
        config = fallback.apply(config)
    optimizer = "adamw8bit" if importlib.util.find_spec("bitsandbytes") else "adafactor"
    assert seen == [{"gradient_checkpointing": True},
                    {"train_batch_size": 2, "gradient_accumulation_steps": 2},
                    {"train_batch_size": 1, "gradient_accumulation_steps": 4},
                    {"optimizer": optimizer}, {"resolution": 576}, {"resolution": 384}, {"resolution": 256}]
    assert next_memory_saving(TrainConfig(gradient_checkpointing=True, optimizer="adafactor"), native=1024) \
        .changes == {"resolution": 768}


def test_presets_pick_an_installed_optimizer_and_say_why(monkeypatch, caplog):
    import sdtune_ui.config as config_module

    monkeypatch.setattr(config_module, "optimizer_available", lambda name: name in ("adamw", "adafactor"))
    with caplog.at_level(logging.WARNING):
        values = preset_values("lora", "8 GB")
    assert values["optimizer"] == "adafactor"
    assert "adamw8bit needs bitsandbytes" in caplog.text and "pip install sdtune_ui[8bit]" in caplog.text
    assert installed_optimizer("prodigy")[0] == "adamw"
    assert preset("lora", "8 GB", data="d").optimizer == "adafactor"


def test_adafactor_uses_the_runs_learning_rate():
    weight = torch.nn.Parameter(torch.ones(4, 4))
    optimizer = build_optimizer(TrainConfig(optimizer="adafactor", learning_rate=0.01),
                                [{"params": [weight], "lr": 0.01}])
    weight.grad = torch.ones(4, 4)
    optimizer.step()
    assert type(optimizer).__name__ == "Adafactor" and optimizer.param_groups[0]["lr"] == 0.01
    assert torch.allclose(weight, torch.full((4, 4), 0.99), atol=1e-3)  # one step of lr, not a relative step


def test_a_missing_optional_optimizer_names_its_extra(monkeypatch):
    import sdtune_ui.config as config_module
    from sdtune_ui.errors import ConfigError

    monkeypatch.setattr(config_module, "optimizer_available", lambda name: name == "adamw")
    with pytest.raises(ConfigError, match=r"pip install sdtune_ui\[prodigy\]"):
        build_optimizer(TrainConfig(optimizer="prodigy"), [], check_only=True)


def test_the_model_folder_gives_family_and_resolution(tmp_path):
    import json

    model = tmp_path / "sd21-like"
    for part, config in (("unet", {"sample_size": 96, "use_linear_projection": True}),
                         ("vae", {"block_out_channels": [128, 256, 512, 512]})):
        (model / part).mkdir(parents=True)
        (model / part / "config.json").write_text(json.dumps(config))
    estimate = estimate_memory(TrainConfig(model=str(model), data="d", mixed_precision="bf16"))
    assert estimate.summary.startswith("Stable Diffusion 2.x, LoRA rank 4, 768 px, batch 1")
    assert "never measured" in " ".join(estimate.notes)


def test_the_train_tabs_line_follows_the_form_values():
    from sdtune_ui.app.ops import GpuInfo, memory_estimate

    gpu = GpuInfo("RTX 3060", 12.0)
    assert "demo model" in memory_estimate({"model": "tiny-sd1", "data": "x"}, gpu)
    line = memory_estimate({"model": "stable-diffusion-v1-5/stable-diffusion-v1-5", "method": "full", "data": "x",
                            "mixed_precision": "bf16", "gradient_checkpointing": False}, gpu)
    assert line.startswith("Estimated peak GPU memory: 1") and "RTX 3060 has 12 GiB: WILL NOT FIT" in line
    assert memory_estimate({"train_batch_size": "two"}, gpu).startswith("No memory estimate yet: 'two' is not")
    assert "no GPU detected" in memory_estimate({"model": "org/model", "data": "x"}, GpuInfo(None, 0.0))
