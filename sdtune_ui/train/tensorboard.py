"""TensorBoard logs of a run (<run>/tb/), written beside events.jsonl when tensorboard is installed.

The run folder stays the truth; TensorBoard is a second view of the same events: the loss, learning rate,
speed and memory of every step, any other event's numbers (metrics), and the sample images. Read them with
`tensorboard --logdir <data dir>/runs`. Without tensorboard installed (or with `tensorboard: false`),
nothing is written and nothing fails.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from sdtune_ui.config import TrainConfig
from sdtune_ui.runs import EventLog, RunDir

log = logging.getLogger(__name__)

STEP_SCALARS = {"loss": "train/loss", "lr": "train/lr", "it_s": "train/steps_per_s", "gpu_mem_gib": "train/gpu_mem_gib"}
NOT_SCALARS = {"t", "step", "total", "eta_s", "source"}
FLUSH_S = 30


def open_writer(run: RunDir) -> Any | None:
    """A SummaryWriter on <run>/tb, or None when tensorboard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # torch.utils.tensorboard needs the tensorboard package
        return None
    return SummaryWriter(log_dir=str(run.path / "tb"), flush_secs=FLUSH_S)


def with_tensorboard(events: EventLog | None, run: RunDir, config: TrainConfig) -> EventLog | None:
    """`events`, also written to TensorBoard when the run asks for it and tensorboard is installed."""
    if events is None or not config.tensorboard:
        return events
    writer = open_writer(run)
    return events if writer is None else TensorBoardEvents(events, writer, run)


class TensorBoardEvents(EventLog):
    """An event log that also writes each event's numbers and images to a TensorBoard writer."""

    def __init__(self, events: EventLog, writer: Any, run: RunDir):
        self.inner, self.writer, self.run = events, writer, run
        self.path = events.path

    def emit(self, kind: str, **fields: Any) -> dict:
        event = self.inner.emit(kind, **fields)
        if self.writer is not None:
            try:
                self._write(event)
            except Exception:  # noqa: BLE001 - TensorBoard is a second view: it must never stop the run
                log.exception("TensorBoard logging failed; it is switched off for this run")
                self.close()
        return event

    def _write(self, event: dict) -> None:
        kind, step = event["kind"], event.get("step")
        if kind == "sample" and step is not None:
            self._image(event, step)
        elif kind not in ("status", "log", "output", "checkpoint") and step is not None:
            for name, value in event.items():
                if name in NOT_SCALARS:
                    continue
                if isinstance(value, dict):  # e.g. a metric event's {"metrics": {name: value}}, per source
                    prefix = f"{kind}/{event.get('source', name)}"
                    for key, number in value.items():
                        self._scalar(f"{prefix}/{key}", number, step)
                else:
                    tag = STEP_SCALARS.get(name, f"{kind}/{name}") if kind == "step" else f"{kind}/{name}"
                    self._scalar(tag, value, step)

    def _scalar(self, tag: str, value: Any, step: int) -> None:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            self.writer.add_scalar(tag, value, step)

    def _image(self, event: dict, step: int) -> None:
        import numpy as np
        from PIL import Image

        with Image.open(self.run.path / event["path"]) as image:
            pixels = np.asarray(image.convert("RGB"))
        self.writer.add_image(f"samples/{event.get('prompt', '')[:60]}", pixels, step, dataformats="HWC")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
