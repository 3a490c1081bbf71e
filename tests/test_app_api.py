"""The app end to end through gradio_client: example dataset, tiny-blip captions, a tiny LoRA run watched
while it trains, its artifact; two clients starting runs at once share the GPU queue; readable errors."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
from apphelpers import running_app, wait_for

from sdtune_ui.data.formats import read_captions
from sdtune_ui.runs import RunDir

gradio_client = pytest.importorskip("gradio_client")

FAST = dict(model="tiny-sd1", method="lora", log_every=1, checkpointing_steps=0, learning_rate=1e-3)


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    os.environ.setdefault("SDTUNE_HOME", str(tmp_path_factory.mktemp("home")))
    with running_app(tmp_path_factory.mktemp("data")) as (ctx, url):
        yield ctx, url


def poll(client, run_id: str, timeout: float = 600) -> list[dict]:
    """Every status read until the run ends."""
    seen, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.predict(run_id=run_id, api_name="/run_status")
        seen.append(status)
        if status["status"] in ("completed", "failed", "cancelled"):
            return seen
        time.sleep(0.2)
    raise AssertionError(f"run {run_id} did not finish in {timeout} s: {seen[-1]}")


def test_example_caption_train_and_artifact(app):
    ctx, url = app
    client = gradio_client.Client(url, verbose=False)
    name, report, *_ = client.predict(api_name="/load_example")
    assert "8 images" in report
    folder = ctx.datasets_dir / "toy_robot"
    report, *_ = client.predict(name="toy_robot", model="tiny-blip", trigger_word="sks", pre="", post="",
                                redo=True, api_name="/caption")
    assert "Captioned 8 image(s)" in report
    captions = read_captions(folder)
    assert len(captions) == 8 and all(caption.startswith("sks") for caption in captions.values())

    # Enough steps (a few seconds on a CPU) that polling surely sees the run while it is going.
    started = client.predict(config={**FAST, "data": "toy_robot", "max_train_steps": 60, "validation_steps": 30,
                                     "validation_inference_steps": 2,
                                     "validation_prompts": ["a photo of sks robot"]}, api_name="/start_run")
    seen = poll(client, started["run_id"])
    final = seen[-1]
    assert final["status"] == "completed", final["message"] + final["log"]
    # Loss values arrived while the run was still going, not only at the end.
    assert any(s["status"] == "running" and 0 < len(s["losses"]) < 60 for s in seen), seen
    assert len(final["losses"]) == 60 and final["samples"]
    run = ctx.runs_dir / started["run_id"]
    assert "output/pytorch_lora_weights.safetensors" in final["outputs"]
    assert (run / "output" / "pytorch_lora_weights.safetensors").stat().st_size > 0
    listed = client.predict(api_name="/runs")
    assert any(row["run"] == started["run_id"] and row["status"] == "completed" for row in listed)

    # The Generate tab (generation package) uses the run's LoRA through the same GPU queue.
    if "/generate" not in client.view_api(print_info=False, return_format="dict")["named_endpoints"]:
        pytest.skip("the Generate tab is not installed")
    options = dict(base_model="tiny-sd1", lora_scale=1.0, uploads=[], paths="", allow_pickle=False,
                   prompt="a photo of sks robot", negative_prompt="", scheduler="dpm++", steps=2, guidance=5.0,
                   width=32, height=32, seed=0, num_images=1, fuse_lora=False)
    gallery, status = client.predict(source=started["run_id"], **options, api_name="/generate")
    assert len(gallery) == 1 and "1 image(s)" in status
    pairs, picture, status = client.predict(source=started["run_id"], **options, api_name="/compare")
    assert len(pairs) == 2 and picture


def test_two_clients_share_the_queue(app):
    ctx, url = app
    ctx_dataset = Path(ctx.datasets_dir / "toy_robot")
    if not ctx_dataset.is_dir():
        gradio_client.Client(url, verbose=False).predict(api_name="/load_example")
    clients = [gradio_client.Client(url, verbose=False) for _ in range(2)]
    barrier, started = threading.Barrier(2), [None, None]

    def start(index: int) -> None:
        barrier.wait()
        started[index] = clients[index].predict(config={**FAST, "data": "toy_robot", "max_train_steps": 4},
                                                api_name="/start_run")

    threads = [threading.Thread(target=start, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(s["position"] for s in started) == [0, 1]  # one runs, the other waits: nothing is refused
    first, second = sorted(started, key=lambda s: s["position"])
    waiting = clients[1].predict(run_id=second["run_id"], api_name="/run_status")
    assert waiting["status"] == "queued" and waiting["position"] == 1
    results = {}
    watchers = [threading.Thread(target=lambda c=c, s=s: results.update({s["run_id"]: poll(c, s["run_id"])}))
                for c, s in zip(clients, (first, second), strict=True)]
    for watcher in watchers:
        watcher.start()
    for watcher in watchers:
        watcher.join(900)
    assert [results[s["run_id"]][-1]["status"] for s in (first, second)] == ["completed", "completed"]
    # The second started only after the first had finished.
    events = {s["run_id"]: (ctx.runs_dir / s["run_id"] / "events.jsonl").read_text() for s in (first, second)}
    assert '"status": "queued"' in events[second["run_id"]]
    wait_for(lambda: not ctx.jobs.active(), 10, what="an empty queue")


def test_several_subjects_in_one_run_then_a_run_that_continues_it(app):
    from tests.concept_helpers import two_subjects

    ctx, url = app
    client = gradio_client.Client(url, verbose=False)
    two_subjects(ctx.datasets_dir / "two")  # concepts.json: robot (sks) and square (zwx), prompts per concept
    quick = {**FAST, "data": "two", "resolution": 32, "validation_inference_steps": 2}
    first = client.predict(config={**quick, "max_train_steps": 4}, api_name="/start_run")
    final = poll(client, first["run_id"])[-1]
    assert final["status"] == "completed", final["message"] + final["log"]
    messages = [e.get("message", "") for e in RunDir(ctx.runs_dir / first["run_id"]).read_events()]
    assert any("2 concepts" in m and "sampling balanced" in m for m in messages), messages
    assert any(m.startswith("Concept square: 8 images") for m in messages)

    # A second run starts from the first (named by its run id, as the Train tab's picker or the API gives it).
    more = client.predict(config={**quick, "max_train_steps": 2, "init_from": first["run_id"]}, api_name="/start_run")
    final = poll(client, more["run_id"])[-1]
    assert final["status"] == "completed", final["message"] + final["log"]
    event = next(e for e in RunDir(ctx.runs_dir / more["run_id"]).read_events() if e["kind"] == "init_from")
    assert event["run"] == str((ctx.runs_dir / first["run_id"]).resolve())
    assert event["loaded"] == ["LoRA pytorch_lora_weights.safetensors"]
    assert [prompt for prompt, _ in event["subjects"]] == ["a photo of sks robot", "a photo of zwx square"]


def test_errors_are_readable_messages(app):
    _, url = app
    client = gradio_client.Client(url, verbose=False)
    with pytest.raises(Exception, match="learning_rate") as err:
        client.predict(config={"data": "toy_robot", "learning_rate": -1}, api_name="/start_run")
    assert "Traceback" not in str(err.value)
    with pytest.raises(Exception, match="no run"):
        client.predict(run_id="does-not-exist", api_name="/run_status")
