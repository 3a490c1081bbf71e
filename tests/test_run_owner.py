"""Who owns a run folder, and what happens when that process dies (no model, no training: seconds)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sdtune_ui.app import live
from sdtune_ui.app import ops as app_ops
from sdtune_ui.app.jobs import JobQueue
from sdtune_ui.config import TrainConfig
from sdtune_ui.runs import FINISHED, STALE_AFTER_S, STATUSES, RunDir, mark_if_interrupted, this_process
from sdtune_ui.train import RunBusy, train


def running_run(root: Path, name: str = "run", owner: dict | None = None, heartbeat_age_s: float = 0.0,
                checkpoint_steps: tuple[int, ...] = ()) -> RunDir:
    """A folder as a process that is (or was) training it leaves it: config, "running", owner and heartbeat."""
    run = RunDir(root / name).create()
    TrainConfig(data="x").save(run.config_path)
    run.events().emit("status", status="running", step=0, total=10)
    for step in checkpoint_steps:
        (run.checkpoints_dir / f"step-{step}").mkdir()
    if owner is not None:
        run.owner_path.write_text(json.dumps(owner))
        run.heartbeat_path.write_text("")
        stamp = time.time() - heartbeat_age_s
        os.utime(run.heartbeat_path, (stamp, stamp))
    return run


def dead_process() -> dict:
    """The owner record of a process that has exited (same host and boot, its real start time)."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.2)"])
    from sdtune_ui.runs import _process_start

    started = _process_start(child.pid)
    child.wait()
    return {**this_process(), "pid": child.pid, "process_start": started}


def test_interrupted_is_a_finished_status():
    assert "interrupted" in STATUSES and "interrupted" in FINISHED


def test_the_running_process_owns_its_run_and_its_heartbeat_ends_with_it(tmp_path):
    run = RunDir(tmp_path / "run").create()
    heartbeat = run.claim()
    try:
        owner = run.owner()
        assert owner["pid"] == os.getpid() and owner["host"] == this_process()["host"]
        assert run.heartbeat_path.exists() and run.owner_alive() and run.owner_gone() is None
    finally:
        heartbeat.stop()
    assert not run.heartbeat_path.exists()
    assert "ended without a final status" in run.owner_gone()


def test_heartbeat_is_touched_by_a_thread(tmp_path):
    from sdtune_ui.runs import Heartbeat

    path = tmp_path / "heartbeat"
    beat = Heartbeat(path, interval=0.05).start()
    try:
        os.utime(path, (1000.0, 1000.0))
        deadline = time.monotonic() + 5
        while path.stat().st_mtime < 2000 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert path.stat().st_mtime > time.time() - 60
    finally:
        beat.stop()


def test_a_dead_owner_on_this_host_is_gone_at_once(tmp_path):
    run = running_run(tmp_path, owner=dead_process())
    assert "no longer running" in run.owner_gone()


def test_a_reused_pid_is_not_the_owner(tmp_path):
    # Our own PID, but another start time: the owner was an earlier process with the same PID (e.g. PID 1 in
    # a restarted container).
    run = running_run(tmp_path, owner={**this_process(), "process_start": "1"})
    if this_process()["process_start"] is None:
        pytest.skip("no /proc: process start times are not readable here")
    assert "no longer running" in run.owner_gone()


def test_an_owner_on_another_host_is_judged_by_its_heartbeat(tmp_path):
    elsewhere = {"pid": 4242, "host": "another-machine", "boot": "x", "process_start": "7"}
    fresh = running_run(tmp_path, "fresh", owner=elsewhere, heartbeat_age_s=5)
    stale = running_run(tmp_path, "stale", owner=elsewhere, heartbeat_age_s=STALE_AFTER_S + 60)
    assert fresh.owner_gone() is None and fresh.owner_alive()
    assert "no heartbeat" in stale.owner_gone() and "another-machine" in stale.owner_gone()


