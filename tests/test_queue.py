"""The one GPU queue as every page sees it (no gradio, no model): what, whose, progress, ETA; cancelling a
queued or running call job; a closed page's generations stop, its training does not; grids report progress
and stop between images and denoising steps; messages keep the user's words."""

from __future__ import annotations

import logging
import threading
import time
from types import SimpleNamespace

import pytest
from PIL import Image
from test_jobs import config, fake_train

from sdtune_ui.app import live
from sdtune_ui.app.generation import default_checkpoints, plan_grid, trigger_words
from sdtune_ui.app.jobs import JobQueue
from sdtune_ui.app.queue import can_cancel, queue_markdown, queue_rows
from sdtune_ui.app.text import error_html, escape_markdown
from sdtune_ui.errors import Cancelled, ConfigError
from sdtune_ui.runs import RunDir


@pytest.fixture
def queue():
    jobs = JobQueue(fake_train(steps=400, step_s=0.01))
    yield jobs
    jobs.close()


def wait_until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_rows_show_the_training_ahead_with_its_progress_and_whose_jobs_they_are(tmp_path, queue):
    run = queue.submit_training(config(tmp_path), tmp_path / "runs" / "robot-lora", owner="page-a")
    gate = threading.Event()
    grid = queue.submit_job("Grid", lambda job: gate.wait(10), owner="page-b", stops_with_page=True)
    api = queue.submit("Captioning toy", lambda: None)
    wait_until(lambda: RunDir(run.run_dir).read_events()[-1].get("kind") == "step")
    rows = queue_rows(queue, viewer="page-a")
    assert [(r.job_id, r.position) for r in rows] == [(run.id, 0), (grid.id, 1), (api.id, 2)]
    training = rows[0]
    assert training.what.startswith("training robot-lora") and training.whose == "you" and training.mine
    assert training.progress.startswith("step ") and training.progress.endswith(" of 400")
    assert (rows[1].whose, rows[1].state) == ("another page", "waiting (1 ahead)")
    assert rows[2].whose == "API or terminal"
    assert queue_rows(queue, viewer="page-b")[1].whose == "you"
    assert can_cancel(run, viewer="page-b", viewer_user="", public=False)  # locally anyone may
    assert not can_cancel(run, viewer="page-b", viewer_user="", public=True)  # publicly only your own
    table = queue_markdown(rows)
    assert "step " in table and "waiting (1 ahead)" in table and "another page" in table
    queue.cancel(run.run_dir)
    gate.set()


def test_a_closed_page_stops_its_generations_but_not_its_training(tmp_path, queue):
    run = queue.submit_training(config(tmp_path), tmp_path / "runs" / "a", owner="page")
    started = threading.Event()

    def long_grid(job):
        started.set()
        for done in range(1, 1000):
            job.check_cancelled()
            job.report(done, 999)
            time.sleep(0.01)

    grid = queue.submit_job("Grid", long_grid, owner="page", stops_with_page=True)
    waiting = queue.submit_job("Generating", lambda job: "image", owner="page", stops_with_page=True)
    other = queue.submit_job("Generating", lambda job: "image", owner="other page", stops_with_page=True)
    cancelled = queue.cancel_page_jobs("page")
    assert set(cancelled) == {grid, waiting}
    assert waiting.wait(1) and isinstance(waiting.error, Cancelled)  # dropped from the queue at once
    queue.cancel(run.run_dir)
    assert run.wait(10) and other.wait(10) and other.result == "image"
    assert grid.wait(10) and isinstance(grid.error, Cancelled) and not started.is_set()


def test_a_running_call_job_reports_progress_with_an_eta_and_stops_when_cancelled(queue):
    gate = threading.Event()

    def work(job):
        for done in range(1, 10_000):
            job.check_cancelled()
            job.report(done, 10_000)
            if done == 5:
                gate.set()
            time.sleep(0.005)

    job = queue.submit_job("Grid", work)
    assert gate.wait(10)
    row = queue_rows(queue)[0]
    assert row.progress.startswith("image ") and row.progress.endswith(" of 10000") and row.eta != "-"
    queue.cancel_job(job)
    assert job.wait(5) and isinstance(job.error, Cancelled)
    assert queue.run_sync("after", lambda: 42) == 42  # the queue goes on


class FakeEngine:
    """Generation contract of the engine: images per prompt, a step callback that may raise to stop."""

    def __init__(self):
        self.calls = 0

    def generate(self, model, artifacts, options, allow_pickle=False, step_callback=None):
        self.calls += 1
        for step in range(1, options.steps + 1):
            if step_callback:
                step_callback(step, options.steps)
        return SimpleNamespace(images=[Image.new("RGB", (8, 8))])


