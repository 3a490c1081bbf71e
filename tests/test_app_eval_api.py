"""Metrics and sweeps through the running app (gradio_client), on the tiny offline model: evaluate a run, read
its best checkpoint, use a checkpoint; a 2 learning rates x 3 steps sweep estimated, run through the job
queue, its results best first with the heatmap, its winner promoted; no host paths in the answers; readable
errors."""

from __future__ import annotations

import json
import os
import time

import pytest
from apphelpers import running_app
from generate_helpers import one_torch_thread  # noqa: F401 - autouse fixture (one torch thread)

gradio_client = pytest.importorskip("gradio_client")

# Offline feature models and fast generation (as tests/test_evaluate_run.py's FAST_EVAL).
FAST_EVAL = dict(clip_model="tiny-clip", dino_model="tiny-dino", num_images=2, inference_steps=3, size=32,
                 metrics=["dino", "drift", "loss"])
RUN = dict(model="tiny-sd1", method="lora", data="toy_robot", resolution=32, rank=4, log_every=1, validation_steps=0,
           instance_prompt="a photo of sks robot", class_prompt="a photo of a robot")


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    os.environ.setdefault("SDTUNE_HOME", str(tmp_path_factory.mktemp("home")))
    with running_app(tmp_path_factory.mktemp("data")) as (ctx, url):
        yield ctx, gradio_client.Client(url, verbose=False)


def until(client, endpoint: str, done, timeout: float = 600, **args) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answer = client.predict(**args, api_name=endpoint)
        if done(answer):
            return answer
        time.sleep(0.5)
    raise AssertionError(f"{endpoint} {args}: not done in {timeout} s: {answer}")


def test_evaluate_a_run_and_use_its_best_checkpoint(app):
    ctx, client = app
    started = client.predict(config={**RUN, "max_train_steps": 6, "checkpointing_steps": 3, "learning_rate": 1e-2},
                             api_name="/start_run")
    run_id = started["run_id"]
    final = until(client, "/run_status", lambda s: s["status"] in ("completed", "failed"), run_id=run_id)
    assert final["status"] == "completed", final["log"]

    result = client.predict(run_id=run_id, settings=FAST_EVAL, checkpoints="all", api_name="/evaluate")
    assert result["run"] == run_id   # an id, not the folder's path on the server
    assert [(s["source"], s["step"]) for s in result["scores"]] == [("base", 0), ("checkpoint", 3), ("output", 6)]
    assert set(result["scores"][1]["metrics"]) == {"dino", "class_preservation", "class_drift", "loss"}
    assert result["best"]["reason"].startswith("highest subject fidelity (DINO")

    shown = client.predict(run_id=run_id, api_name="/run_metrics")
    assert shown["best"] == result["best"] and shown["promoted_from_step"] is None
    assert {(r["source"], r["step"]) for r in shown["rows"] if r["metric"] == "loss"} == {
        ("base", 0), ("checkpoint", 3), ("output", 6)}

    files = client.predict(run_id=run_id, step=3, api_name="/use_checkpoint")
    assert "pytorch_lora_weights.safetensors" in files
    assert client.predict(run_id=run_id, api_name="/run_metrics")["promoted_from_step"] == 3
    assert (ctx.runs_dir / run_id / "output-final" / "pytorch_lora_weights.safetensors").exists()

    with pytest.raises(Exception, match="Unknown evaluation setting") as err:
        client.predict(run_id=run_id, settings={"sharpness": 1}, api_name="/evaluate")
    assert "Traceback" not in str(err.value)
    with pytest.raises(Exception, match="not a run id"):
        client.predict(run_id="../elsewhere", api_name="/evaluate")


def test_a_two_by_three_sweep_through_the_app(app):
    ctx, client = app
    grid = dict(config=RUN, learning_rates="1e-3, 1e-2", steps="2,4,6", metric="dino", settings=FAST_EVAL)
    estimate = client.predict(**grid, api_name="/sweep_estimate")
    assert (estimate["trials"], estimate["train_steps"], estimate["evaluations"]) == (2, 12, 7)
    assert estimate["seconds"] > 0 and "About" in estimate["text"]

    started = client.predict(**grid, name="grid", api_name="/start_sweep")
    sweep_id = started["sweep_id"]
    assert sweep_id.startswith("grid-") and sweep_id in client.predict(api_name="/sweeps")
    seen = []
    final = until(client, "/sweep_status", lambda s: seen.append(s) or s["status"] not in ("queued", "running"),
                  sweep_id=sweep_id)
    assert final["status"] == "completed", final["message"]
    assert any(s["status"] == "running" and s["message"] for s in seen)   # progress showed while it ran

    data = final["results"]
    cells = data["results"]
    assert sorted((c["trial"], c["step"]) for c in cells) == [(t, s) for t in ("lr-0.001", "lr-0.01")
                                                             for s in (2, 4, 6)]
    values = [c["value"] for c in cells]
    assert values == sorted(values, reverse=True)   # best first
    allowed = [c for c in cells if c["metrics"]["class_drift"] < data["max_drift"]]
    assert data["best"]["value"] == max(c["value"] for c in allowed)
    assert [t["status"] for t in data["trials"]] == ["completed", "completed"]
    # Paths come back relative to the app's data folder, and point at what is there.
    assert str(ctx.data_dir) not in json.dumps(final)
    assert final["heatmap"] == f"runs/sweeps/{sweep_id}/heatmap.png"
    assert (ctx.data_dir / final["heatmap"]).stat().st_size > 1000
    assert cells[0]["run_dir"] == f"runs/sweeps/{sweep_id}/{cells[0]['trial']}"

    promoted = client.predict(sweep_id=sweep_id, api_name="/promote_sweep")
    status = client.predict(run_id=promoted["run_id"], api_name="/run_status")
    assert status["status"] == "completed"
    assert (ctx.runs_dir / promoted["run_id"] / "output" / "pytorch_lora_weights.safetensors").exists()
    with pytest.raises(Exception, match="not queued or running"):
        client.predict(sweep_id=sweep_id, api_name="/cancel_sweep")
    with pytest.raises(Exception, match="learning rates above 0"):
        client.predict(**{**grid, "learning_rates": "0"}, api_name="/sweep_estimate")