def test_a_run_without_owner_file_is_left_as_it_was(tmp_path):
    run = running_run(tmp_path)  # e.g. written by an older version: nothing can be said about its process
    assert run.owner_gone() is None and not mark_if_interrupted(run)
    assert run.status() == "running"


def test_killed_run_is_marked_interrupted_naming_its_last_checkpoint(tmp_path):
    run = running_run(tmp_path, owner=dead_process(), checkpoint_steps=(2, 4))
    # The live view shows it as it is, without writing anything.
    snap = live.read_snapshot(run.path)
    assert snap.status == "interrupted" and "step-4" in snap.message and run.status() == "running"
    assert mark_if_interrupted(run)
    assert run.status() == "interrupted"
    message = [e for e in run.read_events() if e["kind"] == "status"][-1]["message"]
    assert "no longer running" in message and "checkpoint step-4" in message
    assert not mark_if_interrupted(run)  # once


def test_app_start_marks_killed_runs_and_resume_works_at_once(tmp_path):
    killed = running_run(tmp_path, "killed", owner=dead_process(), checkpoint_steps=(2,))
    alive = running_run(tmp_path, "alive", owner={"pid": 1, "host": "elsewhere", "boot": "", "process_start": None})
    assert app_ops.release_orphaned_runs(tmp_path) == ["killed"]
    assert killed.status() == "interrupted" and alive.status() == "running"
    jobs = JobQueue(lambda config, run_dir, cancel=None: "completed")
    try:
        job = app_ops.resume_run(jobs, tmp_path, "killed")  # no Cancel first
        assert job.wait(10) and job.result == "completed"
        with pytest.raises(Exception, match="still running"):
            app_ops.resume_run(jobs, tmp_path, "alive")
    finally:
        jobs.close()


def test_resume_of_a_run_killed_since_the_app_started_needs_no_restart(tmp_path):
    run = running_run(tmp_path, "killed", owner=dead_process(), checkpoint_steps=(2,))
    jobs = JobQueue(lambda config, run_dir, cancel=None: "completed")
    try:
        job = app_ops.resume_run(jobs, tmp_path, "killed")
        assert job.wait(10) and job.result == "completed"
        assert [e["status"] for e in run.read_events() if e["kind"] == "status"][-2:] == ["interrupted", "queued"]
    finally:
        jobs.close()


def test_a_folder_a_live_process_trains_is_refused_before_anything_is_written(tmp_path):
    run = running_run(tmp_path, owner={"pid": 1, "host": "elsewhere", "boot": "", "process_start": None})
    before = run.events_path.read_bytes()
    with pytest.raises(RunBusy, match="being trained right now by PID 1 on elsewhere"):
        train(TrainConfig(data=str(tmp_path)), run.path)
    assert run.events_path.read_bytes() == before


def test_an_interrupt_is_not_turned_into_a_cancel(tmp_path):
    run = RunDir(tmp_path / "run").create()
    run.request_interrupt()
    run.request_cancel()  # the app's queue closing after SIGTERM
    assert run.cancel_requested() and run.interrupt_requested()
    run.clear_cancel()
    run.request_cancel()
    assert run.cancel_requested() and not run.interrupt_requested()


def test_the_app_forwards_sigterm_to_the_running_training(tmp_path):
    from sdtune_ui.ui.launcher import stop_runs_on_sigterm

    class Job:
        run_dir = tmp_path / "run"

    class Jobs:
        def active(self):
            return [Job()]

    import signal

    previous = signal.getsignal(signal.SIGTERM)
    try:
        stop_runs_on_sigterm(Jobs())
        with pytest.raises(KeyboardInterrupt):
            signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert RunDir(tmp_path / "run").interrupt_requested()


def test_cli_runs_lists_and_marks_killed_runs(tmp_path, capsys):
    from sdtune_ui.cli.main import main

    running_run(tmp_path, "killed", owner=dead_process(), checkpoint_steps=(2,))
    assert main(["runs", "--root", str(tmp_path)]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("killed") and "interrupted" in line and "step-2" in line
    assert RunDir(tmp_path / "killed").status() == "interrupted"
