"""The Train tab with several subjects (no gradio): a dataset of several concepts is listed with each concept's
prompt, token and class, the form leaves the run-wide prompts to the concepts for every method and the result
validates as Start sees it; `init_from` offers this app's runs (outputs and checkpoints), takes a run id through
the API, and a public app refuses anything outside its own data."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import save_file

from sdtune_ui.app import ops, public_rules
from sdtune_ui.app.form_rules import dataset_hints, init_from_choices, settle, validation_report
from sdtune_ui.app.workspace import Workspace
from sdtune_ui.config import TrainConfig
from sdtune_ui.errors import ConfigError
from sdtune_ui.examples import EXAMPLE_DATASET
from sdtune_ui.methods import method_names
from sdtune_ui.presets import preset_values
from sdtune_ui.runs import RunDir
from tests.concept_helpers import ROBOT_PROMPT, SQUARE_PROMPT, kohya_two_subjects, two_subjects


def form_values(**changes) -> dict:
    # The demo's settings without its class prompt (prior preservation): class prompts come from the datasets here.
    demo = {**ops.DEMO_SETTINGS, "class_prompt": "", "with_prior_preservation": False}
    config = ops.config_from_values({**demo, "data": str(EXAMPLE_DATASET), **changes})
    return ops.widget_values(config.to_dict())


def test_the_concepts_of_a_dataset_are_listed_with_their_prompts(tmp_path):
    hints = dataset_hints(str(two_subjects(tmp_path / "two")))
    assert [(c.name, c.images, c.instance_prompt, c.token, c.class_prompt, c.captions) for c in hints.concepts] == [
        ("robot", 8, ROBOT_PROMPT, "sks", "a photo of a robot", 8),
        ("square", 8, SQUARE_PROMPT, "zwx", "a photo of a square", 0)]
    heading, *lines = hints.concepts_note()
    assert "2 concepts" in heading and "balanced" in heading
    assert lines == ["robot: 8 images, 8 captioned, prompt 'a photo of sks robot', token 'sks', "
                     "class 'a photo of a robot'",
                     "square: 8 images, prompt 'a photo of zwx square', token 'zwx', class 'a photo of a square'"]

    kohya = dataset_hints(str(kohya_two_subjects(tmp_path / "kohya")))
    assert kohya.sampling == "repeats"  # kohya's folder names give repeats: each image that often
    assert sorted((c.token, c.images, c.repeats) for c in kohya.concepts) == [("sks", 4, 2), ("zwx", 6, 1)]
    assert any("4 images x 2" in line for line in kohya.concepts_note())
    one = dataset_hints(str(EXAMPLE_DATASET))
    assert one.concepts == [] and one.concepts_note() == []


@pytest.mark.parametrize("method", method_names())
def test_every_method_trains_the_concepts_on_their_own_prompts(tmp_path, method):
    data = two_subjects(tmp_path / "two")
    hints = dataset_hints(str(data))
    values = {**form_values(data=str(data), validation_prompts=[], instance_prompt=""),
              **ops.widget_values(preset_values(method, "CPU")), "method": method}
    settled = settle(values, hints, previous_method="lora", refill=True)
    assert not settled.errors, settled.errors
    # Nothing run-wide was made up: no placeholder instance prompt, no single validation prompt.
    assert settled.values["instance_prompt"] == "" and settled.values["validation_prompts"] == ""
    errors, config = validation_report(settled.values)
    assert not errors, errors
    if config.method in ("textual_inversion", "pivotal"):
        assert config.concept_tokens == ["sks=robot", "zwx=square"] or len(config.concept_tokens) == 2
        assert len(config.validation_prompts) == 2
    else:
        assert config.validation_prompts == [ROBOT_PROMPT, SQUARE_PROMPT]


def test_a_switch_to_a_dataset_of_several_concepts_drops_what_the_form_filled(tmp_path):
    hints_one = dataset_hints(str(EXAMPLE_DATASET))
    db = settle({**form_values(), **ops.widget_values(preset_values("dreambooth", "CPU")), "method": "dreambooth"},
                hints_one, previous_method="lora")
    assert db.values["instance_prompt"] == ROBOT_PROMPT
    data = two_subjects(tmp_path / "two")
    moved = settle({**db.values, "data": str(data)}, dataset_hints(str(data)), filled=db.filled, refill=True)
    assert moved.values["instance_prompt"] == "" and moved.values["class_prompt"] == "" and not moved.errors
    assert moved.values["with_prior_preservation"] is True  # each concept has its class prompt


def make_run(runs, name: str, steps: tuple[int, ...] = ()) -> RunDir:
    """A finished LoRA run folder (an output and checkpoints), without training: what the picker reads."""
    run = RunDir(runs / name).create()
    TrainConfig(method="lora", data=str(EXAMPLE_DATASET)).save(run.config_path)
    run.output_dir.mkdir(parents=True, exist_ok=True)
    save_file({"unet.a.lora_A.weight": torch.zeros(1, 1)}, str(run.output_dir / "pytorch_lora_weights.safetensors"))
    for step in steps:
        folder = run.path / "checkpoints" / f"step-{step}"
        folder.mkdir(parents=True)
        (folder / ".complete").write_text("")
    return run


def test_init_from_offers_this_apps_runs_and_takes_a_run_id(tmp_path):
    runs = tmp_path / "data" / "runs"
    run = make_run(runs, "robot-lora-1", steps=(10,))
    choices = init_from_choices(runs)
    assert choices[0] == ("(none: start from the base model)", "")
    values = [value for _, value in choices]
    assert "robot-lora-1" in values and "robot-lora-1@step-10" in values  # ids: no server path in the page
    labels = dict((value, label) for label, value in choices)
    assert labels["robot-lora-1"].startswith("robot-lora-1 · LoRA on demo-sd1 · final")  # the default model
    assert ops.run_reference(runs, "robot-lora-1") == str(run.path)
    assert ops.run_reference(runs, "robot-lora-1@step-10") == f"{run.path}@step-10"
    assert ops.run_reference(runs, "/elsewhere/file.safetensors") == "/elsewhere/file.safetensors"

    # The API takes a run id; the run it names is where the new one starts.
    started = []
    jobs = type("Jobs", (), {"submit_training": lambda self, config, run_dir, **_: started.append(config)})()
    ctx = type("Ctx", (), {"datasets_dir": tmp_path / "data" / "datasets", "data_dir": tmp_path / "data",
                           "runs_dir": runs, "jobs": jobs,
                           "workspace": lambda self, user="": Workspace(tmp_path / "data", tmp_path / "data")})()
    shutil.copytree(EXAMPLE_DATASET, ctx.datasets_dir / "toy")
    ops.start_training(ctx, form_values(data="toy", init_from="robot-lora-1"), public=True)
    assert started[0].init_from == str(run.path)


def test_a_public_app_starts_only_from_its_own_runs(tmp_path):
    outside = make_run(tmp_path / "elsewhere", "someone-else")
    data_dir = tmp_path / "data"
    shutil.copytree(EXAMPLE_DATASET, data_dir / "datasets" / "toy")
    config = TrainConfig(data=str(data_dir / "datasets" / "toy"), init_from=str(outside.path))
    with pytest.raises(ConfigError) as err:
        public_rules.check_public_config(config, data_dir)
    assert "this app's runs" in err.value.field_errors["init_from"]
    inside = make_run(data_dir / "runs", "mine")
    public_rules.check_public_config(TrainConfig(data=config.data, init_from=f"{inside.path}@step-5"), data_dir)
    assert json.loads(inside.config_path.read_text())["method"] == "lora"
