"""What fits: the memory estimate of SD3.5 and Flux runs, the presets each family offers per GPU size (every one of
them fits its GPU by the estimate: SD3.5 Medium LoRA in 16 GB, Flux LoRA in 24 GB), and the quantised base's
refusals when it cannot be had."""

from __future__ import annotations

import importlib.util

import pytest

from sdtune_ui.config import TrainConfig
from sdtune_ui.errors import ConfigError
from sdtune_ui.families import family_named
from sdtune_ui.models import KNOWN_MODELS, TINY_MODELS
from sdtune_ui.presets import VRAM_PRESETS, family_memory_preset, preset_values
from sdtune_ui.train.memory import estimate_memory
from sdtune_ui.train.quantize import check_quantization

GPU_GIB = {"8 GB": 8, "12 GB": 12, "16 GB": 16, "24 GB+": 24}
HAS_BITSANDBYTES = importlib.util.find_spec("bitsandbytes") is not None


def lora_with(family: str, vram: str) -> TrainConfig:
    values = {**preset_values("lora", vram), **family_named(family).memory_presets[vram]}
    return TrainConfig(model="m", data="x", method="lora", compile_unet="none", **values)


@pytest.mark.parametrize(("family", "vram"), [(family, vram) for family in ("sd3", "flux")
                                               for vram in family_named(family).memory_presets])
def test_every_family_memory_preset_fits_its_gpu_by_the_estimate(family, vram):
    estimate = estimate_memory(lora_with(family, vram), family_named(family))
    assert estimate.fits(GPU_GIB[vram]), estimate.describe("a GPU", GPU_GIB[vram])


def test_only_the_gpus_that_hold_t5_xxl_get_a_preset():
    # T5-XXL alone is 8.9 GiB in bf16 while it caches the prompts: no SD3.5 preset below 12 GB; Flux's NF4 transformer
    # is on the GPU beside it (loaded quantised), so Flux starts at 24 GB.
    assert set(family_named("sd3").memory_presets) == {"12 GB", "16 GB", "24 GB+"}
    assert set(family_named("flux").memory_presets) == {"24 GB+"}


@pytest.mark.parametrize(("family", "settings", "measured_gib"), [
    ("sd3", {}, 13.56), ("sd3", {"gradient_checkpointing": True, "optimizer": "adafactor", "quantize_base": "nf4"},
                         10.98),
    ("flux", {}, 46.47), ("flux", {"gradient_checkpointing": True, "optimizer": "adafactor", "quantize_base": "nf4"},
                          15.90)])
def test_the_estimate_is_within_five_percent_of_the_h200_runs(family, settings, measured_gib):
    # benchmarks/results/h200-issue15-*.jsonl: LoRA r4, 1024 px, batch 1, bf16, allocated peak of the whole run.
    config = TrainConfig(model="m", data="x", method="lora", rank=4, resolution=1024, mixed_precision="bf16",
                         compile_unet="none", **settings)
    estimate = estimate_memory(config, family_named(family))
    assert estimate.total_gib == pytest.approx(measured_gib, rel=0.05)
    assert not any("never measured" in note for note in estimate.notes)


def test_the_headline_sizes_and_what_does_not_fit_without_the_presets():
    sd3, flux = family_named("sd3"), family_named("flux")
    assert estimate_memory(lora_with("sd3", "16 GB"), sd3).needed_gib <= 16    # SD3.5 Medium LoRA in 16 GB
    assert estimate_memory(lora_with("flux", "24 GB+"), flux).needed_gib <= 24  # Flux LoRA in 24 GB
    plain = TrainConfig(model="m", data="x", method="lora", rank=16, mixed_precision="bf16", compile_unet="none",
                        gradient_checkpointing=True)
    assert not estimate_memory(plain, flux).fits(24)   # a bf16 Flux base alone is ~22 GiB: quantised it must be
    # SD3.5 Large (38 blocks) is counted apart from Medium when its transformer config is at hand.
    assert sd3.memory_for_config({"num_layers": 38}).unet_params > 3 * sd3.memory_for_config(None).unet_params


def test_text_encoders_freed_by_the_cache_are_not_counted_but_t5_is_when_prompts_are_encoded_each_step():
    flux = family_named("flux")
    cached = TrainConfig(model="m", data="x", method="lora", mixed_precision="bf16", compile_unet="none")
    encoded = TrainConfig(model="m", data="x", method="lora", mixed_precision="bf16", compile_unet="none",
                          cache_text_embeddings=False)
    t5_gib = 4_762_310_656 * 2 / 2**30
    extra = estimate_memory(encoded, flux).parts["weights"] - estimate_memory(cached, flux).parts["weights"]
    assert extra == pytest.approx(t5_gib + 123_060_480 * 2 / 2**30, rel=1e-3)


