"""The GPU queue panel above the tabs: every job (training, captioning, generation, grids), whose it is, its
progress and ETA, and Cancel, on every page. A page that is closed takes its generation jobs with it."""

from __future__ import annotations

from typing import Any

import gradio as gr

from sdtune_ui.app import ops as app_ops
from sdtune_ui.app.queue import can_cancel, queue_markdown, queue_rows
from sdtune_ui.ui.common import page_of

REFRESH_S = 2.0


def build(ctx: Any, options: Any) -> gr.Timer:
    with gr.Group(elem_id="queue-panel"):
        table = gr.Markdown(queue_markdown([]), elem_id="queue-table")
        with gr.Row(visible=False, equal_height=True, elem_id="queue-actions") as actions:
            picked = gr.Dropdown([], value=None, label="Job to cancel", elem_id="queue-job", scale=4, min_width=240,
                                 container=False)
            cancel = gr.Button("Cancel this job", variant="stop", elem_id="queue-cancel", scale=1, min_width=160)
    shown = gr.State(None)
    timer = gr.Timer(REFRESH_S)

    def private_to(user: str) -> bool:
        # With a workspace per user, other users' jobs show as theirs, without what they are (run names, labels).
        return ctx.workspaces.per_user and user not in ctx.workspaces.admins

    def on_tick(current: str | None, last: Any, request: gr.Request) -> list[Any]:
        viewer, user = page_of(request)
        rows = queue_rows(ctx.jobs, viewer, user, private=private_to(user))
        text = queue_markdown(rows)
        choices = [row.choice() for row in rows]
        values = [value for _, value in choices]
        # The one job in the queue is picked for you; a picked job that finished is let go.
        value = current if current in values else (values[0] if len(values) == 1 else None)
        state = (text, tuple(choices), value)
        if state == last:
            return [gr.skip(), gr.skip(), gr.skip(), last]
        return [text, gr.update(choices=choices, value=value), gr.update(visible=bool(rows)), state]

    def on_cancel(job_id: str | None, request: gr.Request) -> None:
        viewer, user = page_of(request)
        job = ctx.jobs.job(int(job_id)) if job_id and str(job_id).isdigit() else None
        if job is None:
            raise gr.Error("Pick a job of the queue first (it may have finished already).", print_exception=False)
        if not can_cancel(job, viewer=viewer, viewer_user=user, public=options.public or private_to(user)):
            raise gr.Error("You can cancel only your own jobs here.", print_exception=False)
        if job.run_dir is not None:
            app_ops.cancel_run(ctx.jobs, job.run_dir.parent, job.run_dir.name)
            gr.Info("Cancelling: the run stops after its current step and keeps a checkpoint to resume from.")
        else:
            ctx.jobs.cancel_job(job)
            gr.Info("Cancelled.")

    tick = dict(fn=on_tick, inputs=[picked, shown], outputs=[table, picked, actions, shown], show_progress="hidden",
                concurrency_limit=None, api_visibility="private")
    timer.tick(**tick)
    cancel.click(on_cancel, picked, None, api_visibility="private").then(**tick)
    return timer


def register_page_close(demo: gr.Blocks, ctx: Any) -> None:
    """When a page is closed (or reloaded), its generations and grids stop: nobody is left to see them."""

    def on_close(request: gr.Request) -> None:
        viewer, _ = page_of(request)
        ctx.jobs.cancel_page_jobs(viewer)

    demo.unload(on_close)
