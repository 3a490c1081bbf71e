"""The scores part of a run view: a metrics plot over steps (beside the loss curve), the best checkpoint with
its reason, "Evaluate this run" through the GPU queue (its progress shows in the queue panel; a run evaluated
before brings back its last settings), and "Use this checkpoint". The evaluation settings widgets are shared with
the Sweep panel."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from sdtune_ui.app import evaluation as app_eval
from sdtune_ui.app import ops as app_ops
from sdtune_ui.app.text import escape_html, escape_markdown
from sdtune_ui.errors import SdtuneError
from sdtune_ui.evaluate.evaluation import FID_FEATURES, METRICS, EvalSettings
from sdtune_ui.ui.common import errors_for, keep_on_failure, page_of, watch_job, workspace_of

NO_RUN = "Pick or start a run first."
RENDERED = ("plot", "metric", "best", "step")   # what a refresh of the run view updates, in order


@dataclass
class SettingsWidgets:
    """Widgets for EvalSettings (app/evaluation.SETTING_FIELDS, minus the seed and guidance)."""

    widgets: dict[str, gr.components.Component]

    @property
    def components(self) -> list[gr.components.Component]:
        return list(self.widgets.values())

    def values(self, args: tuple | list) -> dict:
        return dict(zip(self.widgets, args, strict=True))


def build_settings(prefix: str) -> SettingsWidgets:
    """What the evaluation measures and on how many images (defaults: EvalSettings's)."""
    defaults = EvalSettings()
    with gr.Row():
        metrics = gr.CheckboxGroup(list(METRICS), value=list(defaults.metrics), label="Metrics",
                                   elem_id=f"{prefix}-metrics", scale=3,
                                   info="dino/clip-i: subject fidelity; clip-t: prompt fidelity; drift: class "
                                        "preservation; kid/fid: vs the training images; loss: held-out loss")
        max_drift = gr.Number(defaults.max_drift, label="Max class drift of the best", minimum=0,
                              elem_id=f"{prefix}-max-drift", scale=1)
    with gr.Row():
        num_images = gr.Number(defaults.num_images, label="Images per prompt", precision=0, minimum=1,
                               elem_id=f"{prefix}-num-images")
        steps = gr.Number(defaults.inference_steps, label="Denoising steps", precision=0, minimum=1,
                          elem_id=f"{prefix}-inference-steps")
        size = gr.Number(defaults.size, label="Image size (0: the model's)", precision=0, minimum=0,
                         elem_id=f"{prefix}-size")
        clip = gr.Textbox(defaults.clip_model, label="CLIP model", elem_id=f"{prefix}-clip-model",
                          info="Hub id; tiny-clip offline (random: numbers only)")
        dino = gr.Textbox(defaults.dino_model, label="DINOv2 model", elem_id=f"{prefix}-dino-model",
                          info="Hub id; offline: demo-dino (for demo-sd1 runs) or tiny-dino")
        fid = gr.Dropdown(list(FID_FEATURES), value=defaults.fid_features, label="FID/KID features",
                          elem_id=f"{prefix}-fid-features")
    return SettingsWidgets({"metrics": metrics, "max_drift": max_drift, "num_images": num_images,
                            "inference_steps": steps, "size": size, "clip_model": clip, "dino_model": dino,
                            "fid_features": fid})


@dataclass
class EvalSection:
    plot: gr.LinePlot
    metric: gr.Dropdown
    best: gr.Markdown
    settings: SettingsWidgets
    checkpoints: gr.Textbox
    evaluate: gr.Button
    status: gr.Markdown
    step: gr.Dropdown
    use: gr.Button

    @property
    def outputs(self) -> list[gr.components.Component]:
        """What a refresh of the run view updates (RENDERED)."""
        return [getattr(self, name) for name in RENDERED]

    @property
    def inputs(self) -> list[gr.components.Component]:
        """The choices a refresh keeps: the plotted metric, the step picked for "Use this checkpoint"."""
        return [self.metric, self.step]


def build_plot(prefix: str) -> gr.LinePlot:
    """The metrics plot (in the run view's row of plots, beside the loss curve)."""
    return gr.LinePlot(app_eval.empty_frame(), x="step", y="value", color="series", color_map=app_eval.PLOT_SERIES,
                       height=300, elem_id=f"{prefix}-metrics-plot", title="Scores over steps", color_title=" ")


def build_summary(prefix: str) -> tuple[gr.Markdown, gr.Dropdown]:
    """The best checkpoint with its reason, and the metric the plot shows (under the plots)."""
    with gr.Row(equal_height=True):
        best = gr.Markdown(app_eval.best_markdown(None, None), elem_id=f"{prefix}-best")
        metric = gr.Dropdown([], value=None, label="Metric plotted", elem_id=f"{prefix}-metric", scale=0,
                             min_width=260)
    return best, metric


def build_section(prefix: str, plot: gr.LinePlot, best: gr.Markdown, metric: gr.Dropdown) -> EvalSection:
    """"Evaluate this run" and "Use this checkpoint" (folded: the plot and the best line stay in view)."""
    with gr.Accordion("Evaluate this run, use a checkpoint", open=False, elem_id=f"{prefix}-eval-fold"):
        settings = build_settings(f"{prefix}-eval")
        with gr.Row(equal_height=True):
            checkpoints = gr.Textbox("all", label="Checkpoints", info="all, last, or steps like 200,400",
                                     elem_id=f"{prefix}-eval-checkpoints", scale=2)
            evaluate = gr.Button("Evaluate this run", variant="primary", elem_id=f"{prefix}-evaluate", scale=1)
        status = gr.Markdown("", elem_id=f"{prefix}-eval-status")
        with gr.Row(equal_height=True):
            step = gr.Dropdown([], value=None, label="Checkpoint (the best is picked for you)",
                               elem_id=f"{prefix}-use-step", scale=2)
            use = gr.Button("Use this checkpoint", elem_id=f"{prefix}-use-checkpoint", scale=1)
    return EvalSection(plot, metric, best, settings, checkpoints, evaluate, status, step, use)


def render(run_path: Path | None, probes: list[dict], metric: str | None, step: str | None) -> list[Any]:
    """Updates for EvalSection.outputs."""
    if run_path is None:
        return [app_eval.empty_frame(), gr.update(choices=[], value=None), app_eval.best_markdown(None, None),
                gr.update(choices=[], value=None)]
    view = app_eval.metrics_view(run_path, probes, metric)
    steps = [str(s) for s in view.steps]
    picked = step if step in steps else (str(view.best_step) if view.best_step is not None else None)
    return [view.frame, gr.update(choices=view.choices, value=view.metric), view.best_text,
            gr.update(choices=steps, value=picked)]


def metrics_signature(run_path: Path | None, probes: list[dict], metric: str | None) -> tuple:
    """Changes whenever the scores part would show something else."""
    if run_path is None:
        return ()
    try:
        stamp = (run_path / "metrics.jsonl").stat().st_mtime_ns
    except OSError:
        stamp = 0
    output = run_path / "output"
    return (str(run_path), stamp, len(probes), metric, len(list((run_path / "checkpoints").glob("step-*"))),
            output.stat().st_mtime_ns if output.exists() else 0)


def wire(ctx: Any, options: Any, section: EvalSection, run_id: Any) -> None:
    """Events of the section; `run_id` is the component holding the shown run's id (among the runs the page's
    user sees: app/workspace.py)."""
    user_errors = errors_for(ctx)

    @user_errors(status=(0, 2))
    def on_evaluate(run: str, checkpoints: str, *values: Any, request: gr.Request = None) -> Iterator[tuple]:
        if not run:
            raise SdtuneError(NO_RUN)
        settings = app_eval.eval_settings(section.settings.values(values),
                                          allow_local_paths=options.allow_local_paths, public=options.public)
        owner, user = page_of(request)
        runs_dir = workspace_of(ctx, request).runs_dir_of(run)
        job = app_eval.submit_evaluation(ctx.jobs, runs_dir, run, settings, checkpoints=checkpoints or "all",
                                         owner=owner, user=user)
        for line in watch_job(ctx.jobs, job, f"Evaluating {run}"):
            yield escape_markdown(line), gr.skip()
        result = job.result
        best = f" Best: {result.best.label}: {result.best.reason}." if result.best else ""
        yield escape_markdown(f"Scored {len(result.scores)} target(s) in {result.seconds:.0f} s.{best}"), gr.skip()

    @user_errors
    def on_use(run: str, step: str | None, request: gr.Request = None) -> str:
        if not run:
            raise SdtuneError(NO_RUN)
        if not step:
            raise SdtuneError("Pick a checkpoint step first (evaluate the run to have the best one picked).")
        files = app_eval.use_checkpoint(workspace_of(ctx, request).runs_dir_of(run), run, int(step))
        gr.Info(f"The output of {escape_html(run)} is now checkpoint {escape_html(step)}.")
        return escape_markdown(f"Output is checkpoint {step}: {', '.join(files)}.")

    def on_metric(run: str, metric: str | None, step: str | None, request: gr.Request = None) -> list[Any]:
        path = app_ops.run_path(workspace_of(ctx, request).runs_dir_of(run), run)
        if path is None or not (path / "config.json").exists():
            return [gr.skip()] * len(RENDERED)
        from sdtune_ui.app import live

        return render(path, live.read_snapshot(path).probes, metric, step)

    def on_run(run: str, request: gr.Request = None) -> list[Any]:
        """A run that was evaluated before brings the form's settings of its last evaluation back, so that scores
        compare (seed and guidance have no widgets: an evaluation made through the API with others is not
        matched); a run never evaluated keeps the form's."""
        path = app_ops.run_path(workspace_of(ctx, request).runs_dir_of(run), run) if run else None
        settings = app_eval.last_settings(path) or {}
        return [settings.get(name, gr.skip()) for name in section.settings.widgets]

    run_id.change(on_run, [run_id], section.settings.components, show_progress="hidden", api_visibility="private")
    # No Gradio limit: the GPU job queue is what makes evaluations take turns (and shows them to every page).
    evaluated = section.evaluate.click(on_evaluate, [run_id, section.checkpoints, *section.settings.components],
                                       [section.status, section.best], api_visibility="private",
                                       concurrency_limit=None)
    keep_on_failure(evaluated, [section.status, section.best])
    keep_on_failure(section.use.click(on_use, [run_id, section.step], [section.status], api_visibility="private"),
                    [section.status])
    section.metric.input(on_metric, [run_id, section.metric, section.step], section.outputs,
                         show_progress="hidden", api_visibility="private")
