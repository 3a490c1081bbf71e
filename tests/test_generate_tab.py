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

from sdtune_ui.app.jobs import JobQueue
from sdtune_ui.ui.context import AppContext

gradio_client = pytest.importorskip("gradio_client")

FAST = dict(negative_prompt="", scheduler="dpm++", steps=2, guidance=5.0, width=32, height=32, seed=3,
            num_images=2, fuse_lora=False)


class RecordingJobs(JobQueue):
    """The app's GPU queue, remembering what was queued."""

    def __init__(self) -> None:
        super().__init__(lambda config, run_dir, cancel=None: "completed")
        self.labels: list[str] = []

    def submit_job(self, label, target, **who):
        self.labels.append(label)
        return super().submit_job(label, target, **who)


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    from sdtune_ui.ui import generate_tab

    data = tmp_path_factory.mktemp("data")
    (data / "runs").mkdir()
    (data / "exports").mkdir()
    run = data / "runs" / "robot-lora"
    shutil.copytree(trained_run("lora"), run)
    ctx = AppContext(data_dir=data, jobs=RecordingJobs())
    with gr.Blocks() as demo:
        with gr.Tab("Generate"):
            generate_tab.build(ctx)
    from apphelpers import free_port

    _, url, _ = demo.launch(prevent_thread_lock=True, quiet=True, allowed_paths=[str(data)], server_port=free_port())
    try:
        yield ctx, gradio_client.Client(url, verbose=False), run
    finally:
        demo.close()
        ctx.jobs.close()


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

    guard = _Guard(AppContext(data_dir=tmp_path, jobs=None, is_space=True), allow_local=False)
    with pytest.raises(SdtuneError, match="public"):
        guard.model(str(tmp_path))
    with pytest.raises(SdtuneError, match="public"):
        guard.specs(f"{tmp_path}:0.5")
    assert guard.model("tiny-sd1") == "tiny-sd1" and guard.specs("someone/lora:0.5") == ["someone/lora:0.5"]


def test_a_failed_export_leaves_no_empty_folder_in_the_app_or_the_cli(app, tmp_path):
    import subprocess
    import sys

    ctx, client, run = app
    with pytest.raises(Exception, match="single-file checkpoint needs a full fine-tune"):
        client.predict(source="robot-lora", format_name="single-file", api_name="/export")
    assert not (ctx.exports_dir / "robot-lora-final-single-file").exists()
    out = tmp_path / "export"
    result = subprocess.run([sys.executable, "-m", "sdtune_ui", "export", str(run), "--format", "single-file",
                             "--out", str(out)], capture_output=True, text=True, timeout=300,
                            cwd=Path(__file__).resolve().parent.parent)
    assert result.returncode == 2 and "single-file checkpoint needs" in result.stderr
    assert not out.exists() and "Traceback" not in result.stderr


def test_downloads_are_pngs_with_their_settings_like_the_cli_writes(app):
    import json

    from PIL import Image

    ctx, client, run = app
    gallery, _ = client.predict(source="robot-lora", base_model="tiny-sd1", lora_scale=1.0, uploads=[], paths="",
                                allow_pickle=False, prompt="a photo of sks robot", **FAST, api_name="/generate")
    for item, seed in zip(gallery, (3, 4), strict=True):
        assert Path(item["image"]).name == f"seed-{seed}.png"
        with Image.open(item["image"]) as image:
            assert image.format == "PNG"
            settings = json.loads(image.text["parameters"])
        assert settings["seed"] == seed and settings["prompt"] == "a photo of sks robot" and settings["steps"] == 2
        assert settings["model"] == "tiny-sd1" and settings["artifacts"]  # the run's LoRA, by name
    gallery, picture, _ = client.predict(source="robot-lora", base_model="tiny-sd1", lora_scale=1.0, uploads=[],
                                         paths="", allow_pickle=False, prompt="a photo of sks robot", **FAST,
                                         api_name="/compare")
    with Image.open(gallery[0]["image"]) as base, Image.open(gallery[1]["image"]) as tuned:
        assert json.loads(base.text["parameters"])["artifacts"] == []
        assert json.loads(tuned.text["parameters"])["artifacts"]
    assert Path(picture).suffix == ".png"
