"""Resuming a run folder: settings its checkpoints depend on cannot change (and a refusal writes nothing);
the others may, and are written and logged; an optimizer change starts its state afresh."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from sdtune_ui.app import ops as app_ops
from sdtune_ui.app.jobs import JobQueue
from sdtune_ui.config import TrainConfig
from sdtune_ui.examples import EXAMPLE_DATASET
from sdtune_ui.runs import RunDir
from sdtune_ui.train import train
from sdtune_ui.train.resume import MAY_CHANGE, ResumeRefused, resume_changes
from tests.train_helpers import quick_config, run_training


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[TrainConfig, Path]:
    """A tiny LoRA run of 4 steps with a checkpoint at step 2 (copied by each test that resumes it)."""
    root = tmp_path_factory.mktemp("trained")
    data = root / "toy_robot"
    shutil.copytree(EXAMPLE_DATASET, data)
    config = quick_config(data, max_train_steps=4, checkpointing_steps=2)
    run_training(config, root / "run")
    return config, root / "run"


def copy_of(trained, tmp_path: Path) -> tuple[TrainConfig, RunDir]:
    config, folder = trained
    shutil.copytree(folder, tmp_path / "run")
    return config, RunDir(tmp_path / "run")


@pytest.mark.parametrize(("change", "fields"), [
    (dict(model="tiny-sd2-v"), {"model"}),
    (dict(rank=8), {"rank"}),
    (dict(method="textual_inversion"), {"method"}),
    (dict(method="full"), {"method"}),
    (dict(model="tiny-sd2-v", lora_targets="all", train_text_encoder=True), {"model", "lora_targets",
                                                                           "train_text_encoder"}),
])
def test_a_refused_resume_names_each_field_and_writes_nothing(trained, tmp_path, change, fields):
    config, run = copy_of(trained, tmp_path)
    before = {p.relative_to(run.path): p.read_bytes() for p in run.path.rglob("*") if p.is_file()}
    with pytest.raises(ResumeRefused) as refused:
        train(TrainConfig(**{**config.to_dict(), **change, "max_train_steps": 6}), run.path)
    assert set(refused.value.field_errors) == fields
    message = str(refused.value)
    for name in fields:
        assert f"- {name}: " in message
    assert "may change: steps" in message and "learning rate" in message
    after = {p.relative_to(run.path): p.read_bytes() for p in run.path.rglob("*") if p.is_file()}
    assert after == before  # config.json byte-identical, and no event, owner file or checkpoint written


def test_the_app_refuses_before_queueing(trained, tmp_path):
    config, run = copy_of(trained, tmp_path)
    before = run.config_path.read_bytes()
    jobs = JobQueue(lambda config, run_dir, cancel=None: "completed")
    try:
        with pytest.raises(ResumeRefused, match="model"):
            jobs.submit_training(TrainConfig(**{**config.to_dict(), "model": "tiny-sd2-v"}), run.path)
    finally:
        jobs.close()
    assert run.config_path.read_bytes() == before


def test_settings_a_method_does_not_use_may_differ(trained, tmp_path):
    config, run = copy_of(trained, tmp_path)
    changes = resume_changes(run, TrainConfig(**{**run.config(), "placeholder_token": "<cat>", "num_vectors": 3}))
    assert set(changes) == {"placeholder_token", "num_vectors"}  # LoRA has no tokens: nothing to mix


def test_allowed_changes_are_written_and_logged_and_a_new_optimizer_starts_afresh(trained, tmp_path):
    config, run = copy_of(trained, tmp_path)
    resumed = TrainConfig(**{**config.to_dict(), "max_train_steps": 5, "learning_rate": 5e-4,
                             "optimizer": "adafactor", "train_batch_size": 2})
    run_training(resumed, run.path)
    saved = run.config()
    assert (saved["max_train_steps"], saved["learning_rate"], saved["optimizer"], saved["train_batch_size"]) == \
        (5, 5e-4, "adafactor", 2)
    logs = [e["message"] for e in run.read_events() if e["kind"] == "log"]
    changed = next(line for line in logs if line.startswith("Resuming with changed settings"))
    for text in ("max_train_steps 4 -> 5", "learning_rate 0.001 -> 0.0005", "'adamw' -> 'adafactor'"):
        assert text in changed
    assert any("optimizer changed from adamw to adafactor" in line and "afresh" in line for line in logs)
    assert any("Resumed from step-2" in line for line in logs)  # the last step of a run is its output
    # The new learning rate applies from the first resumed step (not the checkpoint's old one).
    last = [e for e in run.read_events() if e["kind"] == "step"][-1]
    assert last["step"] == 5 and last["lr"] == pytest.approx(5e-4)


def test_what_may_change_is_a_known_list():
    names = set(TrainConfig().to_dict())
    assert MAY_CHANGE <= names
    fixed = names - MAY_CHANGE
    assert {"model", "method", "rank", "lora_alpha", "lora_targets", "train_text_encoder", "placeholder_token",
            "num_vectors"} <= fixed
    assert {"max_train_steps", "learning_rate", "lr_scheduler", "optimizer", "train_batch_size",
            "gradient_accumulation_steps", "gradient_checkpointing", "resolution", "validation_steps",
            "checkpointing_steps"} <= MAY_CHANGE


def test_app_resume_with_less_memory_passes_the_guard_and_logs_the_change(trained, tmp_path):
    config, run = copy_of(trained, tmp_path)
    run.events().emit("status", status="failed", message="The GPU ran out of memory.")  # as after an OOM
    seen = {}

    def fake_train(config, run_dir, cancel=None):
        seen["config"] = config
        return "completed"

    jobs = JobQueue(fake_train)
    try:
        job = app_ops.resume_run(jobs, tmp_path, "run", memory_fallback=True)
        assert job.wait(10) and job.result == "completed"
    finally:
        jobs.close()
    assert seen["config"].gradient_checkpointing and not config.gradient_checkpointing
    assert any(e["kind"] == "log" and e["message"].startswith("Memory fallback: gradient checkpointing on")
               for e in run.read_events())
