"""The app starts a run as an `accelerate launch` child process (two CPU processes over gloo here) and watches it
through the same run folder: /start_run with num_processes=2, then /run_status until it completes."""

from __future__ import annotations

import os
import shutil
import time

import pytest
from apphelpers import running_app

from sdtune_ui.app.ops import EXAMPLE_DATASET
from sdtune_ui.runs import RunDir

gradio_client = pytest.importorskip("gradio_client")
pytest.importorskip("accelerate")


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    os.environ.setdefault("SDTUNE_HOME", str(tmp_path_factory.mktemp("home")))
    with running_app(tmp_path_factory.mktemp("data")) as (ctx, url):
        yield ctx, url


def test_two_process_run_started_from_the_app(app):
    ctx, url = app
    shutil.copytree(EXAMPLE_DATASET, ctx.datasets_dir / "toy_robot", dirs_exist_ok=True)  # a fresh app has it
    client = gradio_client.Client(url, verbose=False)
    config = dict(model="tiny-sd1", method="lora", data="toy_robot", max_train_steps=6, log_every=1,
                  checkpointing_steps=0, learning_rate=1e-3, train_batch_size=1)
    started = client.predict(config=config, num_processes=2, api_name="/start_run")
    seen, deadline = [], time.monotonic() + 600  # generous: a loaded 2-core machine
    while time.monotonic() < deadline:
        status = client.predict(run_id=started["run_id"], api_name="/run_status")
        seen.append(status)
        if status["status"] in ("completed", "failed", "cancelled"):
            break
        time.sleep(0.5)
    run = RunDir(ctx.runs_dir / started["run_id"])
    launched = (run.path / "subprocess.log").read_text(errors="replace")
    final = seen[-1]
    assert final["status"] == "completed", final["message"] + final["log"] + launched[-3000:]
    assert len(final["losses"]) == 6 and final["step"] == 6
    assert "output/pytorch_lora_weights.safetensors" in final["outputs"]
    # The run was an `accelerate launch` of two processes, recorded on the log's first line.
    first_line = launched.splitlines()[0]
    assert "accelerate.commands.launch --config_file" in first_line, first_line
    assert "ddp.yaml --num_processes 2" in first_line, first_line
    # Only the main process writes events: one step event per step, not one per process.
    steps = [event["step"] for event in run.read_events() if event["kind"] == "step"]
    assert steps == [1, 2, 3, 4, 5, 6]
