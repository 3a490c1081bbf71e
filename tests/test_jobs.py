"""The GPU job queue: FIFO, one at a time, positions, cancel (queued and running), crashes never stop it.

A fake train function stands in for the core (it follows the same contract: events in the run folder,
cancel checked every step, returns the final status), so these tests load no model and take ~2 s.
"""

from __future__ import annotations

import shutil
import sys
import threading
import time
from pathlib import Path

import pytest

from sdtune_ui.app.jobs import JobQueue, launch_command
from sdtune_ui.app.ops import EXAMPLE_DATASET
from sdtune_ui.config import TrainConfig
from sdtune_ui.errors import ConfigError
from sdtune_ui.runs import RunDir, list_runs


def fake_train(steps: int = 5, step_s: float = 0.02, gate: threading.Event | None = None):
    def train(config: TrainConfig, run_dir: Path, cancel=None) -> str:
        run = RunDir(run_dir)
        events = run.events()
        events.emit("status", status="running", step=0, total=steps)
        if gate is not None:
            gate.wait(5)
        for step in range(1, steps + 1):
            if (cancel and cancel()) or run.cancel_requested():
                events.emit("status", status="cancelled", message=f"Cancelled at step {step - 1}.")
                return "cancelled"
            events.emit("step", step=step, total=steps, loss=1.0 / step, lr=1e-4)
            time.sleep(step_s)
        events.emit("status", status="completed", message="done")
        return "completed"
    return train


def config(tmp_path: Path) -> TrainConfig:
    return TrainConfig(data=str(tmp_path / "data"), max_train_steps=5)


@pytest.fixture
def queue_factory():
    queues: list[JobQueue] = []

    def make(train_fn=None) -> JobQueue:
        queue = JobQueue(train_fn or fake_train())
        queues.append(queue)
        return queue

    yield make
    for queue in queues:
        queue.close()


def test_runs_in_order_one_at_a_time_with_positions(tmp_path, queue_factory):
    gate = threading.Event()
    queue = queue_factory(fake_train(gate=gate))
    first = queue.submit_training(config(tmp_path), tmp_path / "runs" / "a")
    second = queue.submit_training(config(tmp_path), tmp_path / "runs" / "b")
    third = queue.submit_training(config(tmp_path), tmp_path / "runs" / "c")
    deadline = time.time() + 5
    while queue.position(first) != 0 and time.time() < deadline:
        time.sleep(0.01)
    assert [queue.position(j) for j in (first, second, third)] == [0, 1, 2]
    # A queued run already has its folder: the Runs list and a reloaded page see it as queued.
    assert RunDir(tmp_path / "runs" / "c").status() == "queued"
    assert {run.path.name for run in list_runs(tmp_path / "runs")} == {"a", "b", "c"}
    assert queue.run_position(tmp_path / "runs" / "b") == 1
    gate.set()
    for job in (first, second, third):
        assert job.wait(10) and job.result == "completed"
    assert queue.position(third) is None and queue.active() == []
    # Strictly one after the other: each run's first event comes after the previous run's last one.
    ends = [RunDir(tmp_path / "runs" / n).read_events() for n in "abc"]
    for before, after in zip(ends, ends[1:], strict=False):
        started = next(e["t"] for e in after if e.get("status") == "running")
        assert started >= before[-1]["t"]


def test_cancel_queued_and_running(tmp_path, queue_factory):
    queue = queue_factory(fake_train(steps=500, step_s=0.01))
    running = queue.submit_training(config(tmp_path), tmp_path / "runs" / "a")
    waiting = queue.submit_training(config(tmp_path), tmp_path / "runs" / "b")
    deadline = time.time() + 5
    while RunDir(running.run_dir).status() != "running" and time.time() < deadline:
        time.sleep(0.01)
    assert queue.cancel(tmp_path / "runs" / "b")
    assert waiting.wait(1) and waiting.result == "cancelled"
    assert RunDir(tmp_path / "runs" / "b").status() == "cancelled"
    assert queue.cancel(tmp_path / "runs" / "a")
    assert running.wait(5) and running.result == "cancelled"
    assert RunDir(tmp_path / "runs" / "a").status() == "cancelled"
    assert not queue.cancel(tmp_path / "runs" / "missing")


def test_errors_never_stop_the_worker(tmp_path, queue_factory):
    def broken(config, run_dir, cancel=None):
        raise RuntimeError("boom")

    queue = queue_factory(broken)
    job = queue.submit_training(config(tmp_path), tmp_path / "runs" / "a")
    assert job.wait(5)
    run = RunDir(tmp_path / "runs" / "a")
    assert run.status() == "failed" and "boom" in run.read_events()[-1]["message"]
    assert "RuntimeError" in run.log_path.read_text()
    with pytest.raises(ZeroDivisionError):
        queue.run_sync("divide", lambda: 1 / 0)
    assert queue.run_sync("add", lambda: 1 + 1) == 2


