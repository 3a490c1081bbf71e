"""The README's offline demo, run exactly as written there: one CLI command trains a LoRA on the example dataset
into the app's runs folder (an app started afterwards lists it), with checkpoints and samples, so that `grid`
on it has a row per checkpoint."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sdtune_ui.app import live
from sdtune_ui.generate.grid import grid_layout
from sdtune_ui.models import load_pipeline
from sdtune_ui.runs import list_runs
from tests.conftest import REPO
from tests.train_helpers import generate_latents

README = REPO / "README.md"


def readme_commands(marker: str) -> list[list[str]]:
    """The commands of the README's code block that follow the comment `marker` (backslash-continued lines joined)."""
    lines = README.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("#") and marker in line)
    commands, current = [], ""
    for line in lines[start + 1:]:
        if line.startswith("#") and not current:
            continue  # comment lines of the same paragraph
        if not line.strip() or line.startswith("```"):
            break
        current += line.rstrip("\\").strip() + " "
        if not line.endswith("\\"):
            commands.append(shlex.split(current, comments=True))
            current = ""
    return commands


def run_python(argv: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    assert argv[0] == "python"
    return subprocess.run([sys.executable, *argv[1:]], capture_output=True, text=True, cwd=cwd, env=env, timeout=900)


@pytest.mark.slow
def test_readme_demo_lands_in_the_apps_runs_with_checkpoints_samples_and_a_grid(tmp_path, monkeypatch):
    train, grid, *_ = readme_commands("The offline demo")
    work = tmp_path / "work"  # the README's relative paths: the example dataset is linked in, data/ is the default
    work.mkdir()
    (work / "sdtune_ui").symlink_to(REPO / "sdtune_ui")
    data_dir = work / "data"  # where `python app.py` keeps its data when started in the same folder
    monkeypatch.delenv("SDTUNE_DATA_DIR", raising=False)
    monkeypatch.chdir(work)
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    result = run_python(train, env, work)
    assert result.returncode == 0, result.stderr[-2000:]
    # The user sees where the time goes and how far it got: set-up phases, then progress lines.
    assert "Dataset and model loaded in" in result.stderr
    progress = [line for line in result.stderr.splitlines() if "/30" in line and "loss" in line]
    assert progress and "30/30" in progress[-1] and "it/s" in progress[-1] and "ETA" in progress[-1]
    runs = list_runs(data_dir / "runs")
    assert len(runs) == 1 and f"Run folder: data/runs/{runs[0].path.name}" in result.stdout
    run = runs[0]

    # An app started afterwards (same default data folder) lists it in the Runs tab, completed.
    from sdtune_ui.ui.launcher import build_parser, create

    ctx, _ = create(build_parser().parse_args([]))
    try:
        assert ctx.runs_dir == data_dir.resolve() / "runs"
        table = live.runs_table(ctx.runs_dir)
    finally:
        ctx.jobs.close()
    assert table["run"].tolist() == [run.path.name] and table["status"].tolist() == ["completed"]
    assert table["dataset"].tolist() == ["toy_robot"] and table["final loss"].tolist()[0] != "-"
    assert [p.name for p in run.checkpoints()] == ["step-10", "step-20"]
    assert len(run.samples()) == 3

    # The LoRA loads in plain diffusers and changes the output.
    lora = run.output_dir / "pytorch_lora_weights.safetensors"
    base = generate_latents(load_pipeline("tiny-sd1"), "a photo of sks robot")
    pipe = load_pipeline("tiny-sd1")
    pipe.load_lora_weights(str(lora.parent))
    assert not torch.allclose(generate_latents(pipe, "a photo of sks robot"), base)

    # `grid` on that run (the folder the README's placeholder names) has a row per checkpoint plus the final output.
    grid = [str(run.path.relative_to(work)) if "<" in arg else arg for arg in grid]
    grid += ["--inference-steps", "2"]  # the README leaves the default; the test needs no good pictures
    out = work / grid[grid.index("--out") + 1]
    result = run_python(grid, env, work)
    assert result.returncode == 0, result.stderr[-2000:]
    width, height = (int(n) for n in re.search(r"\((\d+)x(\d+)\)", result.stdout).groups())
    layout = grid_layout((64, 64), rows=1, cols=4)
    rows = (height - layout.header_height) // layout.cell_height
    assert out.exists() and rows == 3, result.stdout


def test_bad_settings_exit_with_a_message_per_field_before_loading_anything(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "sdtune_ui", "train", "--data", str(tmp_path), "--resolution", "100", "--lr", "0"],
        capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 2
    assert "resolution" in result.stderr and "learning_rate" in result.stderr


def test_an_offline_hub_model_that_was_never_downloaded_leaves_no_run_folder(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "SDTUNE_DATA_DIR": str(tmp_path / "data")}
    result = subprocess.run(
        [sys.executable, "-m", "sdtune_ui", "train", "--model", "someone/not-downloaded-model", "--data",
         str(REPO / "sdtune_ui" / "examples" / "toy_robot"), "--steps", "2"],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "needs the network once" in result.stderr and "Traceback" not in result.stderr
    assert not list_runs(tmp_path / "data" / "runs")
