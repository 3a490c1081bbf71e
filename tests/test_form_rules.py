"""The Train tab's form stays valid (no gradio): switching method (with or without its preset, under every memory
preset) or dataset gives settings that validate, with what the dataset says filled in and what the user typed
kept; bucketing follows the images' shapes; the validation the form shows is the one Start applies."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
from PIL import Image

from sdtune_ui.app import ops
from sdtune_ui.app.form_rules import dataset_hints, settle, validation_report
from sdtune_ui.app.workspace import Workspace
from sdtune_ui.config import TrainConfig
from sdtune_ui.examples import EXAMPLE_DATASET
from sdtune_ui.methods import method_names
from sdtune_ui.presets import VRAM_PRESETS, preset_switch_values


def form_values(**changes) -> dict:
    """What the form holds: every field, as widgets show them."""
    # The demo's settings without its class prompt (prior preservation): class prompts come from the datasets here.
    demo = {**ops.DEMO_SETTINGS, "class_prompt": "", "with_prior_preservation": False}
    config = ops.config_from_values({**demo, "data": str(EXAMPLE_DATASET), **changes})
    return ops.widget_values(config.to_dict())


def switch(values: dict, method: str, hints, previous: str, filled: dict, *, presets: bool, vram: str):
    applied = ops.widget_values(preset_switch_values(previous, method, vram)) if presets else {}
    return settle({**values, **applied, "method": method}, hints, previous_method=previous, filled=filled)


@pytest.fixture
def captions_only(tmp_path):
    """The example's images and captions without its dataset_info.json (nothing says the subject's class)."""
    folder = shutil.copytree(EXAMPLE_DATASET, tmp_path / "captioned")
    (folder / "dataset_info.json").unlink()
    return folder


@pytest.mark.parametrize("dataset", ["example", "captions_only"])
def test_every_switch_from_every_preset_validates(dataset, captions_only):
    data = str(EXAMPLE_DATASET if dataset == "example" else captions_only)
    hints = dataset_hints(data)
    names = method_names()
    for vram in VRAM_PRESETS:
        for presets in (True, False):
            for start in names:
                values, previous, filled = form_values(data=data), "lora", {}
                settled = switch(values, start, hints, previous, filled, presets=presets, vram=vram)
                for method in [m for m in names if m != start] + [start]:
                    settled = switch(settled.values, method, hints, start, settled.filled, presets=presets,
                                     vram=vram)
                    assert not settled.errors, (vram, presets, start, method, settled.errors)
                    ops.config_from_values(settled.values).validate()
                    start = method


def test_switches_fill_from_the_dataset_and_reset_what_no_longer_applies():
    hints = dataset_hints(str(EXAMPLE_DATASET))
    db = switch(form_values(), "dreambooth", hints, "lora", {}, presets=True, vram="CPU")
    assert (db.values["instance_prompt"], db.values["class_prompt"]) == ("a photo of sks robot", "a photo of a robot")
    assert db.values["with_prior_preservation"] is True  # the preset's, now with the dataset's class prompt
    ti = switch(db.values, "textual_inversion", hints, "dreambooth", db.filled, presets=True, vram="CPU")
    assert ti.values["instance_prompt"] == "" and ti.values["with_prior_preservation"] is False
    assert ti.values["validation_prompts"] == "a photo of <sks>" and ti.values["initializer_token"] == "robot"
    back = switch(ti.values, "lora", hints, "textual_inversion", ti.filled, presets=True, vram="CPU")
    assert "<sks>" not in back.values["validation_prompts"]  # the token only the old method knew is gone
    full = switch(back.values, "full", hints, "lora", back.filled, presets=True, vram="CPU")
    lora = switch(full.values, "lora", hints, "full", full.filled, presets=True, vram="CPU")
    assert full.values["use_ema"] is True and lora.values["use_ema"] is False  # EMA is full fine-tuning's


def test_no_class_prompt_anywhere_turns_prior_preservation_off_and_says_so(captions_only):
    settled = switch(form_values(data=str(captions_only)), "dreambooth", dataset_hints(str(captions_only)), "lora",
                     {}, presets=True, vram="CPU")
    assert settled.values["with_prior_preservation"] is False and not settled.errors
    assert settled.values["instance_prompt"].startswith("a photo of sks")
    assert any("Prior preservation is off" in note for note in settled.notes)


def test_a_new_dataset_refills_what_the_form_filled_and_keeps_what_the_user_typed(tmp_path):
    other = shutil.copytree(EXAMPLE_DATASET, tmp_path / "cats")
    (other / "dataset_info.json").write_text(json.dumps({"instance_prompt": "a photo of zwx cat",
                                                         "class_prompt": "a photo of a cat"}))
    db = switch(form_values(), "dreambooth", dataset_hints(str(EXAMPLE_DATASET)), "lora", {}, presets=True,
                vram="CPU")
    moved = settle({**db.values, "data": str(other)}, dataset_hints(str(other)), filled=db.filled, refill=True)
    assert (moved.values["instance_prompt"], moved.values["class_prompt"]) == ("a photo of zwx cat",
                                                                               "a photo of a cat")
    typed = {**db.values, "instance_prompt": "a photo of qwe robot", "data": str(other)}
    kept = settle(typed, dataset_hints(str(other)), filled=db.filled, refill=True)
    assert kept.values["instance_prompt"] == "a photo of qwe robot"


def test_bucketing_follows_the_images_shapes(tmp_path):
    wide = tmp_path / "wide"
    wide.mkdir()
    for i in range(3):
        Image.new("RGB", (96, 48), (i * 60, 0, 0)).save(wide / f"w{i}.png")
        (wide / f"w{i}.txt").write_text("a wide picture")
    hints = dataset_hints(str(wide))
    assert hints.bucketing and hints.not_square == 3 and "doctor recommends" in hints.bucketing_note()
    settled = settle(form_values(data=str(wide)), hints, refill=True)
    assert settled.values["bucketing"] is True
    user_off = settle({**settled.values, "bucketing": False}, hints, filled=settled.filled, refill=True)
    assert user_off.values["bucketing"] is False  # turned off by the user after the form turned it on: kept
    assert not dataset_hints(str(EXAMPLE_DATASET)).bucketing


def test_the_shown_validation_is_what_start_applies(tmp_path, monkeypatch):
    errors, config = validation_report(form_values(method="dreambooth", instance_prompt=""))
    assert not errors and config.instance_prompt == "a photo of sks robot"  # dataset_info.json supplies it
    errors, _ = validation_report(form_values(method="textual_inversion", instance_prompt="a photo of sks robot"))
    assert "<sks>" in errors["instance_prompt"]
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    errors, _ = validation_report(form_values(model="someone/never-downloaded"),
                                  check=ops.check_model_available)
    assert "needs the network once" in errors["model"]
    with pytest.raises(Exception, match="needs the network once"):
        ops.start_training(type("Ctx", (), {"datasets_dir": tmp_path, "data_dir": tmp_path, "runs_dir": tmp_path,
                                            "jobs": None, "workspace": lambda self, user="": Workspace(
                                                tmp_path, tmp_path)})(),
                           form_values(model="someone/never-downloaded"), public=False)
    assert not list(tmp_path.iterdir())  # no run folder for a model that cannot load
    assert TrainConfig().initializer_token == "dog"  # the default the form replaces with the dataset's class


def test_a_runs_settings_table_starts_with_what_it_trains_on_what_and_for_how_long(tmp_path):
    from sdtune_ui.ui.train_form import settings_rows

    config = {**dataclasses.asdict(TrainConfig()), "model": "demo-sd1", "method": "textual_inversion",
              "data": "datasets/toy", "validation_steps": 200, "max_train_steps": 400, "learning_rate": 5e-4}
    (tmp_path / "config.json").write_text(json.dumps(config))
    rows = settings_rows(tmp_path)
    assert [name for name, _ in rows[:5]] == ["model", "method", "data", "max_train_steps", "learning_rate"]
    assert ["max_train_steps", "400"] in rows and ["validation_steps", "200"] in rows
    assert "seed" not in dict(rows)  # at its default: not repeated
