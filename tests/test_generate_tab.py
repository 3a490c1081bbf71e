"""The Generate tab through gradio_client (a throwaway Blocks with a fake GPU queue): generate with a run's
LoRA, compare with base, grid, export; public apps refuse server paths."""

from __future__ import annotations

import shutil
from pathlib import Path

import gradio as gr
import pytest
from generate_helpers import (
    one_torch_thread,  # noqa: F401 - autouse fixture (one torch thread)
    trained_run,
)

from sdtune_ui.ui.context import AppContext

gradio_client = pytest.importorskip("gradio_client")

FAST = dict(negative_prompt="", scheduler="dpm++", steps=2, guidance=5.0, width=32, height=32, seed=3,
            num_images=2, fuse_lora=False)


class FakeJobs:
    """The GPU queue contract: run_sync waits for its turn (here: none) and runs the function."""

    def __init__(self) -> None:
        self.labels: list[str] = []

    def run_sync(self, label, fn):
        self.labels.append(label)
        return fn()


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    from sdtune_ui.ui import generate_tab

    data = tmp_path_factory.mktemp("data")
    (data / "runs").mkdir()
    (data / "exports").mkdir()
    run = data / "runs" / "robot-lora"
    shutil.copytree(trained_run("lora"), run)
    ctx = AppContext(data_dir=data, jobs=FakeJobs())
    with gr.Blocks() as demo:
        with gr.Tab("Generate"):
            generate_tab.build(ctx)
    from apphelpers import free_port

    _, url, _ = demo.launch(prevent_thread_lock=True, quiet=True, allowed_paths=[str(data)], server_port=free_port())
    try:
        yield ctx, gradio_client.Client(url, verbose=False), run
    finally:
        demo.close()


def test_generate_and_compare_with_a_run_lora(app):
    ctx, client, run = app
    gallery, status = client.predict(source="robot-lora", base_model="tiny-sd1", lora_scale=1.0, uploads=[],
                                     paths="", allow_pickle=False, prompt="a photo of sks robot", **FAST,
                                     api_name="/generate")
    assert [item["caption"] for item in gallery] == ["seed 3", "seed 4"]
    assert "2 image(s)" in status and "tiny-sd1" in status
    gallery, picture, status = client.predict(source="robot-lora@step-3", base_model="tiny-sd1", lora_scale=1.0,
                                              uploads=[], paths="", allow_pickle=False,
                                              prompt="a photo of sks robot", **FAST, api_name="/compare")
    assert [item["caption"] for item in gallery] == ["base · seed 3", "tuned · seed 3", "base · seed 4",
                                                     "tuned · seed 4"]
    assert Path(picture).exists() and "Base tiny-sd1" in status
    assert ctx.jobs.labels == ["Generating", "Comparing"]


def test_grid_and_export(app):
    ctx, client, run = app
    picture, status = client.predict(source="robot-lora", grid_prompts="", checkpoints=["3", "final"],
                                      lora_scales="1.0", prompt="", **FAST, api_name="/grid")
    assert Path(picture).exists() and "Rows" in status
    files, message = client.predict(source=str(run), format_name="kohya", api_name="/export")
    names = sorted(Path(f).name for f in files)
    assert names == ["README.md", "robot-lora-final-kohya.zip", "robot-lora.safetensors"]
    assert (ctx.exports_dir / "robot-lora-final-kohya" / "robot-lora.safetensors").exists()


def test_errors_are_readable_and_paths_outside_runs_are_refused(app):
    ctx, client, run = app
    with pytest.raises(Exception, match="Pick a run from the list"):
        client.predict(source="../../etc", base_model="tiny-sd1", lora_scale=1.0, uploads=[], paths="",
                       allow_pickle=False, prompt="x", **FAST, api_name="/generate")
    with pytest.raises(Exception, match="multiple of 8"):
        client.predict(source="", base_model="tiny-sd1", lora_scale=1.0, uploads=[], paths="",
                       allow_pickle=False, prompt="x", **{**FAST, "width": 36}, api_name="/generate")


def test_public_app_refuses_server_paths(tmp_path):
    from sdtune_ui.errors import SdtuneError
    from sdtune_ui.ui.generate_tab import _Guard

    guard = _Guard(AppContext(data_dir=tmp_path, jobs=FakeJobs(), is_space=True), allow_local=False)
    with pytest.raises(SdtuneError, match="public"):
        guard.model(str(tmp_path))
    with pytest.raises(SdtuneError, match="public"):
        guard.specs(f"{tmp_path}:0.5")
    assert guard.model("tiny-sd1") == "tiny-sd1" and guard.specs("someone/lora:0.5") == ["someone/lora:0.5"]
