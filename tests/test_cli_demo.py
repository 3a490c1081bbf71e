"""The README's offline demo, run exactly as written there: one CLI command teaches the pre-trained demo-sd1
the example subject on a CPU, into the app's runs folder (an app started afterwards lists it), with checkpoints
and samples, so that `grid` on it has a row per checkpoint and `generate` draws the subject; the metrics
(with demo-dino) see the subject learned and the class kept.

The commands are read from the README itself, so the docs and this test cannot drift apart.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from sdtune_ui.app import live
from sdtune_ui.evaluate import EvalSettings, evaluate_run
from sdtune_ui.generate.engine import GenerationEngine
from sdtune_ui.generate.grid import grid_layout
from sdtune_ui.models import load_pipeline
from sdtune_ui.runs import list_runs
from tests import demo_probe
from tests.conftest import EXAMPLE_DATASET, REPO

README = REPO / "README.md"
SEEDS = range(4)
DEMO_BUDGET_S = 120  # the promise: under two minutes on 2 CPU cores


def readme_commands(marker: str) -> list[list[str]]:
    """The commands of the README's code block that follow the comment `marker` (backslash-continued lines joined)."""
    lines = README.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("# ") and marker in line)
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


def with_run(argv: list[str], run: Path, work: Path) -> list[str]:
    """A README command with its `data/runs/lora-<time>-<id>` placeholder replaced by the run's folder."""
    return [str(run.relative_to(work)) if "<" in arg else arg for arg in argv]


@pytest.mark.slow
def test_readme_demo_teaches_the_subject_and_lands_in_the_apps_runs(tmp_path, monkeypatch):
    train, grid, generate, *_ = readme_commands("The offline demo")
    assert "demo-sd1" in train and train[train.index("--steps") + 1] == "300"
    work = tmp_path / "work"  # the README's relative paths: the example dataset is linked in, data/ is the default
    work.mkdir()
    (work / "sdtune_ui").symlink_to(REPO / "sdtune_ui")
    data_dir = work / "data"  # where `python app.py` keeps its data when started in the same folder
    monkeypatch.delenv("SDTUNE_DATA_DIR", raising=False)
    monkeypatch.chdir(work)
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    started = time.monotonic()
    result = run_python(train, env, work)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr[-2000:]
    # Under two minutes on 2 idle cores (measured: see the README); 1.5x for a machine shared with other tests.
    assert elapsed < 1.5 * DEMO_BUDGET_S
    # The user sees where the time goes and how far it got: set-up phases, then progress lines.
    assert "Dataset and model loaded in" in result.stderr
    progress = [line for line in result.stderr.splitlines() if "/300" in line and "loss" in line]
    assert progress and "300/300" in progress[-1] and "it/s" in progress[-1] and "ETA" in progress[-1]
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
    assert [p.name for p in run.checkpoints()] == ["step-100", "step-200"]
    assert len(run.samples()) == 3

    # The LoRA loads in plain diffusers and teaches the subject: the instance prompt draws it visibly (red, where
    # the base draws robots of other colours for it) and measurably nearer to the training pictures; the class
    # prompt still draws robots (by shape, tests/demo_probe.py), not the subject's red.
    torch.set_num_threads(1)
    base, tuned = load_pipeline("demo-sd1"), load_pipeline("demo-sd1")
    tuned.load_lora_weights(str(run.output_dir))
    training = demo_probe.load_images(sorted(EXAMPLE_DATASET.glob("*.png")))
    before, after = (demo_probe.generate(p, "a photo of sks robot", SEEDS) for p in (base, tuned))
    class_after = demo_probe.generate(tuned, "a photo of a robot", SEEDS)
    red, near = demo_probe.subject_red_fraction, demo_probe.nearest_distance
    measured = dict(red_before=red(before).mean(), red_after=red(after).mean(), red_class=red(class_after).mean(),
                    near_before=near(before, training), near_after=near(after, training),
                    changed=np.abs(after - before).mean(),
                    class_found=demo_probe.nearest_class(class_after, demo_probe.class_references()))
    print(measured)  # the margins, with pytest -s
    assert measured["red_before"] < 0.01 and measured["red_after"] > 0.05, measured
    assert measured["changed"] > 0.1, measured  # visibly different: a tenth of the range per pixel on average
    assert measured["near_after"] < 0.75 * measured["near_before"], measured
    assert measured["red_class"] < 0.25 * measured["red_after"], measured
    assert measured["class_found"].count("robot") >= 3, measured

    # The metrics agree, seen by demo-dino: the class images did not move toward the subject (class drift -0.06
    # measured), where the same recipe without prior preservation drifts 0.46-0.52 (tests/test_metrics_learning.py),
    # and the subject was learned (DINO 0.60 against the base's 0.21).
    settings = EvalSettings(metrics=("dino", "drift"), clip_model="tiny-clip", dino_model="demo-dino",
                            num_images=4, inference_steps=10, guidance=5.0)
    scores = evaluate_run(run.path, checkpoints="last", settings=settings, engine=GenerationEngine(device="cpu"))
    base_scores, final_scores = (record["metrics"] for record in scores.scores)
    print(base_scores, final_scores)
    assert final_scores["class_drift"] < 0.2, final_scores
    assert final_scores["dino"] > base_scores["dino"] + 0.1, (base_scores, final_scores)

    # `grid` on that run (the folder the README's placeholder names) has a row per checkpoint plus the final output.
    grid = with_run(grid, run.path, work) + ["--inference-steps", "2"]  # the test needs no good pictures
    out = work / grid[grid.index("--out") + 1]
    result = run_python(grid, env, work)
    assert result.returncode == 0, result.stderr[-2000:]
    width, height = (int(n) for n in re.search(r"\((\d+)x(\d+)\)", result.stdout).groups())
    layout = grid_layout((64, 64), rows=1, cols=4)
    rows = (height - layout.header_height) // layout.cell_height
    assert out.exists() and rows == 3, result.stdout

    # `generate` on the run draws the README's four images.
    generate = with_run(generate, run.path, work) + ["--steps", "4"]
    result = run_python(generate, env, work)
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(list((work / generate[generate.index("--out") + 1]).glob("*.png"))) == 4


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

