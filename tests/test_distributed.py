"""Several processes through `accelerate launch` (CPU, gloo): the same run as one process, cancel, resume."""

from __future__ import annotations

import os
import subprocess
import threading
import time

import pytest
import torch
from safetensors.torch import load_file

from sdtune_ui.app.jobs import launch_command
from sdtune_ui.runs import RunDir
from tests.train_helpers import losses, quick_config, run_training


def launch(config, run_dir, num_processes: int, tmp_path, timeout: int = 300) -> subprocess.CompletedProcess:
    """`accelerate launch` with the project's DDP config: on a machine without GPUs it starts the processes on
    the CPU with gloo (accelerate's `--cpu` would run a single process)."""
    config_path = tmp_path / f"config-{run_dir.name}.json"
    config.save(config_path)
    command = launch_command(config_path, run_dir, num_processes, mixed_precision="no")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.mark.parametrize("method", ["lora", "full"])
def test_two_processes_follow_the_one_process_loss_curve(toy_dataset, tmp_path, method):
    # Same global batch: 2 images on one process, or 1 image on each of two.
    settings = dict(method=method, max_train_steps=4, caption_dropout=0.2, random_flip=True, checkpointing_steps=3)
    single = run_training(quick_config(toy_dataset, train_batch_size=2, **settings), tmp_path / "single")
    result = launch(quick_config(toy_dataset, train_batch_size=1, **settings), tmp_path / "double", 2, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    double = RunDir(tmp_path / "double")
    assert double.status() == "completed"
    assert losses(double) == pytest.approx(losses(single), rel=1e-4)
    # Only the main process writes the run folder: one line per step, one checkpoint.
    assert [e["step"] for e in double.read_events() if e["kind"] == "step"] == [1, 2, 3, 4]
    assert any("2 processes (MULTI_CPU)" in e.get("message", "") for e in double.read_events())
    a = load_file(single.checkpoints()[-1] / "trainable.safetensors")
    b = load_file(double.checkpoints()[-1] / "trainable.safetensors")
    differences = torch.cat([(a[key] - b[key]).abs().flatten() for key in a])
    assert (differences > 1e-5).float().mean() < 1e-3 and differences.max() <= 1e-3


def test_cancel_and_resume_with_two_processes(toy_dataset, tmp_path):
    config = quick_config(toy_dataset, train_batch_size=1, max_train_steps=40, checkpointing_steps=100)
    run = RunDir(tmp_path / "run")

    def cancel_once_training_runs() -> None:
        deadline = time.time() + 240
        while time.time() < deadline:
            if any(e["kind"] == "step" and e["step"] >= 2 for e in run.read_events()):
                run.request_cancel()  # what the app's Cancel button does for a subprocess run
                return
            time.sleep(0.05)

    watcher = threading.Thread(target=cancel_once_training_runs, daemon=True)
    watcher.start()
    result = launch(config, run.path, 2, tmp_path)
    watcher.join()
    assert result.returncode != 0  # the launcher reports the cancelled (exit 130) child as a failure
    assert run.status() == "cancelled"
    stopped_at = run.latest_checkpoint()
    assert stopped_at is not None and 2 <= int(stopped_at.name.split("-")[1]) < 40

    # Resume on a different number of processes (1): it continues from the checkpoint to the end.
    resumed = launch(config.__class__(**{**config.to_dict(), "train_batch_size": 2}), run.path, 1, tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert run.status() == "completed"
    steps = [e["step"] for e in run.read_events() if e["kind"] == "step"]
    assert steps[-1] == 40 and (run.output_dir / "pytorch_lora_weights.safetensors").exists()
