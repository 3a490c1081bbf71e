"""Reading a run folder into the live view (no gradio, no model): curves, progress, samples, log, outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from sdtune_ui.app import live
from sdtune_ui.config import TrainConfig
from sdtune_ui.runs import RunDir


def make_run(root: Path, name: str = "run-1", events: list[dict] | None = None) -> RunDir:
    run = RunDir(root / name).create()
    TrainConfig(data="x", method="lora", model="tiny-sd1", max_train_steps=4).save(run.config_path)
    with open(run.events_path, "w") as handle:
        for index, event in enumerate(events or []):
            handle.write(json.dumps({"t": 1000.0 + index, **event}) + "\n")
    return run


EVENTS = [
    {"kind": "status", "status": "queued", "message": "Waiting for the GPU (1 job(s) ahead).", "position": 1},
    {"kind": "status", "status": "starting", "method": "lora", "model": "tiny-sd1"},
    {"kind": "log", "level": "info", "message": "Loading tiny-sd1"},
    {"kind": "status", "status": "running", "step": 0, "total": 4},
    {"kind": "step", "step": 1, "total": 4, "loss": 1.0, "lr": 1e-4, "it_s": 2.0, "eta_s": 1.5, "gpu_mem_gib": None},
    {"kind": "step", "step": 2, "total": 4, "loss": 0.5, "lr": 1e-4, "it_s": 2.0, "eta_s": 1.0, "gpu_mem_gib": 3.25},
    {"kind": "sample", "step": 2, "path": "samples/step-2.png", "prompt": "a robot"},
    {"kind": "checkpoint", "step": 2, "path": "checkpoints/step-2"},
]


def test_snapshot_of_a_running_run(tmp_path):
    run = make_run(tmp_path, events=EVENTS)
    Image.new("RGB", (8, 8)).save(run.samples_dir / "step-2.png")
    snap = live.read_snapshot(run.path)
    assert (snap.status, snap.step, snap.total, snap.method, snap.model) == ("running", 2, 4, "lora", "tiny-sd1")
    assert snap.losses == [(1, 1.0), (2, 0.5)] and snap.lrs == [(1, 1e-4), (2, 1e-4)]
    assert snap.gpu_mem_gib == 3.25 and not snap.finished
    text = live.progress_markdown(snap, position=0, now=1010.0)
    assert "step 2/4 (50%)" in text and "2.00 it/s" in text and "ETA 0:01" in text and "GPU 3.2 GiB" in text
    assert live.gallery_items(snap) == [(str(run.samples_dir / "step-2.png"), "step 2: a robot")]
    tail = live.log_tail(snap)
    assert "Loading tiny-sd1" in tail and "checkpoint saved at step 2" in tail
    frame = live.loss_frame(snap)
    assert set(frame["series"]) == {"raw", "smoothed"} and len(frame) == 4
    assert list(live.lr_frame(snap).columns) == ["step", "lr"]


def test_queued_position_and_finished_outputs(tmp_path):
    queued = live.read_snapshot(make_run(tmp_path, "q", EVENTS[:1]).path)
    assert queued.status == "queued"
    assert "queued: 2 job(s) ahead" in live.progress_markdown(queued, position=2, now=1000.0)
    done = make_run(tmp_path, "done", EVENTS + [
        {"kind": "output", "files": ["output/pytorch_lora_weights.safetensors", "output/pipeline"]},
        {"kind": "status", "status": "completed", "message": "Training finished."}])
    (done.output_dir / "pytorch_lora_weights.safetensors").write_bytes(b"x")
    (done.output_dir / "pipeline" / "unet").mkdir(parents=True)
    (done.output_dir / "pipeline" / "unet" / "model.safetensors").write_bytes(b"x")
    snap = live.read_snapshot(done.path)
    assert snap.finished and snap.message == "Training finished."
    assert [Path(p).name for p in live.output_files(snap)] == ["pytorch_lora_weights.safetensors",
                                                               "model.safetensors"]
    assert "ETA" not in live.progress_markdown(snap)


def test_resumed_run_replaces_repeated_steps_and_skips_bad_values(tmp_path):
    events = [{"kind": "step", "step": s, "total": 4, "loss": 1.0, "lr": 1e-4} for s in (1, 2, 3)]
    events += [{"kind": "step", "step": 3, "total": 4, "loss": 0.1, "lr": 1e-4},          # resumed at step 2
               {"kind": "step", "step": 4, "total": 4, "loss": float("nan"), "lr": 1e-4}]
    run = make_run(tmp_path, events=events)
    with open(run.events_path, "a") as handle:
        handle.write('{"kind": "step", "step": 5')  # a line still being written is left for next time
    snap = live.read_snapshot(run.path)
    assert snap.losses == [(1, 1.0), (2, 1.0), (3, 0.1)] and snap.step == 4


def test_smoothing_is_debiased_and_long_curves_are_thinned():
    assert live.smooth([2.0, 2.0, 2.0]) == pytest.approx([2.0, 2.0, 2.0])
    smoothed = live.smooth([1.0, 0.0], weight=0.5)
    assert smoothed[0] == pytest.approx(1.0) and 0 < smoothed[1] < 1
    snap = live.RunSnapshot("r", Path("."), losses=[(i, 1.0) for i in range(1, 10_001)])
    frame = live.loss_frame(snap)
    raw = frame[frame.series == "raw"]
    assert len(raw) <= live.MAX_PLOT_POINTS + 1 and raw["step"].iloc[-1] == 10_000


def test_runs_table_lists_every_run_folder(tmp_path):
    make_run(tmp_path, "a", EVENTS)
    make_run(tmp_path, "b", EVENTS[:1])
    (tmp_path / "not-a-run").mkdir()
    table = live.runs_table(tmp_path)
    assert list(table.columns) == live.RUN_COLUMNS
    assert set(table["run"]) == {"a", "b"}
    row = table[table.run == "a"].iloc[0]
    assert (row.status, row.method, row.model, row.steps) == ("running", "lora", "tiny-sd1", "2/4")
    assert live.format_duration(3725) == "1:02:05" and live.format_duration(None) == "-"
