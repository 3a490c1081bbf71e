"""Runs survive the process that ran them: SIGTERM stops a run at its next step with a checkpoint
("interrupted"); after SIGKILL of a training process or of the app mid-run, the run is found "interrupted" on
restart and one resume action ends with the same weights as a run that was never stopped.

Real processes on the tiny model (slow: each child imports torch and diffusers).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sdtune_ui.app import ops as app_ops
from sdtune_ui.app.jobs import JobQueue
from sdtune_ui.cli.main import main
from sdtune_ui.examples import EXAMPLE_DATASET
from sdtune_ui.runs import RunDir
from tests.train_helpers import losses, quick_config, run_training

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent
LORA = "output/pytorch_lora_weights.safetensors"

# The child: slow steps (so the test can stop it between checkpoints), then the CLI or the app's own queue.
CHILD = """
import sys, time
from sdtune_ui.train.trainer import Trainer
original = Trainer.compute_loss
def slow(self, batch):
    if self.step >= 2:
        time.sleep(0.4)
    return original(self, batch)
Trainer.compute_loss = slow
if sys.argv[1] == "cli":
    from sdtune_ui.cli.main import main
    sys.exit(main(sys.argv[2:]))
from sdtune_ui.app.jobs import JobQueue
from sdtune_ui.config import TrainConfig
jobs = JobQueue()  # as in the app: the run trains in a thread of this process
jobs.submit_training(TrainConfig.load(sys.argv[2]), sys.argv[3]).wait()
"""


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The same run, never stopped: (its config, its folder)."""
    root = tmp_path_factory.mktemp("straight")
    data = root / "toy_robot"
    shutil.copytree(EXAMPLE_DATASET, data)
    config = quick_config(data, max_train_steps=10, checkpointing_steps=2, random_flip=True, caption_dropout=0.5,
                          lr_scheduler="cosine", lr_warmup_steps=2, learning_rate=1e-2)
    return config, run_training(config, root / "run")


def child(tmp_path: Path, *args: str) -> subprocess.Popen:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    log = open(tmp_path / f"child-{time.monotonic_ns()}.log", "wb")  # noqa: SIM115 - closed with the process
    return subprocess.Popen([sys.executable, str(script), *args], cwd=REPO, env=env, stdout=log,
                            stderr=subprocess.STDOUT)


def wait_for_step(process: subprocess.Popen, run: Path, step: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(e["kind"] == "step" and e["step"] >= step for e in RunDir(run).read_events()):
            return
        assert process.poll() is None, f"the child exited with {process.returncode} before step {step}"
        time.sleep(0.05)
    process.kill()
    raise AssertionError(f"no step {step} within {timeout} s")


def last_status(run: Path) -> dict:
    return [e for e in RunDir(run).read_events() if e["kind"] == "status"][-1]


def same_weights(run: Path, straight_run: RunDir) -> None:
    a, b = load_file(straight_run.path / LORA), load_file(run / LORA)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-6)
    assert losses(RunDir(run))[-2:] == pytest.approx(losses(straight_run)[-2:], rel=1e-4)


def test_sigterm_then_sigkill_of_a_cli_run_resume_to_the_same_weights(straight, tmp_path, capsys):
    config, straight_run = straight
    run = tmp_path / "runs" / "cli-run"
    config.save(tmp_path / "config.json")

    first = child(tmp_path, "cli", "train", "--config", str(tmp_path / "config.json"), "--output", str(run))
    wait_for_step(first, run, 3)
    first.send_signal(signal.SIGTERM)  # docker stop, a Space restarting
    assert first.wait(120) == 130
    status = last_status(run)
    stopped = RunDir(run).latest_checkpoint()
    assert status["status"] == "interrupted" and int(stopped.name.split("-")[1]) >= 3  # a checkpoint at the stop
    assert f"resume continues from checkpoint {stopped.name}" in status["message"]
    assert not RunDir(run).heartbeat_path.exists()

    second = child(tmp_path, "cli", "train", "--output", str(run))  # resumes with the folder's own settings
    wait_for_step(second, run, int(stopped.name.split("-")[1]) + 3)
    second.kill()  # SIGKILL: no handler runs, the folder still says "running"
    second.wait(60)
    assert RunDir(run).status() == "running" and RunDir(run).heartbeat_path.exists()

    assert main(["runs", "--root", str(run.parent)]) == 0  # what a user looks at after a restart
    latest = RunDir(run).latest_checkpoint()
    assert "interrupted" in capsys.readouterr().out
    assert last_status(run)["status"] == "interrupted" and latest.name in last_status(run)["message"]

    assert main(["train", "--output", str(run)]) == 0  # one action
    same_weights(run, straight_run)


def test_sigkill_of_the_app_mid_run_then_restart_and_resume(straight, tmp_path):
    config, straight_run = straight
    runs = tmp_path / "runs"
    run = runs / "app-run"
    config.save(tmp_path / "config.json")
    app = child(tmp_path, "app", str(tmp_path / "config.json"), str(run))
    wait_for_step(app, run, 5)
    app.kill()
    app.wait(60)
    assert RunDir(run).status() == "running"

    assert app_ops.release_orphaned_runs(runs) == ["app-run"]  # what the restarted app does first
    assert last_status(run)["status"] == "interrupted"
    assert RunDir(run).latest_checkpoint().name in last_status(run)["message"]
    jobs = JobQueue()
    try:
        job = app_ops.resume_run(jobs, runs, "app-run")  # one click, no Cancel first
        assert job.wait(300) and job.result == "completed", last_status(run)
    finally:
        jobs.close()
    same_weights(run, straight_run)
