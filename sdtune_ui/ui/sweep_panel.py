"""The Train tab's Sweep panel: learning rates x steps (x LoRA ranks) on the form's settings, ranked by a metric,
with an estimate of its time before Start, the results best first and the lr x steps heatmap, and "promote"
of the winner to a normal run. The sweep runs as one job of the GPU queue (cancel it there or here)."""

from __future__ import annotations

from typing import Any

import gradio as gr
import pandas as pd

from sdtune_ui.app import sweeps
from sdtune_ui.app.text import error_markdown, escape_html, escape_markdown
from sdtune_ui.errors import SdtuneError
from sdtune_ui.evaluate.selection import NAMES
from sdtune_ui.ui import run_eval
from sdtune_ui.ui.common import errors_for, keep_on_failure, page_of, workspace_of

REFRESH_S = 2.0
RANK_BY = [name for name in NAMES if name != "drift"]   # drift is the limit the winner must keep, not a goal


def _status_markdown(shown: dict) -> str:
    state = shown["status"]
    line = f"**Sweep {escape_markdown(shown['sweep_id'])}: {escape_markdown(state)}**"
    if shown.get("position"):
        line += f" (waiting: {shown['position']} job(s) ahead)"
    if shown.get("message"):
        line += f". {escape_markdown(shown['message'])}"
    return line


