"""Plain API endpoints (gradio_client, scripts): start, watch, cancel and list runs with named arguments.

The UI's own events take one argument per widget; these take a config dict instead and call the same
functions (app_ops), with the same rules for a public app.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from sdtune_ui.app import live
from sdtune_ui.app import ops as app_ops
from sdtune_ui.ui import api_eval
from sdtune_ui.ui.common import errors_for, page_of, workspace_of


def register(ctx: Any, options: Any) -> None:
    user_errors = errors_for(ctx)

    @user_errors
    def start_run(config: dict, num_processes: int = 1, multi_gpu_mode: str = "ddp",
                  request: gr.Request = None) -> dict:
        """Queue a training run. `config` holds TrainConfig fields; `data` may name a dataset of the Dataset tab.

        `num_processes` > 1 runs it through `accelerate launch` (one process per GPU; without GPUs, CPU
        processes over gloo, e.g. for tests or CPU clusters), watched through the same run folder.
        `multi_gpu_mode` "fsdp" shards full fine-tuning over the GPUs instead of copying the model ("ddp").
        """
        owner, user = page_of(request)
        job = app_ops.start_training(ctx, config, public=options.public, num_processes=num_processes,
                                     multi_gpu_mode=multi_gpu_mode, owner=owner, user=user,
                                     workspace=workspace_of(ctx, request))
        return {"run_id": job.run_dir.name, "position": ctx.jobs.position(job)}

    @user_errors
    def run_status(run_id: str, request: gr.Request = None) -> dict:
        """Status, progress, the loss curve so far, samples and outputs of a run (paths relative to its folder)."""
        workspace = workspace_of(ctx, request)
        run = app_ops.run_dir(workspace.runs_dir_of(run_id), run_id)
        snap = live.read_snapshot(run.path)
        return {"run_id": run_id, "status": snap.status, "message": workspace.shown(snap.message),
                "step": snap.step, "total": snap.total, "position": ctx.jobs.run_position(run.path),
                "losses": [list(point) for point in snap.losses],
                "samples": [sample["path"][len(str(run.path)) + 1:] for sample in snap.samples],
                "outputs": snap.outputs, "log": workspace.shown(live.log_tail(snap, 20))}

    @user_errors
    def cancel_run(run_id: str, request: gr.Request = None) -> bool:
        """Ask a run to stop (dropped if still queued; else it stops after its current step)."""
        app_ops.cancel_run(ctx.jobs, workspace_of(ctx, request).runs_dir_of(run_id), run_id)
        return True

    @user_errors
    def runs(request: gr.Request = None) -> list[dict]:
        """Every run folder this user sees, newest first."""
        return live.runs_table(workspace_of(ctx, request).run_roots()).to_dict(orient="records")

    gr.api(start_run, api_name="start_run")
    gr.api(run_status, api_name="run_status", concurrency_limit=None)
    gr.api(cancel_run, api_name="cancel_run_by_id")
    gr.api(runs, api_name="runs", concurrency_limit=None)
    api_eval.register(ctx, options)  # metrics and sweeps
