"""Faults a user can fix end with one line saying what happened and what to do: a bad update (no checkpoint of
bad weights is ever called good), a full disk, a damaged weights file, an unknown model, running out of GPU
memory (with the next memory saver, and a resume that uses it)."""

from __future__ import annotations

import errno
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from sdtune_ui.app import ops as app_ops
from sdtune_ui.cli.main import main
from sdtune_ui.config import TrainConfig
from sdtune_ui.errors import ConfigError
from sdtune_ui.runs import EventLog, RunDir
from sdtune_ui.train import checkpoint as ckpt
from sdtune_ui.train import train
from sdtune_ui.train.trainer import Trainer
from tests.train_helpers import quick_config


def last_status(run_dir) -> dict:
    return [e for e in RunDir(run_dir).read_events() if e["kind"] == "status"][-1]


def disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def cli_train(config: TrainConfig, run_dir, *extra: str) -> list[str]:
    path = run_dir.parent / f"{run_dir.name}.json"
    config.save(path)
    return ["train", "--config", str(path), "--output", str(run_dir), *extra]


def test_a_bad_update_is_never_saved_and_the_named_checkpoint_is_finite(toy_dataset, tmp_path, monkeypatch):
    original = Trainer.compute_loss

    def absurd_learning_rate_at_step_4(self, batch):
        if self.step == 3:  # the update of step 4 (its loss, computed before the update, is still finite)
            for group in self.optimizer.param_groups:
                group["lr"] = 1e30
        return original(self, batch)

    monkeypatch.setattr(Trainer, "compute_loss", absurd_learning_rate_at_step_4)
    status = train(quick_config(toy_dataset, max_train_steps=8, checkpointing_steps=2), tmp_path / "run")
    run = RunDir(tmp_path / "run")
    message = last_status(run.path)["message"]
    assert status == "failed"
    assert "went bad by step 4" in message and "checkpoint step-4 was not saved" in message
    assert "last good checkpoint (finite weights) is step-2" in message
    assert [p.name for p in run.checkpoints()] == ["step-2"]
    assert not list(run.checkpoints_dir.glob("*.partial"))
    weights = load_file(run.checkpoints()[0] / "trainable.safetensors")
    assert all(torch.isfinite(w).all() and w.abs().max() < ckpt.MAX_SANE_WEIGHT for w in weights.values())


def test_last_sound_checkpoint_skips_bad_weights_from_older_versions(tmp_path):
    from safetensors.torch import save_file

    for step, value in ((2, 0.5), (4, float("nan")), (6, 1e30)):
        folder = tmp_path / f"step-{step}"
        folder.mkdir()
        save_file({"w": torch.full((2, 2), value)}, str(folder / "trainable.safetensors"))
        (folder / "state.json").write_text(json.dumps({"step": step}))  # written before weights were checked
    assert ckpt.last_sound_checkpoint(sorted(tmp_path.iterdir())).name == "step-2"


def test_disk_full_while_saving_a_checkpoint_keeps_the_older_one_and_says_so(toy_dataset, tmp_path, monkeypatch,
                                                                             capsys):
    real_save = ckpt._save

    def full_at_step_2(obj, path):
        if "step-2" in str(path):
            disk_full()
        real_save(obj, path)

    monkeypatch.setattr(ckpt, "_save", full_at_step_2)
    run = tmp_path / "run"
    assert main(cli_train(quick_config(toy_dataset, max_train_steps=4, checkpointing_steps=1), run)) == 1
    out, err = capsys.readouterr()
    assert "failed: The disk is full: saving checkpoint step-2 in" in out and str(run / "checkpoints") in out
    assert "Free some space" in out and "Traceback" not in out + err
    checkpoints = RunDir(run).checkpoints()
    assert [p.name for p in checkpoints] == ["step-1"] and not list((run / "checkpoints").glob("*.partial"))
    assert load_file(checkpoints[0] / "trainable.safetensors")  # the older checkpoint is whole


def test_disk_full_while_saving_the_output_names_the_folder(toy_dataset, tmp_path, monkeypatch):
    from sdtune_ui.methods.lora import LoRA

    monkeypatch.setattr(LoRA, "save_output", disk_full)
    assert train(quick_config(toy_dataset, max_train_steps=1), tmp_path / "run") == "failed"
    message = last_status(tmp_path / "run")["message"]
    assert message.startswith("The disk is full: saving the final output in") and "output" in message


