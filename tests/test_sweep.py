"""Learning rate x steps sweep on the tiny model, offline on CPU: one run per rate, every listed step scored,
sweep.json best first, the heatmap, failed trials (divergence, out of memory) recorded while the sweep goes
on, cancelling, and promoting the winner to a normal run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from generate_helpers import one_torch_thread  # noqa: F401 - autouse fixture (one torch thread)
from PIL import Image

from sdtune_ui.app.ops import safe_name
from sdtune_ui.config import TrainConfig
from sdtune_ui.errors import SdtuneError
from sdtune_ui.evaluate import EvalSettings
from sdtune_ui.evaluate.sweep import SweepSpec, promote_sweep, read_sweep, run_sweep
from sdtune_ui.examples import EXAMPLE_DATASET
from sdtune_ui.runs import RunDir, list_runs

BASE = dict(model="tiny-sd1", method="lora", data=str(EXAMPLE_DATASET), resolution=32, rank=4, log_every=1,
            validation_steps=0, instance_prompt="a photo of sks robot", class_prompt="a photo of a robot")
FAST_EVAL = dict(clip_model="tiny-clip", dino_model="tiny-dino", num_images=2, inference_steps=3, size=32)
FAST_FLAGS = ["--clip-model", "tiny-clip", "--dino-model", "tiny-dino", "--num-images", "2",
              "--inference-steps", "3", "--size", "32"]


@pytest.fixture(scope="module")
def grid_sweep(tmp_path_factory) -> tuple[Path, dict, int]:
    """The 2 learning rates x 3 step counts sweep, run once through the CLI."""
    from sdtune_ui.cli.main import main

    folder = tmp_path_factory.mktemp("sweep")
    config = folder / "base.json"
    TrainConfig(**BASE).save(config)
    out = folder / "grid"
    import contextlib
    import io

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["sweep", "--config", str(config), "--learning-rates", "1e-3,1e-2", "--steps", "2,4,6",
                     "--metrics", "dino,drift,loss", "--metric", "dino", "--out", str(out), "--json", *FAST_FLAGS])
    return out, json.loads(printed.getvalue()), code


@pytest.mark.slow
def test_a_two_by_three_sweep_trains_one_run_per_rate_and_scores_every_step(grid_sweep):
    out, printed, code = grid_sweep
    data = read_sweep(out)
    assert code == 0 and printed == data and data["status"] == "completed"
    # Two trials, each an ordinary completed run folder with checkpoints at 2, 4 and its output at 6.
    runs = sorted(list_runs(out), key=lambda r: r.path.name)
    assert [r.path.name for r in runs] == ["lr-0.001", "lr-0.01"]
    for run in runs:
        assert run.status() == "completed" and [p.name for p in run.checkpoints()] == ["step-2", "step-4"]
        assert run.config()["max_train_steps"] == 6 and run.config()["learning_rate"] in (1e-3, 1e-2)
    assert data["grid"]["checkpoint_every"] == 2
    # Six scored cells, best first; the winner is the best cell that keeps class drift under the limit.
    cells = data["results"]
    assert sorted((c["trial"], c["step"]) for c in cells) == [
        (t, s) for t in ("lr-0.001", "lr-0.01") for s in (2, 4, 6)]
    values = [c["value"] for c in cells]
    assert values == sorted(values, reverse=True)
    allowed = [c for c in cells if c["metrics"]["class_drift"] < data["max_drift"]]
    assert data["best"]["value"] == max(c["value"] for c in allowed)
    assert data["best"]["reason"].startswith("highest subject fidelity (DINO")
    assert {c["source"] for c in cells if c["step"] == 6} == {"output"}
    assert data["base"]["metrics"]["class_drift"] == 0.0
    # Timing: the setup part of every trial is measured (the trainer has no cross-run latent cache).
    timing = data["timing"]
    assert timing["train_s"] > 0 and timing["evaluate_s"] > 0 and 0 < timing["setup_s"] < timing["train_s"]
    assert all(t["seconds"]["setup"] is not None for t in data["trials"])
    # The sweep again: completed trials are reused, not retrained; other settings in the same folder are refused.
    again = run_sweep(SweepSpec(TrainConfig(**BASE), [1e-3, 1e-2], [2, 4, 6], out, metric="dino",
                                settings=EvalSettings(metrics=("dino", "drift", "loss"), **FAST_EVAL)))
    assert [t["reason"] for t in again["trials"]] == ["reused: this trial had already completed"] * 2
    assert [(c["trial"], c["step"], c["value"]) for c in again["results"]] == [
        (c["trial"], c["step"], c["value"]) for c in cells]
    with pytest.raises(SdtuneError, match="already holds trial lr-0.001 with other settings"):
        run_sweep(SweepSpec(TrainConfig(**{**BASE, "rank": 8}), [1e-3], [2], out))
    heatmap = Image.open(out / "heatmap.png")
    assert heatmap.size[0] >= 150 + 3 * 112 and heatmap.size[1] >= 64 + 2 * 56


@pytest.mark.slow
def test_promote_copies_the_winner_to_a_normal_run(grid_sweep, tmp_path):
    from sdtune_ui.generate.artifacts import materialize_checkpoint

    out, data, _ = grid_sweep
    best = data["best"]
    target = promote_sweep(out, tmp_path / "winner")
    run = RunDir(target)
    assert run.status() == "completed" and run.config()["learning_rate"] == best["learning_rate"]
    winner = Path(best["run_dir"])
    output = (run.output_dir / "pytorch_lora_weights.safetensors").read_bytes()
    if best["source"] == "checkpoint":
        assert [p.name for p in run.checkpoints()] == [f"step-{best['step']}"]
        expected = materialize_checkpoint(winner, best["step"]) / "pytorch_lora_weights.safetensors"
        assert [e for e in run.read_events() if e["kind"] == "output"][-1]["promoted_from_step"] == best["step"]
    else:
        expected = winner / "output" / "pytorch_lora_weights.safetensors"
    assert output == expected.read_bytes()
    with pytest.raises(Exception, match="already exists"):
        promote_sweep(out, target)


def test_failed_trials_are_recorded_and_the_sweep_goes_on(tmp_path, monkeypatch):
    from sdtune_ui.train.trainer import Trainer

    original = Trainer.compute_loss

    def diverges_at_2e3_and_runs_out_of_memory_at_5e4(self, batch):
        if self.config.learning_rate == 5e-4:
            raise torch.OutOfMemoryError("CUDA out of memory (forced by the test)")
        loss = original(self, batch)
        return loss * float("nan") if self.config.learning_rate == 2e-3 else loss

    monkeypatch.setattr(Trainer, "compute_loss", diverges_at_2e3_and_runs_out_of_memory_at_5e4)
    spec = SweepSpec(TrainConfig(**BASE), [2e-3, 5e-4, 1e-3], [2, 4], tmp_path / "sweep",
                     metric="dino", settings=EvalSettings(metrics=("dino",), **FAST_EVAL))
    updates = []
    data = run_sweep(spec, progress=updates.append)

    trials = {t["name"]: t for t in data["trials"]}
    assert [t["status"] for t in data["trials"]] == ["failed", "failed", "completed"]
    assert "The loss became nan" in trials["lr-0.002"]["reason"]
    assert "ran out of memory" in trials["lr-0.0005"]["reason"]
    assert data["status"] == "completed" and all(safe_name(name) == name for name in trials)
    assert [(c["trial"], c["step"]) for c in sorted(data["results"], key=lambda c: c["step"])] == [
        ("lr-0.001", 2), ("lr-0.001", 4)]
    assert data["best"]["trial"] == "lr-0.001"
    assert (tmp_path / "sweep" / "heatmap.png").exists()
    assert updates[-1].phase == "done" and updates[-1].fraction == 1.0
    assert [u.trial for u in updates if u.phase == "train"] == [0, 1, 2]


def test_a_cancelled_sweep_stops_and_keeps_what_it_has(tmp_path):
    updates = []

    def cancel() -> bool:   # cancel once the first trial has trained
        return any(u.phase == "evaluate" for u in updates)

    spec = SweepSpec(TrainConfig(**BASE), [1e-3, 1e-2], [2], tmp_path / "sweep",
                     settings=EvalSettings(metrics=("loss",), **FAST_EVAL))
    data = run_sweep(spec, progress=updates.append, cancel=cancel)
    assert data["status"] == "cancelled"
    assert [t["name"] for t in data["trials"]] == ["lr-0.001"] and data["results"] == []
    assert read_sweep(tmp_path / "sweep")["status"] == "cancelled"


def test_sweep_settings_are_checked_before_anything_runs(tmp_path):
    with pytest.raises(SdtuneError, match="learning rates above 0"):
        SweepSpec(TrainConfig(**BASE), [0.0], [10], tmp_path).validate()
    with pytest.raises(SdtuneError, match="ranks apply to LoRA"):
        SweepSpec(TrainConfig(**{**BASE, "method": "full"}), [1e-5], [10], tmp_path, ranks=[4]).validate()
    spec = SweepSpec(TrainConfig(**{**BASE, "lora_alpha": 8}), [1e-4], [400, 200, 800], tmp_path, ranks=[4, 16],
                     metric="clip-t", settings=EvalSettings(metrics=("dino",))).validate()
    assert spec.steps == [200, 400, 800] and spec.checkpoint_every == 200 and "clip-t" in spec.settings.metrics
    configs = [spec.trial_config(t) for t in spec.trials()]
    assert [(c.rank, c.lora_alpha, c.max_train_steps) for c in configs] == [(4, 8, 800), (16, 32, 800)]


def test_a_sweep_job_in_the_queue_is_cancelled_through_the_job(tmp_path):
    from sdtune_ui.app.jobs import JobQueue
    from sdtune_ui.app.sweeps import estimate, list_sweeps, new_sweep_dir, submit_sweep, sweep_result

    runs_dir = tmp_path / "runs"
    spec = SweepSpec(TrainConfig(**BASE), [1e-3, 1e-2], [1, 2], new_sweep_dir(runs_dir),
                     settings=EvalSettings(metrics=("loss",), **FAST_EVAL))
    assert estimate(spec, seconds_per_step=0.5, seconds_per_evaluation=2.0) == {
        "trials": 2, "train_steps": 4, "evaluations": 5, "images_per_evaluation": 6, "seconds": 12.0}
    jobs = JobQueue()
    box = []
    try:
        # The job is cancelled (as the app's Cancel button would) once its first trial has trained.
        job = submit_sweep(jobs, spec, progress=lambda u: jobs.cancel_job(box[0]) if u.phase == "evaluate" else None)
        box.append(job)
        assert job.wait(120) and job.error is None, job.error
    finally:
        jobs.close()
    assert job.result["status"] == "cancelled" and [t["name"] for t in job.result["trials"]] == ["lr-0.001"]
    assert list_sweeps(runs_dir) == [spec.out_dir.name]
    data, heatmap = sweep_result(runs_dir, spec.out_dir.name)
    assert data == job.result and heatmap.exists()
