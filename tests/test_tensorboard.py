"""TensorBoard logs beside events.jsonl: loss, learning rate, other events' numbers and sample images when
tensorboard is installed and the run asks for it; nothing (and no error) otherwise."""

from __future__ import annotations

import sys

import pytest
from PIL import Image

from sdtune_ui.config import TrainConfig
from sdtune_ui.runs import RunDir
from sdtune_ui.train import tensorboard
from tests.train_helpers import quick_config, run_training


class FakeWriter:
    def __init__(self):
        self.scalars, self.images, self.closed = [], [], False

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, value, step))

    def add_image(self, tag, pixels, step, dataformats):
        self.images.append((tag, pixels.shape, step, dataformats))

    def close(self):
        self.closed = True


def test_a_run_writes_its_loss_lr_and_samples(toy_dataset, tmp_path, monkeypatch):
    writer = FakeWriter()
    monkeypatch.setattr(tensorboard, "open_writer", lambda run: writer)
    config = quick_config(toy_dataset, max_train_steps=2, validation_prompts=["a photo of sks robot"],
                          validation_inference_steps=2, eval_steps=2)
    run = run_training(config, tmp_path / "run")
    losses = [e["loss"] for e in run.read_events() if e["kind"] == "step"]
    assert [(step, value) for tag, value, step in writer.scalars if tag == "train/loss"] == list(zip([1, 2], losses))
    assert [step for tag, _, step in writer.scalars if tag == "train/lr"] == [1, 2]
    assert [step for tag, _, step in writer.scalars if tag.startswith("metric/training/")] == [2]  # held-out loss
    assert len(writer.images) == 1 and writer.images[0][0].startswith("samples/a photo of sks robot")
    assert writer.images[0][1][2] == 3 and writer.images[0][2] == 2
    assert writer.closed


def test_nothing_is_written_without_tensorboard_or_when_switched_off(tmp_path, monkeypatch):
    run = RunDir(tmp_path / "run").create()
    events = run.events()
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if tensorboard were not installed
    assert tensorboard.open_writer(run) is None
    assert tensorboard.with_tensorboard(events, run, TrainConfig()) is events
    monkeypatch.setattr(tensorboard, "open_writer", lambda run: pytest.fail("switched off: never opened"))
    assert tensorboard.with_tensorboard(events, run, TrainConfig(tensorboard=False)) is events
    assert not (run.path / "tb").exists()


def test_a_failing_writer_never_stops_the_run(tmp_path):
    class Broken(FakeWriter):
        def add_scalar(self, tag, value, step):
            raise OSError("disk gone")

    run = RunDir(tmp_path / "run").create()
    events = tensorboard.TensorBoardEvents(run.events(), Broken(), run)
    events.emit("step", step=1, loss=0.5)
    events.emit("step", step=2, loss=0.4)  # the writer was switched off; the run's own log goes on
    assert [e["step"] for e in run.read_events()] == [1, 2]


def test_real_tensorboard_files_read_back(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = RunDir(tmp_path / "run").create()
    Image.new("RGB", (16, 8), (200, 30, 30)).save(run.samples_dir / "step-2.png")
    events = tensorboard.with_tensorboard(run.events(), run, TrainConfig())
    for step, loss in ((1, 0.5), (2, 0.25)):
        events.emit("step", step=step, total=2, loss=loss, lr=1e-4, it_s=3.0, eta_s=1.0, gpu_mem_gib=None)
    events.emit("metric", step=2, source="checkpoint", metrics={"dino": 0.31, "clip_t": 0.27})  # `evaluate`
    events.emit("sample", step=2, path="samples/step-2.png", prompt="a robot")
    events.close()
    logs = EventAccumulator(str(run.path / "tb"), size_guidance={"images": 0, "scalars": 0})
    logs.Reload()
    assert [(s.step, s.value) for s in logs.Scalars("train/loss")] == [(1, 0.5), (2, 0.25)]
    assert [(s.step, s.value) for s in logs.Scalars("metric/checkpoint/dino")] == [(2, pytest.approx(0.31))]
    image = logs.Images("samples/a robot")[0]
    assert (image.step, image.width, image.height) == (2, 16, 8)
