"""Runs tab: every run folder (from this app, the CLI or another process), opened with its curves, samples
and outputs; resume, cancel, delete (after a confirmation)."""

from __future__ import annotations

from typing import Any

import gradio as gr

from sdtune_ui.app import live
from sdtune_ui.app import ops as app_ops
from sdtune_ui.app.text import escape_html
from sdtune_ui.errors import SdtuneError
from sdtune_ui.ui import run_eval, run_view
from sdtune_ui.ui.common import errors_for, keep_on_failure, page_of, workspace_of

PLACEHOLDER = "Pick a run in the list to see its curves, samples and outputs."
REFRESH_S = 3.0


def build(ctx: Any, options: Any, watched: gr.BrowserState) -> None:
    user_errors = errors_for(ctx)
    per_user = ctx.workspaces.per_user
    with gr.Row():
        refresh = gr.Button("Refresh", size="sm")
        # Custom values allowed: a row clicked before the first refresh names a run the list does not have yet
        # (every handler checks the id against the runs folder).
        selected = gr.Dropdown([], value=None, label="Run", allow_custom_value=True, elem_id="runs-selected",
                               scale=3)
    # With a workspace per user the list is filled for the user when the page loads (the timer), never at build.
    first = live.runs_table([] if per_user else ctx.workspace().run_roots())
    table = gr.Dataframe(first, interactive=False, elem_id="runs-table",
                         label="Runs (newest first): click a row to open it")
    with gr.Row():
        resume = gr.Button("Resume")
        cancel = gr.Button("Cancel", variant="stop")
        delete = gr.Button("Delete...")
    with gr.Row(visible=False) as confirm_row:
        gr.Markdown("Delete this run folder with its checkpoints and outputs? This cannot be undone.")
        confirm = gr.Button("Yes, delete it", variant="stop")
        keep = gr.Button("Keep it")
    view = run_view.build_run_view("runs", PLACEHOLDER)
    last = gr.State(None)
    shown = gr.State(None)  # the table rows on screen
    timer = gr.Timer(REFRESH_S)

    def listing(workspace: Any, current: str | None = None) -> list[Any]:
        frame = live.runs_table(workspace.run_roots())
        ids = frame["run"].tolist()
        return [frame, gr.update(choices=ids, value=current if current in ids else None)]

    def on_select(frame: Any, event: gr.SelectData) -> Any:
        row = event.index[0] if isinstance(event.index, (list, tuple)) else event.index
        return frame.iloc[row]["run"] if row is not None and row < len(frame) else gr.skip()

    def on_view(run_id: str | None, previous: Any, metric: str | None = None, step: str | None = None,
                request: gr.Request = None) -> list[Any]:
        workspace = workspace_of(ctx, request)
        path = app_ops.run_path(workspace.runs_dir_of(run_id), run_id)
        updates, signature = run_view.render(ctx.jobs, path, previous, PLACEHOLDER, metric, step,
                                             shown=workspace.shown)
        return [signature, *updates]

    @user_errors
    def on_resume(run_id: str | None, request: gr.Request = None) -> str:
        owner, user = page_of(request)
        runs_dir = workspace_of(ctx, request).runs_dir_of(run_id)
        job = app_ops.resume_run(ctx.jobs, runs_dir, run_id or "", owner=owner, user=user)
        gr.Info(f"Run {escape_html(run_id)} queued to resume; the Train tab shows it live.")
        return job.run_dir.name

    @user_errors
    def on_cancel(run_id: str | None, request: gr.Request = None) -> None:
        app_ops.cancel_run(ctx.jobs, workspace_of(ctx, request).runs_dir_of(run_id), run_id or "")
        gr.Info("Cancel requested: the run stops after its current step and keeps a checkpoint.")

    @user_errors
    def on_delete(run_id: str | None, request: gr.Request = None) -> list[Any]:
        workspace = workspace_of(ctx, request)
        app_ops.delete_run(ctx.jobs, workspace.runs_dir_of(run_id), run_id or "")
        gr.Info(f"Deleted {escape_html(run_id)}.")
        return [gr.update(visible=False), *listing(workspace)]

    @user_errors
    def ask(run_id: str | None) -> Any:
        if not run_id:
            raise SdtuneError("Pick a run first.")
        return gr.update(visible=True)

    view_io = dict(fn=on_view, inputs=[selected, last, *view.inputs], outputs=[last, *view.outputs],
                   show_progress="hidden")
    def on_refresh(current: str | None, request: gr.Request = None) -> list[Any]:
        return listing(workspace_of(ctx, request), current)

    refresh.click(on_refresh, selected, [table, selected], api_name="list_runs")
    table.select(on_select, table, selected, api_visibility="private")
    selected.change(**view_io, api_visibility="private")
    def on_tick(current: str | None, previous: Any, shown_rows: Any, metric: str | None = None,
                step: str | None = None, request: gr.Request = None) -> list[Any]:
        frame, choices = listing(workspace_of(ctx, request), current)
        rows = frame.values.tolist()
        # Re-sending an unchanged table would reset the user's scroll position and open dropdown.
        table_updates = [gr.skip(), gr.skip()] if rows == shown_rows else [frame, choices]
        return [*table_updates, rows, *on_view(current, previous, metric, step, request)]

    run_eval.wire(ctx, options, view.scores, selected)
    timer.tick(on_tick, [selected, last, shown, *view.inputs], [table, selected, shown, last, *view.outputs],
               show_progress="hidden", concurrency_limit=None, api_visibility="private")
    keep_on_failure(resume.click(on_resume, selected, watched, api_name="resume_run"), [watched])
    cancel.click(on_cancel, selected, None, api_name="cancel_run")
    keep_on_failure(delete.click(ask, selected, confirm_row, api_visibility="private"), [confirm_row])
    keep.click(lambda: gr.update(visible=False), None, confirm_row, api_visibility="private")
    keep_on_failure(confirm.click(on_delete, selected, [confirm_row, table, selected], api_name="delete_run"),
                    [confirm_row, table, selected])