def _frame(rows: list[list[Any]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=sweeps.RESULT_COLUMNS).astype(str)


def build(ctx: Any, options: Any, form: Any, watched: Any) -> None:
    cuda = options.gpu.name is not None
    user_errors = errors_for(ctx)
    with gr.Accordion("Sweep: learning rate x steps (x LoRA rank), ranked by a metric", open=False,
                      elem_id="sweep-fold") as fold:
        gr.Markdown("Trains the settings above once per learning rate (and rank), each to the largest step count, "
                    "and scores every listed step from its checkpoint: a 3 x 3 grid costs 3 runs, not 9.")
        with gr.Row():
            rates = gr.Textbox("5e-5, 1e-4, 2e-4", label="Learning rates", elem_id="sweep-lrs")
            steps = gr.Textbox("200, 400, 800", label="Steps", elem_id="sweep-steps")
            ranks = gr.Textbox("", label="LoRA ranks (optional)", placeholder="e.g. 4, 16", elem_id="sweep-ranks")
            metric = gr.Dropdown(RANK_BY, value="dino", label="Rank by", elem_id="sweep-metric")
            name = gr.Textbox("", label="Sweep name (optional)", elem_id="sweep-name")
        with gr.Accordion("Evaluation settings of each trial", open=False, elem_id="sweep-eval-fold"):
            settings = run_eval.build_settings("sweep-eval")
        estimate = gr.Markdown("", elem_id="sweep-estimate")
        with gr.Row():
            start = gr.Button("Start sweep", variant="primary", elem_id="sweep-start")
            cancel = gr.Button("Cancel sweep", variant="stop", elem_id="sweep-cancel")
        # With a workspace per user the list is filled for the user when the panel opens, never at build.
        first = [] if ctx.workspaces.per_user else sweeps.list_sweeps(ctx.workspace().runs_dir)
        picked = gr.Dropdown(first, value=None, label="Sweep", allow_custom_value=True, elem_id="sweep-picked")
        status = gr.Markdown("", elem_id="sweep-status")
        best = gr.Markdown("", elem_id="sweep-best")
        heatmap = gr.Image(label="Heatmap: learning rate x steps", type="filepath", interactive=False, height=320,
                           elem_id="sweep-heatmap")
        table = gr.Dataframe(headers=sweeps.RESULT_COLUMNS, interactive=False, wrap=True, elem_id="sweep-results",
                             label="Results, best first",
                             column_widths=["4%", "12%", "9%", "5%", "5%", "8%", "8%", "14%", "35%"])
        with gr.Row(equal_height=True):
            run_name = gr.Textbox("", label="Name of the promoted run (optional)", elem_id="sweep-promote-name")
            promote = gr.Button("Promote the winner", elem_id="sweep-promote")
    shown = gr.State(None)
    # Refreshes only while the panel is open: every tick is a request the app's process serves beside training.
    timer = gr.Timer(REFRESH_S, active=False)
    sweep_inputs = [rates, steps, ranks, metric, *settings.components]
    count = len(settings.components)

    def spec_of(workspace: Any, args: tuple) -> Any:
        rate_text, step_text, rank_text, rank_by, *rest = args
        measured, values = settings.values(rest[:count]), form.values(rest[count:])
        return sweeps.spec_for(workspace, values, rate_text, step_text, rank_text, rank_by, measured,
                               public=options.public, allow_local_paths=options.allow_local_paths)

    def on_estimate(*args: Any, request: gr.Request = None) -> str:
        workspace = workspace_of(ctx, request)
        try:
            spec = spec_of(workspace, args)
        except SdtuneError as err:
            return f"Cannot estimate yet: {error_markdown(workspace.shown(err))}"
        return "Estimate: " + sweeps.plan(workspace.runs_dir, ctx.speed, spec, cuda=cuda)["text"]

    @user_errors
    def on_start(sweep_name: str, *args: Any, request: gr.Request = None) -> Any:
        owner, user = page_of(request)
        workspace = workspace_of(ctx, request)
        sweep_id, job = sweeps.start_sweep(ctx.jobs, workspace.runs_dir, spec_of(workspace, args),
                                           name=sweep_name or "", owner=owner, user=user)
        ahead = ctx.jobs.position(job)
        gr.Info(f"Sweep {escape_html(sweep_id)} queued behind {ahead} job(s)." if ahead
                else f"Sweep {escape_html(sweep_id)} started.")
        return gr.update(choices=sweeps.list_sweeps(workspace.runs_dir), value=sweep_id)

    @user_errors
    def on_cancel(sweep_id: str | None, request: gr.Request = None) -> None:
        if not sweep_id:
            raise SdtuneError("Pick a sweep first.")
        sweeps.cancel_sweep(ctx.jobs, workspace_of(ctx, request).runs_dir, sweep_id)
        gr.Info("Cancelling: the sweep stops after the current training step or scoring and keeps what it has.")

    @user_errors
    def on_promote(sweep_id: str | None, new_name: str, request: gr.Request = None) -> str:
        if not sweep_id:
            raise SdtuneError("Pick a finished sweep first.")
        run_id = sweeps.promote_winner(workspace_of(ctx, request).runs_dir, sweep_id, new_name or "")
        gr.Info(f"Run {escape_html(run_id)} holds the winner; the live view shows it.")
        return run_id

    def on_tick(sweep_id: str | None, last: Any, request: gr.Request = None) -> list[Any]:
        try:
            runs_dir = workspace_of(ctx, request).runs_dir
        except SdtuneError:   # not logged in on a per-user app
            return [gr.skip()] * 6
        choices = sweeps.list_sweeps(runs_dir)
        value = sweep_id if sweep_id in choices else None
        try:
            found = sweeps.sweep_status(ctx.jobs, runs_dir, value) if value else None
        except SdtuneError:
            found = None
        data = found["results"] if found else None
        signature = [choices, value, found and {k: v for k, v in found.items() if k != "results"},
                     data and data.get("timing")]
        if signature == last:
            return [gr.skip()] * 6
        # Only the choices: a tick that started before Start (or a pick) must not put the old value back.
        picker = gr.update(choices=choices) if not last or last[0] != choices else gr.skip()
        if found is None:
            return [picker, "", "", _frame([]), None, signature]
        rows = _frame(sweeps.results_rows(data) if data else [])
        image = str(found["heatmap"]) if found["heatmap"] and data else None
        return [picker, _status_markdown(found), sweeps.best_text(data) if data else "", rows, image, signature]

    # The estimate follows the sweep's settings and the form's model, resolution and method.
    followed = [form.widgets[n] for n in ("model", "resolution", "method") if n in form.widgets]
    gr.on([fold.expand, *(w.change for w in [*sweep_inputs, *followed])], on_estimate,
          [*sweep_inputs, *form.components], estimate, show_progress="hidden", api_visibility="private",
          trigger_mode="always_last")
    tick = dict(fn=on_tick, inputs=[picked, shown], outputs=[picked, status, best, table, heatmap, shown],
                show_progress="hidden", concurrency_limit=None, api_visibility="private")
    started = start.click(on_start, [name, *sweep_inputs, *form.components], picked, api_visibility="private")
    keep_on_failure(started, [picked])
    started.then(**tick)
    picked.input(**tick)
    timer.tick(**tick)
    fold.expand(lambda: gr.Timer(active=True), None, timer, api_visibility="private").then(**tick)
    fold.collapse(lambda: gr.Timer(active=False), None, timer, api_visibility="private")
    cancel.click(on_cancel, picked, None, api_visibility="private")
    keep_on_failure(promote.click(on_promote, [picked, run_name], watched, api_visibility="private"), [watched])