def test_disk_full_for_the_events_themselves_is_one_line_in_the_cli(toy_dataset, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(EventLog, "emit", disk_full)  # not even the final status can be written
    assert main(cli_train(quick_config(toy_dataset), tmp_path / "run")) == 2
    out, err = capsys.readouterr()
    assert err.startswith("error: The disk is full") and "Traceback" not in out + err and len(err.splitlines()) == 1
    assert not RunDir(tmp_path / "run").heartbeat_path.exists()


@pytest.mark.parametrize(("name", "allow_pickle"), [("damaged.safetensors", False), ("damaged.ckpt", True)])
def test_a_damaged_model_file_is_one_line(toy_dataset, tmp_path, capsys, name, allow_pickle):
    model = tmp_path / name
    model.write_bytes(b"\x00not really weights" * 64)
    config = quick_config(toy_dataset, model=str(model), allow_pickle=allow_pickle)
    assert main(cli_train(config, tmp_path / "run")) == 1
    out, err = capsys.readouterr()
    assert f"failed: Could not read {model}: the file is damaged or not a weights file" in out
    assert "Traceback" not in out + err and "Unexpected error" not in out


def test_a_damaged_checkpoint_says_which_and_how_to_resume_without_it(toy_dataset, tmp_path):
    config = quick_config(toy_dataset, max_train_steps=2, checkpointing_steps=1)
    assert train(config, tmp_path / "run") == "completed"
    checkpoint = RunDir(tmp_path / "run").latest_checkpoint()
    (checkpoint / "optimizer.pt").write_bytes(b"garbage")
    assert train(TrainConfig(**{**config.to_dict(), "max_train_steps": 3}), tmp_path / "run") == "failed"
    message = last_status(tmp_path / "run")["message"]
    assert f"Could not read {checkpoint}" in message and f"Delete {checkpoint} to resume from the checkpoint before" \
        in message


@pytest.mark.parametrize("model", ["nosuch", "no/such-model", "a b/c", "x" * 300, "~nobody-here/x"])
def test_the_app_refuses_a_model_it_cannot_load_at_start(tmp_path, model):
    from sdtune_ui.app.jobs import JobQueue
    from sdtune_ui.ui.context import AppContext

    jobs = JobQueue(lambda config, run_dir, cancel=None: "completed")
    ctx = AppContext(data_dir=tmp_path, jobs=jobs)
    app_ops.load_example(ctx.datasets_dir)
    try:
        for public in (False, True):
            with pytest.raises(ConfigError) as refused:
                app_ops.start_training(ctx, {"model": model, "data": "toy_robot"}, public=public)
            assert "model" in refused.value.field_errors
        with pytest.raises(ConfigError, match="resolution"):
            app_ops.start_training(ctx, {"data": "toy_robot", "resolution": "1e400"}, public=False)
        job = app_ops.start_training(ctx, {"model": "tiny-sd1", "data": "toy_robot"}, public=True)
        assert job.wait(10)
    finally:
        jobs.close()
    assert not list((tmp_path / "runs").glob("*/config.json"))[1:]  # only the accepted run


def test_out_of_memory_offers_the_next_saver_and_resumes_with_it(toy_dataset, tmp_path, monkeypatch, capsys):
    original = Trainer.compute_loss

    def no_memory_from_step_3(self, batch):
        if self.step >= 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return original(self, batch)

    monkeypatch.setattr(Trainer, "compute_loss", no_memory_from_step_3)
    run = tmp_path / "run"
    assert train(quick_config(toy_dataset, max_train_steps=4, checkpointing_steps=2), run) == "failed"
    status = last_status(run)
    assert status["memory_fallback"] == {"gradient_checkpointing": True}
    assert "Next memory-saving setting: gradient checkpointing on" in status["message"]
    assert "from checkpoint step-2" in status["message"]
    assert f"train --output {run} --resume-with-memory-fallback" in status["message"]

    monkeypatch.setattr(Trainer, "compute_loss", original)  # with checkpointing the step fits
    assert main(["train", "--output", str(run), "--resume-with-memory-fallback"]) == 0
    out = capsys.readouterr().out
    assert "Resuming run with less memory: gradient checkpointing on" in out
    assert "Estimated peak GPU memory" in out and "completed" in out
    saved = RunDir(run).config()
    assert saved["gradient_checkpointing"] is True and saved["max_train_steps"] == 4
    logs = [e["message"] for e in RunDir(run).read_events() if e["kind"] == "log"]
    assert any("gradient_checkpointing False -> True" in line for line in logs)
    assert any(line.startswith("Resumed from step-2") for line in logs)


def test_cli_train_prints_the_estimate_beside_the_gpu(tmp_path, monkeypatch, capsys):
    import sdtune_ui.train as core
    from sdtune_ui.app.ops import GpuInfo

    monkeypatch.setattr(core, "train", lambda config, run_dir, **kwargs: "completed")
    monkeypatch.setattr(app_ops, "detect_gpu", lambda: GpuInfo("Tiny GPU", 8.0))
    monkeypatch.setattr(app_ops, "check_model_available", lambda config: None)  # the Hub is off in tests
    data = tmp_path / "data"
    shutil.copytree(__import__("sdtune_ui.examples", fromlist=["x"]).EXAMPLE_DATASET, data)
    args = ["train", "--model", "stable-diffusion-v1-5/stable-diffusion-v1-5", "--data", str(data),
            "--output", str(tmp_path / "run")]
    main([*args, "--method", "full", "--mixed-precision", "bf16"])
    line = capsys.readouterr().out.splitlines()[0]
    assert line.startswith("Estimated peak GPU memory: 1") and "Tiny GPU has 8 GiB: WILL NOT FIT" in line
    assert "Try: gradient checkpointing on" in line
    main([*args, "--rank", "4", "--mixed-precision", "bf16"])
    line = capsys.readouterr().out.splitlines()[0]
    assert "LoRA rank 4, 512 px, batch 1" in line and line.endswith("Tiny GPU has 8 GiB: fits")