def test_grids_report_each_image_and_stop_between_steps(tmp_path, monkeypatch):
    from sdtune_ui.generate import overfitting
    from sdtune_ui.generate.options import GenerationOptions

    run = RunDir(tmp_path / "run").create()
    run.config_path.write_text('{"method": "lora", "model": "tiny-sd1", "instance_prompt": "a photo of sks dog"}')
    found = SimpleNamespace(base_model="tiny-sd1", artifacts=[])
    monkeypatch.setattr("sdtune_ui.generate.artifacts.run_artifacts", lambda path, step: found)
    seen: list[tuple[int, int]] = []
    engine = FakeEngine()
    overfitting.overfitting_grid(run.path, steps=[1, 2, None], engine=engine, options=GenerationOptions(steps=3),
                                 progress=lambda done, total: seen.append((done, total)))
    assert seen == [(i, 12) for i in range(1, 13)]
    engine = FakeEngine()
    with pytest.raises(Cancelled):
        overfitting.overfitting_grid(run.path, steps=[1, 2, None], engine=engine, options=GenerationOptions(steps=3),
                                     progress=lambda done, total: seen.append((done, total)),
                                     cancel=lambda: engine.calls >= 2)
    assert engine.calls == 2  # stopped inside the second image


def test_the_default_grid_fits_the_time_budget():
    every = ["2", "4", "6", "8", "10", "12", "14", "16", "18", "final"]
    assert default_checkpoints(every, row_seconds=1.0) == every
    three = default_checkpoints(every, row_seconds=40.0, budget_s=120.0)
    assert three == ["2", "10", "final"]  # spread over the run, ending with the final output
    assert default_checkpoints(every, row_seconds=1000.0) == ["final"]
    plan = plan_grid(3, 1, 4, 25, 0.5, measured=True)
    assert (plan.images, plan.seconds) == (12, 150.0) and "measured here" in plan.text()


def test_trigger_words_are_each_runs_own():
    assert trigger_words({"method": "textual_inversion", "placeholder_token": "<sks>"}) == ["<sks>"]
    assert trigger_words({"method": "pivotal", "placeholder_token": "<zwx>", "instance_prompt": "a photo of <zwx>"}) \
        == ["<zwx>"]
    assert trigger_words({"method": "dreambooth", "instance_prompt": "a photo of sks robot",
                          "placeholder_token": "<sks>"}) == ["sks"]
    assert trigger_words({"method": "lora", "placeholder_token": "<sks>", "instance_prompt": ""}) == []


def test_messages_keep_angle_brackets_and_list_one_field_per_line():
    err = ConfigError({"instance_prompt": "The instance prompt must contain the placeholder token <sks>.",
                       "rank": "Must be at least 1."})
    shown = error_html(err)
    assert "&lt;sks&gt;" in shown and "<sks>" not in shown
    assert shown.count("<br>") == 2 and "<b>instance_prompt</b>" in shown and "<b>rank</b>" in shown
    assert escape_markdown("a photo of <sks> *bold*") == "a photo of &lt;sks&gt; \\*bold\\*"
    snap = live.RunSnapshot("run_1", tmp := __import__("pathlib").Path("."), status="failed",
                            message="The instance prompt must contain <sks>")
    assert "&lt;sks&gt;" in live.progress_markdown(snap) and tmp


class Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_library_noise_is_dropped_and_real_warnings_are_kept():
    from sdtune_ui import quiet

    quiet.install()
    # Handlers on the loggers themselves: diffusers' loggers may not propagate to the root logger.
    models, peft = logging.getLogger("diffusers.models.modeling_utils"), logging.getLogger("diffusers.loaders.peft")
    seen = Collect()
    for logger in (models, peft):
        logger.addHandler(seen)
    try:
        models.warning("There are modules in UNet2DConditionModel that should be kept in float32: [].")
        peft.warning("No LoRA keys associated to CLIPTextModel found.")
        models.warning("Something the user should know.")
    finally:
        for logger in (models, peft):
            logger.removeHandler(seen)
    assert seen.messages == ["Something the user should know."]


def test_a_port_in_use_says_which_flag_to_use():
    import socket

    from sdtune_ui.ui.launcher import LaunchError, check_port

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(LaunchError, match=f"--port {port + 1}"):
            check_port("127.0.0.1", port)
