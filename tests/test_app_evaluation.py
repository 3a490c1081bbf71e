"""What the app shows about scores and sweeps, without gradio and without training: evaluation settings from
widgets or API callers, the metrics plot's data and the best-checkpoint line, score notes on the overfitting
grid, a sweep's results table (failed trials with their reason), its status while queued, running or after
the app stopped, its time estimate from speeds measured here, and answers without host paths."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sdtune_ui.app import evaluation as app_eval
from sdtune_ui.app import sweeps
from sdtune_ui.app.generation import SpeedLog
from sdtune_ui.config import TrainConfig
from sdtune_ui.errors import SdtuneError
from sdtune_ui.evaluate import EvalSettings
from sdtune_ui.evaluate.report import score_notes
from sdtune_ui.examples import EXAMPLE_DATASET
from sdtune_ui.runs import RunDir

FAST = EvalSettings(clip_model="tiny-clip", dino_model="tiny-dino", num_images=2, inference_steps=3, size=32)
CONFIG = dict(model="tiny-sd1", method="lora", data=str(EXAMPLE_DATASET), resolution=32, max_train_steps=6)


def scored_run(folder: Path, settings: EvalSettings = FAST) -> RunDir:
    """A run folder with two checkpoints, an output and scores as `evaluate` writes them (no weights)."""
    run = RunDir(folder).create()
    TrainConfig(**CONFIG).save(run.config_path)
    for step in (2, 4):
        (run.checkpoints_dir / f"step-{step}").mkdir()
    rows = [("base", 0, 0.30, 0.0, 1.10), ("checkpoint", 2, 0.41, 0.01, 0.60), ("checkpoint", 4, 0.52, 0.09, 0.30),
            ("output", 6, 0.55, 0.20, 0.20)]
    lines = [{"source": source, "step": step, "metrics": {"dino": dino, "class_drift": drift, "loss": loss},
              "settings": settings.to_dict(), "seconds": 1.5, "t": 100 + step}
             for source, step, dino, drift, loss in rows]
    (run.path / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    run.events().emit("metric", step=3, source="training", metrics={"loss": 0.5})
    return run


def test_evaluation_settings_from_widgets_and_api_callers(tmp_path):
    settings = app_eval.eval_settings({"metrics": ["dino", "loss"], "num_images": 2.0, "inference_steps": "3",
                                       "clip_model": "tiny-clip", "dino_model": "facebook/dinov2-small",
                                       "max_drift": "0.1", "size": None})
    assert (settings.metrics, settings.num_images, settings.inference_steps, settings.max_drift) == (
        ("dino", "loss"), 2, 3, 0.1)
    assert app_eval.eval_settings({"metrics": "dino, clip-t"}).metrics == ("dino", "clip-t")
    with pytest.raises(SdtuneError, match="Unknown evaluation setting.*sharpness"):
        app_eval.eval_settings({"sharpness": 1})
    with pytest.raises(SdtuneError, match="num_images: 2.5 is not a valid value"):
        app_eval.eval_settings({"num_images": 2.5})
    with pytest.raises(SdtuneError, match="num_images: inf is not a valid value"):
        app_eval.eval_settings({"num_images": float("inf")})
    with pytest.raises(SdtuneError, match="unknown metric"):
        app_eval.eval_settings({"metrics": ["dino", "beauty"]})
    # An evaluation generates images: the Generate tab's limits, stricter on a public app.
    assert app_eval.eval_settings({"num_images": 8, "inference_steps": 100}).num_images == 8
    with pytest.raises(SdtuneError) as err:
        app_eval.eval_settings({"num_images": 8, "inference_steps": 100}, public=True)
    assert "num_images: This public app takes at most 4 (got 8)" in str(err.value)
    assert "inference_steps: This public app takes at most 50 (got 100)" in str(err.value)
    with pytest.raises(SdtuneError, match="num_images: Must be between 1 and 16 .got 100,000"):
        app_eval.eval_settings({"num_images": 100_000})
    # A folder on the host is a feature model only where the app may read host paths.
    assert app_eval.eval_settings({"clip_model": str(tmp_path)}).clip_model == str(tmp_path)
    with pytest.raises(SdtuneError, match="CLIP model .*Hub id"):
        app_eval.eval_settings({"clip_model": str(tmp_path)}, allow_local_paths=False)


def test_the_metrics_plot_and_the_best_checkpoint_line(tmp_path):
    run = scored_run(tmp_path / "run")
    view = app_eval.metrics_view(run.path, [{"step": 3, "metrics": {"loss": 0.5}}])
    # Ranked by DINO: step 4 scores higher but drifted 0.09 > 0.05, so step 2 wins, and the line says why.
    assert view.metric == "dino" and view.best_step == 2 and view.steps == [2, 4]
    assert "**Best checkpoint: step 2**" in view.best_text
    assert "highest subject fidelity (DINO 0.410) with class drift under 0.05 (2 of 3 drifted more)" in view.best_text
    assert [key for _, key in view.choices] == ["dino", "class_drift", "loss"]
    drawn = view.frame.dropna()
    assert drawn[drawn.series == "checkpoints"][["step", "value"]].values.tolist() == [[2, 0.41], [4, 0.52], [6, 0.55]]
    assert drawn[drawn.series == "base model"]["value"].tolist() == [0.30, 0.30]
    # Every series is named even when it has no point (a plot's colours are fixed from its first data).
    assert set(view.frame.series) == set(app_eval.PLOT_SERIES)

    loss = app_eval.metrics_view(run.path, [{"step": 3, "metrics": {"loss": 0.5}}], "loss").frame.dropna()
    assert loss[loss.series == "training probe"][["step", "value"]].values.tolist() == [[3, 0.5]]

    # Scores measured with other settings are not compared with the newest evaluation's.
    other = json.dumps({"source": "checkpoint", "step": 4, "metrics": {"dino": 0.99, "class_drift": 0.0},
                        "settings": EvalSettings().to_dict(), "t": 1})
    with open(run.path / "metrics.jsonl", "a") as handle:
        handle.write(other + "\n")
    assert app_eval.metrics_view(run.path, []).best_step == 2

    empty = app_eval.metrics_view(RunDir(tmp_path / "new").create().path, [])
    assert empty.metric is None and "not evaluated yet" in empty.best_text and empty.frame["value"].isna().all()


def test_evaluating_a_run_again_starts_from_its_last_evaluation_s_settings(tmp_path):
    run = scored_run(tmp_path / "run")
    settings = app_eval.last_settings(run.path)
    assert set(settings) <= set(app_eval.SETTING_FIELDS)
    assert (settings["dino_model"], settings["num_images"], settings["size"]) == ("tiny-dino", 2, 32)
    assert app_eval.eval_settings(settings) == FAST   # what the form sends back measures like the last time
    assert app_eval.last_settings(RunDir(tmp_path / "new").create().path) is None
    assert app_eval.last_settings(None) is None


def test_grid_rows_carry_their_scores_and_the_best_is_marked(tmp_path):
    run = scored_run(tmp_path / "run")
    assert score_notes(run.path) == {2: "best\nDINO 0.410\ndrift 0.010\nloss 0.6000",
                                     4: "DINO 0.520\ndrift 0.090\nloss 0.3000",
                                     None: "DINO 0.550\ndrift 0.200\nloss 0.2000"}
    assert score_notes(RunDir(tmp_path / "new").create().path) == {}


def test_a_label_with_new_lines_keeps_them_in_the_grid():
    from PIL import Image

    from sdtune_ui.generate.grid import _wrapped, make_grid

    assert _wrapped("step 2\nDINO 0.410\ndrift 0.010", 200, 12, max_lines=6) == ["step 2", "DINO 0.410", "drift 0.010"]
    grid = make_grid([[Image.new("RGB", (32, 32), "red")]], row_labels=["step 2\nbest\nDINO 0.41\ndrift 0.01\nloss"],
                     col_labels=["a photo"])
    # Five label lines fit a 128 px row: dark text pixels reach below the fourth line.
    label = grid.crop((0, 72 + 4 * 16, 120, 72 + 128)).convert("L")
    assert min(label.getdata()) < 100


SWEEP = {
    "status": "completed", "metric": "dino", "max_drift": 0.05,
    "best": {"trial": "lr-0.001", "step": 2, "reason": "highest subject fidelity (DINO 0.410) with class drift under "
             "0.05", "run_dir": "/data/runs/sweeps/s/lr-0.001"},
    "results": [{"trial": "lr-0.001", "learning_rate": 0.001, "rank": None, "step": 2, "value": 0.41,
                 "metrics": {"dino": 0.41, "class_drift": 0.01}, "trial_status": "completed",
                 "run_dir": "/data/runs/sweeps/s/lr-0.001"},
                {"trial": "lr-0.0005", "learning_rate": 5e-4, "rank": None, "step": 2, "value": 0.30,
                 "metrics": {"dino": 0.30}, "trial_status": "failed", "run_dir": "/data/runs/sweeps/s/lr-0.0005"}],
    "trials": [{"name": "lr-1e06", "learning_rate": 1e6, "rank": None, "status": "failed",
                "reason": "The loss became nan at step 1."},
               {"name": "lr-0.0005", "learning_rate": 5e-4, "rank": None, "status": "failed",
                "reason": "Out of memory."},
               {"name": "lr-0.001", "learning_rate": 1e-3, "rank": None, "status": "completed", "reason": ""}],
}


def test_the_results_table_lists_failed_trials_with_their_reason():
    rows = sweeps.results_rows(SWEEP)
    assert [row[1] for row in rows] == ["lr-0.001", "lr-0.0005", "lr-1e06"]
    assert rows[0][7] == "completed (best)" and rows[0][8] == ""
    assert rows[1][7:] == ["failed", "Out of memory."]     # scored up to the step it reached
    assert rows[2][4:] == ["-", "-", "-", "failed", "The loss became nan at step 1."]  # never scored
    assert "**Winner: lr-0.001 at step 2**" in sweeps.best_text(SWEEP)


def test_answers_carry_no_host_paths():
    shown = sweeps.public_view({"heatmap": Path("/data/runs/sweeps/s/heatmap.png"), "results": SWEEP}, Path("/data"))
    assert shown["heatmap"] == "runs/sweeps/s/heatmap.png"
    assert shown["results"]["results"][0]["run_dir"] == "runs/sweeps/s/lr-0.001"
    assert "/data/" not in json.dumps(shown)


class FakeJobs:
    def __init__(self, active=()):
        self._active = list(active)

    def active(self):
        return self._active

    def position(self, job):
        return 0 if job in self._active else None


def test_sweep_status_while_queued_and_after_the_app_stopped(tmp_path):
    runs_dir = tmp_path / "runs"
    folder = sweeps.new_sweep_dir(runs_dir, "robot grid")
    assert folder.name.startswith("robot-grid-")
    folder.mkdir(parents=True)
    sweeps._write_status(folder, "running", "Training lr 0.001 (1/2)", phase="train", trial="lr-0.001",
                         fraction=0.1)
    job = type("Job", (), {"label": f"sweep {folder.name}"})()
    shown = sweeps.sweep_status(FakeJobs([job]), runs_dir, folder.name)
    assert (shown["status"], shown["message"], shown["position"], shown["results"]) == (
        "running", "Training lr 0.001 (1/2)", 0, None)
    assert sweeps.list_sweeps(runs_dir) == [folder.name]
    # The app restarted: nobody runs it any more.
    assert sweeps.sweep_status(FakeJobs(), runs_dir, folder.name)["status"] == "interrupted"
    with pytest.raises(SdtuneError, match="not a sweep id"):
        sweeps.sweep_status(FakeJobs(), runs_dir, "../x")
    with pytest.raises(SdtuneError, match="no sweep"):
        sweeps.sweep_status(FakeJobs(), runs_dir, "missing")


def test_sweep_settings_from_text_and_their_errors():
    assert sweeps.parse_numbers("5e-5, 1e-4;2e-4", float, "Learning rates") == [5e-5, 1e-4, 2e-4]
    assert sweeps.parse_numbers([200, "400"], int, "Steps") == [200, 400]
    with pytest.raises(SdtuneError, match="Steps: give whole numbers"):
        sweeps.parse_numbers("200, 400.5", int, "Steps")
    with pytest.raises(SdtuneError, match="Learning rates: give numbers"):
        sweeps.parse_numbers("fast", float, "Learning rates")
    with pytest.raises(SdtuneError, match="Learning rates: give finite numbers"):
        sweeps.parse_numbers("1e-4, inf", float, "Learning rates")
    with pytest.raises(SdtuneError, match="Steps: give numbers"):
        sweeps.parse_numbers("1e400", int, "Steps")


def test_the_estimate_uses_speeds_measured_here_else_says_it_assumes(tmp_path):
    runs_dir = tmp_path / "runs"
    spec = sweeps.make_spec(TrainConfig(**CONFIG), "1e-3, 1e-2", "2, 4, 6", "", "dino", FAST, tmp_path / "s")
    speeds = sweeps.measured_speeds(runs_dir, spec.base, spec.settings, SpeedLog().step_seconds("tiny-sd1", cuda=False),
                                    cuda=False)
    assert (speeds.step_s, speeds.setup_s) == (sweeps.ASSUMED_STEP_S["tiny"], sweeps.ASSUMED_SETUP_S["tiny"])
    assert "assumed" in speeds.basis
    text = sweeps.estimate_text(spec, speeds)
    assert text.startswith("**2 trial(s)** (one per learning rate), each training 6 steps (= 12 steps)")
    assert "7 evaluations of 6 images" in text

    # A finished run of the same model at the same resolution: 4 steps/s, 3 s of setup, 1.5 s per checkpoint.
    run = scored_run(runs_dir / "earlier")
    events = [{"t": 100.0, "kind": "status", "status": "starting"},
              {"t": 103.0, "kind": "step", "step": 1, "total": 6, "loss": 0.5, "it_s": 4.0},
              {"t": 104.0, "kind": "status", "status": "completed"}]
    run.events_path.write_text("".join(json.dumps(e) + "\n" for e in events))
    measured = sweeps.measured_speeds(runs_dir, spec.base, spec.settings, (0.02, False), cuda=False)
    assert (measured.step_s, measured.setup_s, measured.evaluation_s) == (0.25, 3.0, 1.5)
    assert "measured on 1 earlier run(s)" in measured.basis and "measured on 3 earlier checkpoint(s)" in measured.basis
    assert sweeps.estimate(spec, measured.step_s, measured.evaluation_s, measured.setup_s)["seconds"] == round(
        12 * 0.25 + 7 * 1.5 + 2 * 3.0, 1)


def test_the_trainers_probes_reach_the_run_view_once_per_step(tmp_path):
    from sdtune_ui.app.live import read_snapshot

    run = RunDir(tmp_path / "run").create()
    TrainConfig(**CONFIG).save(run.config_path)
    events = run.events()
    for step, loss in ((2, 0.9), (4, 0.7), (2, 0.8), (4, 0.6)):   # resumed from step 2: measured again
        events.emit("metric", step=step, source="training", metrics={"loss": loss})
    events.emit("metric", step=4, source="checkpoint", metrics={"loss": 0.5})   # evaluate's: metrics.jsonl
    assert read_snapshot(run.path).probes == [{"step": 2, "metrics": {"loss": 0.8}},
                                              {"step": 4, "metrics": {"loss": 0.6}}]


def test_a_sweeps_trials_keep_within_what_the_app_lets_its_user_run(tmp_path):
    from sdtune_ui.app.ops import load_example
    from sdtune_ui.app.workspace import Workspaces

    workspace = Workspaces(tmp_path / "data").whole()
    load_example(workspace.create().datasets_dir)
    values = {"model": "tiny-sd1", "method": "lora", "data": "toy_robot", "resolution": 32}
    fast = {"clip_model": "tiny-clip", "dino_model": "tiny-dino", "num_images": 2, "inference_steps": 3}
    spec = sweeps.spec_for(workspace, values, "1e-3, 1e-2", "2, 4", "", "dino", fast, public=True,
                           allow_local_paths=False)
    assert spec.base.data == str(workspace.datasets_dir / "toy_robot") and spec.steps == [2, 4]
    # The base config is within the public limits, but a trial would train 100,000 steps.
    with pytest.raises(SdtuneError, match="max_train_steps"):
        sweeps.spec_for(workspace, values, "1e-3", "2, 100000", "", "dino", fast, public=True,
                        allow_local_paths=False)
    assert sweeps.spec_for(workspace, values, "1e-3", "2, 100000", "", "dino", fast, public=False,
                           allow_local_paths=True).steps == [2, 100000]
