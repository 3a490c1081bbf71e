"""TrainConfig: one validated description of a run; every bad setting is named before any model loads."""

from __future__ import annotations

import json

import pytest

from sdtune_ui.cli.main import build_parser
from sdtune_ui.cli.train import config_from_args
from sdtune_ui.config import TrainConfig
from sdtune_ui.errors import ConfigError
from sdtune_ui.methods import method_names
from sdtune_ui.presets import VRAM_PRESETS, method_presets, preset, preset_values

METHOD_PRESETS = method_presets()
METHODS = method_names()


def field_errors(**overrides) -> dict[str, str]:
    values = dict(data="some/folder")
    values.update(overrides)
    with pytest.raises(ConfigError) as caught:
        TrainConfig(**values).validate()
    return caught.value.field_errors


@pytest.mark.parametrize(
    ("overrides", "field", "words"),
    [
        (dict(resolution=500), "resolution", "multiple of 8"),
        (dict(learning_rate=0.0), "learning_rate", "greater than 0"),
        (dict(learning_rate=-1e-4), "learning_rate", "greater than 0"),
        (dict(method="textual_inversion", instance_prompt="a photo of a robot"), "instance_prompt", "<sks>"),
        (dict(method="textual_inversion", validation_prompts=["a robot"]), "validation_prompts", "<sks>"),
        (dict(with_prior_preservation=True), "class_prompt", "class prompt"),
        (dict(method="dreambooth"), "instance_prompt", "instance prompt"),
        (dict(method="magic"), "method", "not one of"),
        (dict(lr_scheduler="exponential"), "lr_scheduler", "not one of"),
        (dict(mixed_precision="fp8"), "mixed_precision", "not one of"),
        (dict(caption_dropout=1.5), "caption_dropout", "between 0 and 1"),
        (dict(rank=0), "rank", "at least 1"),
        (dict(train_batch_size=0), "train_batch_size", "at least 1"),
        (dict(max_train_steps=0, num_train_epochs=0), "max_train_steps", "num_train_epochs"),
        (dict(data=""), "data", "dataset"),
        (dict(method="textual_inversion", use_ema=True), "use_ema", "change UNet weights"),
        (dict(decompose_both=True), "decompose_both", "LoKr adapter only"),
        (dict(adapter="lokr", lokr_factor=0), "lokr_factor", "-1"),
        (dict(adapter="magic"), "adapter", "not one of"),
        (dict(method="textual_inversion", placeholder_token="two words"), "placeholder_token", "without spaces"),
    ],
)
def test_each_bad_setting_gets_a_message_naming_its_field(overrides, field, words):
    errors = field_errors(**overrides)
    assert field in errors
    assert words in errors[field]


def test_all_bad_settings_are_reported_together():
    errors = field_errors(resolution=100, learning_rate=0, rank=0)
    assert {"resolution", "learning_rate", "rank"} <= set(errors)


def test_message_lists_every_field_for_people():
    with pytest.raises(ConfigError) as caught:
        TrainConfig(data="d", resolution=100, learning_rate=0).validate()
    text = str(caught.value)
    assert "resolution" in text and "learning_rate" in text


def test_default_caption_dropout_keeps_guidance_working():
    assert TrainConfig().caption_dropout == pytest.approx(0.1)


def test_every_method_preset_is_valid():
    for method in METHODS:
        config = preset(method, data="d", instance_prompt="a photo of sks dog" if method == "dreambooth" else "",
                        class_prompt="a photo of a dog")
        config.validate()
        for key, value in METHOD_PRESETS[method].items():
            assert getattr(config, key) == value


def test_method_presets_follow_the_recommended_learning_rates():
    assert METHOD_PRESETS["dreambooth"]["learning_rate"] == 5e-6
    assert METHOD_PRESETS["dreambooth"]["max_train_steps"] == 400
    assert METHOD_PRESETS["lora"]["learning_rate"] == 1e-4
    assert METHOD_PRESETS["textual_inversion"]["learning_rate"] == 5e-4
    assert METHOD_PRESETS["textual_inversion"]["scale_lr"] is True
    assert METHOD_PRESETS["full"]["learning_rate"] == 1e-5 and METHOD_PRESETS["full"]["use_ema"] is True


def test_vram_presets_apply_on_top_of_the_method():
    config = preset("lora", vram="8 GB", data="d")
    # "auto": bf16 on cards that have it (a T4 gets fp16), so a small card's step can be captured too.
    assert config.gradient_checkpointing and config.mixed_precision == "auto"
    assert config.learning_rate == 1e-4
    assert set(VRAM_PRESETS) >= {"8 GB", "24 GB+", "CPU"}


