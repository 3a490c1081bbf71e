"""What the app's buttons do, without gradio: names, datasets, configs from widgets, public-app rules, runs."""

from __future__ import annotations

import pytest

from sdtune_ui.app import ops as app_ops
from sdtune_ui.app import public_rules
from sdtune_ui.app.jobs import JobQueue
from sdtune_ui.config import TrainConfig, field_applies
from sdtune_ui.errors import ConfigError, DatasetError, SdtuneError
from sdtune_ui.methods import ADAPTER
from sdtune_ui.presets import preset_values
from sdtune_ui.runs import RunDir


def test_safe_names_and_dataset_paths(tmp_path):
    assert app_ops.safe_name("../../etc/passwd") == "etc-passwd"
    assert app_ops.safe_name("my photos!") == "my-photos"
    assert app_ops.safe_name("..") == "dataset"
    assert app_ops.dataset_path(tmp_path, "../x", create=True) == tmp_path / "x"
    with pytest.raises(DatasetError):
        app_ops.dataset_path(tmp_path, "missing")
    example = app_ops.load_example(tmp_path)
    assert len(list(example.glob("*.png"))) == 8 and app_ops.list_datasets(tmp_path) == ["toy_robot", "x"]


def test_local_folders_only_when_local(tmp_path):
    with pytest.raises(DatasetError, match="only possible when the app runs locally"):
        app_ops.ingest_into(tmp_path, "d", [], local_folder="/etc", allow_local_paths=False)
    target, report = app_ops.ingest_into(tmp_path, "d", [], local_folder=str(app_ops.EXAMPLE_DATASET),
                                         allow_local_paths=True)
    assert report.ok and len(report.kept) == 8 and target == tmp_path / "d"


def test_config_from_widget_values():
    config = app_ops.config_from_values({"max_train_steps": 12.0, "learning_rate": 0.001, "use_ema": False,
                                         "validation_prompts": "a robot\n\n a dog ", "model": " tiny-sd1 "})
    assert config.max_train_steps == 12 and isinstance(config.max_train_steps, int)
    assert config.validation_prompts == ["a robot", "a dog"] and config.model == "tiny-sd1"
    with pytest.raises(ConfigError) as err:
        app_ops.config_from_values({"max_train_steps": 1.5, "rank": None})
    assert set(err.value.field_errors) == {"max_train_steps", "rank"}
    values = app_ops.widget_values(config.to_dict())
    assert app_ops.config_from_values(values) == config


def test_presets_and_hardware():
    assert app_ops.vram_preset_for(None) == "CPU"
    assert app_ops.vram_preset_for(23.6) == "24 GB+" and app_ops.vram_preset_for(7.8) == "8 GB"
    assert preset_values("lora", "CPU")["mixed_precision"] == "no"
    assert not field_applies({"needs": (ADAPTER,)}, "full") and field_applies({}, "full")


def test_public_app_reads_only_its_own_data(tmp_path):
    data_dir = tmp_path / "app"
    inside = TrainConfig(data=str(data_dir / "datasets" / "d"), model="org/model-v1.5")
    public_rules.check_public_config(inside, data_dir)
    for config, field in ((TrainConfig(data="/etc"), "data"),
                          (TrainConfig(data=str(data_dir / "datasets" / ".." / ".." / "x")), "data"),
                          (TrainConfig(data=str(data_dir / "d"), model="/root/model.safetensors"), "model"),
                          (TrainConfig(data=str(data_dir / "d"), model="../models"), "model"),
                          (TrainConfig(data=str(data_dir / "d"), class_data="/tmp/x"), "class_data")):
        with pytest.raises(ConfigError) as err:
            public_rules.check_public_config(config, data_dir)
        assert field in err.value.field_errors


def test_run_ids_resume_and_delete(tmp_path):
    jobs = JobQueue(lambda config, run_dir, cancel=None: "completed")
    try:
        with pytest.raises(SdtuneError):
            app_ops.run_dir(tmp_path, "../etc")
        run = RunDir(tmp_path / "r1").create()
        TrainConfig(data="x").save(run.config_path)
        run.events().emit("status", status="running")
        with pytest.raises(SdtuneError, match="cancel it first"):
            app_ops.delete_run(jobs, tmp_path, "r1")
        with pytest.raises(SdtuneError, match="still running"):
            app_ops.resume_run(jobs, tmp_path, "r1")
        run.request_cancel()  # e.g. the app crashed mid-run: cancel, then resume or delete
        job = app_ops.resume_run(jobs, tmp_path, "r1")
        assert job.wait(5) and job.result == "completed"
        run.events().emit("status", status="completed")
        with pytest.raises(SdtuneError, match="has completed"):
            app_ops.resume_run(jobs, tmp_path, "r1")
        app_ops.delete_run(jobs, tmp_path, "r1")
        assert not run.path.exists()
    finally:
        jobs.close()


def test_cancel_refuses_finished_runs(tmp_path):
    jobs = JobQueue(lambda config, run_dir, cancel=None: "completed")
    try:
        run = RunDir(tmp_path / "r1").create()
        TrainConfig(data="x").save(run.config_path)
        run.events().emit("status", status="running")  # e.g. started from a terminal
        app_ops.cancel_run(jobs, tmp_path, "r1")
        assert run.cancel_requested()
        run.events().emit("status", status="cancelled")
        with pytest.raises(SdtuneError, match="already finished"):
            app_ops.cancel_run(jobs, tmp_path, "r1")
    finally:
        jobs.close()


def test_runs_left_queued_by_a_previous_app_are_released(tmp_path):
    for name, status in (("queued-run", "queued"), ("running-run", "running"), ("done-run", "completed")):
        run = RunDir(tmp_path / name).create()
        TrainConfig(data="x").save(run.config_path)
        run.events().emit("status", status=status)
    assert app_ops.release_orphaned_runs(tmp_path) == ["queued-run"]
    assert RunDir(tmp_path / "queued-run").status() == "cancelled"
    assert RunDir(tmp_path / "running-run").status() == "running"  # maybe a CLI run: left alone


def test_first_form_values_follow_the_hardware(monkeypatch):
    from sdtune_ui.ui.train_tab import default_config

    on_cpu = default_config(cpu=True, vram="CPU")
    # On a CPU: the README's offline demo on the pre-trained demo-sd1 (its batch size wins over the CPU preset's).
    assert (on_cpu.model, on_cpu.max_train_steps, on_cpu.mixed_precision) == ("demo-sd1", 300, "no")
    assert on_cpu.train_batch_size == 4 and on_cpu.with_prior_preservation and on_cpu.train_text_encoder
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)  # the Hub reachable
    on_gpu = default_config(cpu=False, vram="24 GB+")
    assert on_gpu.model != "demo-sd1" and on_gpu.mixed_precision == "auto" and on_gpu.train_batch_size == 4
    # With the Hub switched off and SD 1.5 never downloaded, a GPU machine starts on the offline demo too.
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    assert default_config(cpu=False, vram="24 GB+").model == "demo-sd1"
