"""The view of one run (used live in the Train tab and for any run in the Runs tab).

It only renders what `live.read_snapshot` reads from the run folder (and its scores, run_eval.py); unchanged
parts are skipped so a 2-second refresh does not re-send images and plots that did not change.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from sdtune_ui.app import live
from sdtune_ui.ui import run_eval

EMPTY_LOSS = live.loss_frame(live.RunSnapshot("", Path()))
EMPTY_LR = live.lr_frame(live.RunSnapshot("", Path()))
LOSS_COLOURS = {"raw": "#4c78a8", "smoothed": "#f58518"}


@dataclass
class RunView:
    status: gr.Markdown
    loss: gr.LinePlot
    lr: gr.LinePlot
    gallery: gr.Gallery
    log: gr.Textbox
    files: gr.File
    scores: run_eval.EvalSection

    @property
    def outputs(self) -> list[gr.components.Component]:
        return [self.status, self.loss, self.lr, self.gallery, self.log, self.files, *self.scores.outputs]

    @property
    def inputs(self) -> list[gr.components.Component]:
        """What a refresh reads from the page besides the run (pass them to `render` after `last`)."""
        return self.scores.inputs


def build_run_view(prefix: str, placeholder: str) -> RunView:
    status = gr.Markdown(placeholder, elem_id=f"{prefix}-status")
    with gr.Row():
        # Colours named in the title: Gradio's plot legend does not list the series here.
        loss = gr.LinePlot(EMPTY_LOSS, x="step", y="loss", color="series", color_map=LOSS_COLOURS,
                           title="Loss: raw (blue), smoothed (orange)", color_title=" ", height=300,
                           elem_id=f"{prefix}-loss")
        metrics_plot = run_eval.build_plot(prefix)
        lr = gr.LinePlot(EMPTY_LR, x="step", y="lr", title="Learning rate", height=300, y_axis_format=".1e",
                         elem_id=f"{prefix}-lr")
    best, metric = run_eval.build_summary(prefix)
    with gr.Row():
        gallery = gr.Gallery(label="Samples (newest first)", columns=4, height=300, elem_id=f"{prefix}-samples")
        with gr.Column():
            log = gr.Textbox(label="Log", lines=10, max_lines=10, autoscroll=True, elem_id=f"{prefix}-log")
            files = gr.File(label="Final artifacts", file_count="multiple", interactive=False,
                            elem_id=f"{prefix}-files")
    scores = run_eval.build_section(prefix, metrics_plot, best, metric)
    return RunView(status, loss, lr, gallery, log, files, scores)


def render(jobs: Any, run_path: Path | None, last: Any, placeholder: str, metric: str | None = None,
           step: str | None = None, shown: Callable[[str], str] = str) -> tuple[list[Any], Any]:
    """Updates for RunView.outputs and the new signature (store it in a gr.State and pass it back next time).

    `metric` and `step` are the page's current choices of the scores part (RunView.inputs), kept when they
    still apply. `shown` writes the texts as the viewer may see them (the workspace's: paths relative to its
    folder).
    """
    scores_count = len(run_eval.RENDERED)
    if run_path is None or not (run_path / "config.json").exists():
        if last == "empty":
            return [gr.skip()] * (6 + scores_count), last
        return [placeholder, EMPTY_LOSS, EMPTY_LR, [], "", None, *run_eval.render(None, [], None, None)], "empty"
    snap = live.read_snapshot(run_path)
    position = jobs.run_position(run_path)
    status = shown(live.progress_markdown(snap, position))
    run_signature = list(snap.signature())
    scores_signature = list(run_eval.metrics_signature(run_path, snap.probes, metric))
    previous = last if isinstance(last, dict) else {}
    if run_signature == previous.get("run"):
        updates = [status] + [gr.skip()] * 5
    else:
        files = live.output_files(snap) or None
        updates = [status, live.loss_frame(snap), live.lr_frame(snap), live.gallery_items(snap),
                   shown(live.log_tail(snap)), files]
    if scores_signature == previous.get("scores"):
        updates += [gr.skip()] * scores_count
    else:
        updates += run_eval.render(run_path, snap.probes, metric, step)
    return updates, {"run": run_signature, "scores": scores_signature}