def test_bad_config_is_refused_before_queueing(tmp_path, queue_factory):
    queue = queue_factory()
    with pytest.raises(ConfigError) as err:
        queue.submit_training(TrainConfig(data="", learning_rate=-1), tmp_path / "runs" / "a")
    assert {"data", "learning_rate"} <= set(err.value.field_errors)
    assert not (tmp_path / "runs" / "a").exists()


def test_run_sync_waits_for_the_running_job_and_nests(tmp_path, queue_factory):
    gate = threading.Event()
    queue = queue_factory(fake_train(gate=gate))
    job = queue.submit_training(config(tmp_path), tmp_path / "runs" / "a")
    order: list[str] = []
    waiter = threading.Thread(target=lambda: order.append(queue.run_sync("caption", lambda: "captioned")))
    waiter.start()
    time.sleep(0.2)
    assert order == []  # still waiting for the training run
    gate.set()
    waiter.join(5)
    assert job.result == "completed" and order == ["captioned"]
    # A job that itself needs the GPU queue (training that makes class images) runs the call inline.
    assert queue.run_sync("outer", lambda: queue.run_sync("inner", lambda: 42)) == 42


def test_subprocess_job_is_watched_through_the_run_folder(tmp_path, queue_factory):
    queue = queue_factory()
    script = ("import json,sys,time;p=sys.argv[1]+'/events.jsonl';"
              "w=lambda **e: open(p,'a').write(json.dumps(e)+'\\n');"
              "w(kind='status',status='running',t=time.time());"
              "w(kind='step',step=1,total=1,loss=0.5,t=time.time());"
              "w(kind='status',status='completed',message='ok',t=time.time())")
    run_dir = tmp_path / "runs" / "child"
    job = queue.submit_subprocess_training(config(tmp_path), run_dir, command=[sys.executable, "-c", script,
                                                                               str(run_dir)], poll_s=0.05)
    assert job.wait(20) and job.result == "completed"
    crashed = queue.submit_subprocess_training(config(tmp_path), tmp_path / "runs" / "crash", poll_s=0.05,
                                               command=[sys.executable, "-c", "raise SystemExit(3)"])
    assert crashed.wait(20) and crashed.result == "failed"
    assert "code 3" in RunDir(tmp_path / "runs" / "crash").read_events()[-1]["message"]
    argv = launch_command(Path("c.json"), Path("runs/x"), 2, "bf16")
    assert argv[1:3] == ["-m", "accelerate.commands.launch"]
    assert argv[argv.index("--config_file") + 1].endswith("accelerate_configs/ddp.yaml")
    assert argv[argv.index("--num_processes") + 1] == "2"
    fsdp = launch_command(Path("c.json"), Path("runs/x"), 2, "bf16", mode="fsdp")
    assert fsdp[fsdp.index("--config_file") + 1].endswith("accelerate_configs/fsdp_full.yaml")
    assert argv[argv.index("--mixed_precision") + 1] == "bf16" and "--output" in argv
    assert argv[argv.index("-m", 3):argv.index("-m", 3) + 3] == ["-m", "sdtune_ui", "train"]
    assert launch_command(Path("c.json"), Path("runs/x"), 1)[1:4] == ["-m", "sdtune_ui", "train"]


def test_dreambooth_prompt_may_come_from_the_dataset_folder(tmp_path, queue_factory):
    toy_dataset = shutil.copytree(EXAMPLE_DATASET, tmp_path / "toy")
    queue = queue_factory()
    job = queue.submit_training(TrainConfig(data=str(toy_dataset), method="dreambooth", max_train_steps=5),
                                tmp_path / "runs" / "db")
    assert job.wait(5) and job.result == "completed"
    assert RunDir(tmp_path / "runs" / "db").config()["instance_prompt"] == "a photo of sks robot"


def test_hook_runs_before_each_training_job_only(tmp_path):
    calls: list[str] = []
    queue = JobQueue(fake_train(steps=1), before_training=lambda: calls.append("release"))
    try:
        assert queue.run_sync("generate", lambda: "image") == "image"
        assert calls == []  # generation keeps its cached pipeline
        assert queue.submit_training(config(tmp_path), tmp_path / "runs" / "a").wait(5)
        assert calls == ["release"]
    finally:
        queue.close()