def test_config_round_trips_through_json(tmp_path):
    config = TrainConfig(data="d", method="pivotal", validation_prompts=["a photo of <sks>"], rank=8)
    path = tmp_path / "run.json"
    config.save(path)
    assert TrainConfig.load(path) == config


def test_unknown_keys_in_a_config_file_are_named(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"data": "d", "learning_rat": 1e-4}))
    with pytest.raises(ConfigError) as caught:
        TrainConfig.load(path)
    assert "learning_rat" in caught.value.field_errors


def test_cli_flags_come_from_the_config_fields(tmp_path):
    path = tmp_path / "run.json"
    TrainConfig(data="from-file", rank=8, learning_rate=3e-4).save(path)
    args = build_parser().parse_args(
        ["train", "--config", str(path), "--steps", "12", "--random-flip", "--validation-prompts", "a", "b",
         "--lr", "2e-4"])
    config = config_from_args(args)
    assert config.data == "from-file" and config.rank == 8          # from the file
    assert config.max_train_steps == 12 and config.learning_rate == 2e-4  # flags override it
    assert config.random_flip is True
    assert config.validation_prompts == ["a", "b"]


def test_cli_preset_flag_starts_from_the_method_defaults():
    args = build_parser().parse_args(["train", "--method", "dreambooth", "--preset", "--data", "d"])
    config = config_from_args(args)
    assert config.learning_rate == 5e-6 and config.with_prior_preservation


def test_adapter_presets_adjust_the_method_preset():
    lokr = preset("lora", adapter="lokr", data="d")
    assert (lokr.lokr_factor, lokr.learning_rate, lokr.rank) == (8, 4e-4, 16)   # the method's rank stays
    loha = preset("pivotal", adapter="loha", data="d")
    assert (loha.rank, loha.lora_alpha, loha.ti_learning_rate) == (8, 4, 5e-4)
    assert preset_values("full", adapter="lokr") == preset_values("full")   # full fine-tuning has no adapters
    assert preset("lora", data="d").ema_decay == 0.999 and preset("full", data="d").ema_decay == 0.9999
    args = build_parser().parse_args(["train", "--adapter", "lokr", "--preset", "--data", "d"])
    assert config_from_args(args).lokr_factor == 8


def test_adapter_settings_apply_to_their_own_type_only():
    assert TrainConfig(adapter="lokr").applies("lokr_factor") and not TrainConfig().applies("lokr_factor")
    assert TrainConfig().applies("adapter") and not TrainConfig(method="full").applies("adapter")
    assert TrainConfig(method="pivotal").applies("use_ema") and not TrainConfig(method="textual_inversion").applies(
        "use_ema")
    TrainConfig(data="d", adapter="lokr", lokr_factor=4, decompose_both=True, use_ema=True).validate()


def test_mixed_precision_auto_is_bf16_or_fp16_on_a_gpu_and_full_precision_on_the_cpu(monkeypatch):
    import torch

    from sdtune_ui.train.setup import resolve_mixed_precision, weight_dtype_for

    assert TrainConfig().mixed_precision == "auto"
    assert resolve_mixed_precision("auto", "cpu") == "no" and weight_dtype_for("no") == torch.float32
    # Settings saved before "auto" existed keep their meaning.
    assert [resolve_mixed_precision(v, "cuda") for v in ("no", "fp16", "bf16")] == ["no", "fp16", "bf16"]
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_mixed_precision("auto", "cuda") == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_mixed_precision("auto", "cuda") == "fp16"


def test_each_component_loads_in_the_precision_it_trains_in():
    import torch

    from sdtune_ui.train.setup import component_dtypes

    bf16 = torch.bfloat16
    assert component_dtypes(TrainConfig(method="lora"), torch.float32) == torch.float32
    assert component_dtypes(TrainConfig(method="lora"), bf16) == {"default": bf16}
    assert component_dtypes(TrainConfig(method="dreambooth"), bf16) == {"default": bf16, "unet": torch.float32}
    ti = component_dtypes(TrainConfig(method="textual_inversion"), bf16)
    assert ti["text_encoder"] == ti["text_encoder_2"] == torch.float32 and ti["default"] == bf16
    # A model whose VAE config cannot be read (a Hub id offline): its VAE stays float32, as SDXL's must.
    assert component_dtypes(TrainConfig(method="lora", model="someone/unknown-model"), bf16)["vae"] == torch.float32
