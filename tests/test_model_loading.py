"""Base models load from a demo name, a diffusers folder or a single file; the family comes from configs."""

from __future__ import annotations

import json
import shutil

import pytest

from sdtune_ui.errors import ModelLoadError
from sdtune_ui.export.single_file import save_single_file
from sdtune_ui.models import TINY_MODELS, detect_family, load_pipeline, tiny_model_path


@pytest.mark.parametrize(("model", "family", "prediction"), [
    ("tiny-sd1", "sd1", "epsilon"), ("tiny-sd2-v", "sd2", "v_prediction"), ("tiny-sdxl", "sdxl", "epsilon")])
def test_family_is_read_from_the_configs_not_the_name(model, family, prediction, tmp_path):
    renamed = tmp_path / "my-community-model"        # e.g. a fine-tune with an unrelated name
    shutil.copytree(tiny_model_path(model), renamed)
    detected = detect_family(load_pipeline(str(renamed)))
    assert (detected.name, detected.prediction_type) == (family, prediction)


def test_single_file_safetensors_checkpoint_loads(tmp_path):
    single = save_single_file(load_pipeline("tiny-sd1"), tmp_path / "model.safetensors")
    pipe = load_pipeline(str(single), single_file_config="tiny-sd1")
    assert detect_family(pipe).name == "sd1"


def test_pickle_checkpoints_are_refused_unless_allowed(tmp_path):
    checkpoint = tmp_path / "model.ckpt"
    checkpoint.write_bytes(b"not loaded")
    with pytest.raises(ModelLoadError, match="pickle"):
        load_pipeline(str(checkpoint))


def test_a_folder_that_is_not_a_pipeline_gets_a_clear_message(tmp_path):
    with pytest.raises(ModelLoadError, match="model_index.json"):
        load_pipeline(str(tmp_path))


@pytest.mark.parametrize("model", TINY_MODELS)
def test_each_tiny_models_family_is_known_without_building_it_and_matches_its_configs(model):
    from sdtune_ui.families import family_classes, family_for_unet_config

    claimed = [cls.name for cls in family_classes() if model in cls.demo_models]
    folder = tiny_model_path(model)
    denoiser = "unet" if (folder / "unet").exists() else "transformer"
    config = json.loads((folder / denoiser / "config.json").read_text())
    assert claimed == [family_for_unet_config(config).name]