def test_family_presets_come_with_the_model_and_quantise_only_adapter_methods():
    values = preset_values("lora", "24 GB+", model="tiny-flux")
    assert values["gradient_checkpointing"] is True
    assert values["quantize_base"] == ("nf4" if HAS_BITSANDBYTES else "none")
    assert "quantize_base" not in family_memory_preset("tiny-flux", "24 GB+", "full")
    assert preset_values("lora", "24 GB+", model="tiny-sd1") == preset_values("lora", "24 GB+")   # generic ones


def test_the_app_offers_the_families():
    assert {"tiny-sd3", "tiny-flux"} <= set(TINY_MODELS)
    assert {"stabilityai/stable-diffusion-3.5-medium", "black-forest-labs/FLUX.1-dev"} <= set(KNOWN_MODELS)
    assert set(family_named("flux").memory_presets) <= set(VRAM_PRESETS)


def test_a_quantised_base_is_refused_with_a_way_out():
    flux, sd1 = family_named("flux"), family_named("sd1")
    lora = TrainConfig(model="m", data="x", method="lora", quantize_base="nf4")
    with pytest.raises(ConfigError, match="transformer models"):
        check_quantization(lora, sd1, cuda=True)
    with pytest.raises(ConfigError, match="LoRA-like methods"):
        check_quantization(TrainConfig(model="m", data="x", method="full", quantize_base="nf4"), flux, cuda=True)
    if not HAS_BITSANDBYTES:
        with pytest.raises(ConfigError, match=r"pip install sdtune_ui\[quantize\]"):
            check_quantization(lora, flux, cuda=True)
    else:
        with pytest.raises(ConfigError, match="CUDA GPU"):
            check_quantization(lora, flux, cuda=False)
    check_quantization(TrainConfig(model="m", data="x", method="lora"), flux, cuda=False)   # none: nothing to check


def test_training_with_a_quantised_base_stops_before_loading_when_it_cannot_be_had(toy_dataset, tmp_path):
    from sdtune_ui.runs import RunDir
    from sdtune_ui.train import train

    config = TrainConfig(model="tiny-flux", data=str(toy_dataset), method="lora", quantize_base="nf4",
                         max_train_steps=1, resolution=32)
    assert train(config, tmp_path / "run") == "failed"
    message = [e for e in RunDir(tmp_path / "run").read_events() if e["kind"] == "status"][-1]["message"]
    assert "quantize_base" in message or "bitsandbytes" in message or "CUDA" in message


@pytest.mark.parametrize(("config_file", "model"), [("fsdp_sd3.yaml", "tiny-sd3"), ("fsdp_flux.yaml", "tiny-flux")])
def test_fsdp_configs_for_the_transformers_name_their_real_blocks(config_file, model):
    from pathlib import Path

    from accelerate.commands.config.config_args import load_config_from_file

    import sdtune_ui
    from sdtune_ui.models import load_pipeline

    config = load_config_from_file(str(Path(sdtune_ui.__file__).parent / "accelerate_configs" / config_file))
    wrapped = set(config.fsdp_config["fsdp_transformer_layer_cls_to_wrap"].split(","))
    present = {type(module).__name__ for module in load_pipeline(model).transformer.modules()}
    assert wrapped <= present


def test_sd35_large_counts_its_own_activations_scaled_from_medium(tmp_path):
    # Borrowing SD1.x's figure told a 24 GB GPU that a Large LoRA fits without gradient checkpointing (~19 GiB);
    # Medium's measured figure scaled by depth x width says ~38 GiB, and that checkpointing brings it under 24.
    (tmp_path / "transformer").mkdir()
    (tmp_path / "transformer" / "config.json").write_text(
        '{"_class_name": "SD3Transformer2DModel", "num_layers": 38, "joint_attention_dim": 4096, '
        '"caption_projection_dim": 2432}')
    large = dict(model=str(tmp_path), data="x", method="lora", resolution=1024, mixed_precision="bf16",
                 compile_unet="none")
    plain = estimate_memory(TrainConfig(**large), family_named("sd3"))
    assert not plain.fits(24) and any("scaled by depth x width" in note for note in plain.notes)
    assert estimate_memory(TrainConfig(**large, gradient_checkpointing=True), family_named("sd3")).fits(24)
