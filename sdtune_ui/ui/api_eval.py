"""API endpoints (gradio_client, scripts) for metrics and sweeps: evaluate a run, read its scores and best
checkpoint, use a checkpoint; estimate, start, follow, cancel and promote a sweep. They call the same
functions as the Train tab (app/evaluation.py, app/sweeps.py) with the same rules for a public app, work in the
caller's workspace (app/workspace.py) and return paths relative to it."""

from __future__ import annotations

from typing import Any

import gradio as gr

from sdtune_ui.app import evaluation as app_eval
from sdtune_ui.app import sweeps
from sdtune_ui.ui.common import errors_for, page_of, workspace_of


def register(ctx: Any, options: Any) -> None:
    cuda = options.gpu.name is not None
    user_errors = errors_for(ctx)

    @user_errors
    def evaluate(run_id: str, settings: dict | None = None, checkpoints: str = "all",
                 request: gr.Request = None) -> dict:
        """Score a run's checkpoints (and the base model) through the GPU queue; returns when done.

        `settings`: EvalSettings fields (metrics, num_images, inference_steps, size, clip_model, dino_model,
        fid_features, max_drift, seed, guidance); `checkpoints`: all, last, or steps like "200,400".
        """
        owner, user = page_of(request)
        measured = app_eval.eval_settings(settings, allow_local_paths=options.allow_local_paths,
                                          public=options.public)
        runs_dir = workspace_of(ctx, request).runs_dir_of(run_id)
        job = app_eval.submit_evaluation(ctx.jobs, runs_dir, run_id, measured, checkpoints=checkpoints or "all",
                                         owner=owner, user=user)
        job.wait()
        if job.error is not None:
            raise job.error
        return app_eval.result_summary(job.result)

    @user_errors
    def run_metrics(run_id: str, metric: str = "", request: gr.Request = None) -> dict:
        """A run's scores over steps, its best checkpoint with the reason, and the step its output came from."""
        return app_eval.run_metrics(workspace_of(ctx, request).runs_dir_of(run_id), run_id, metric or None)

    @user_errors
    def use_checkpoint(run_id: str, step: int, request: gr.Request = None) -> list[str]:
        """Make checkpoint `step` the run's output (the trained final one is kept in output-final/)."""
        return app_eval.use_checkpoint(workspace_of(ctx, request).runs_dir_of(run_id), run_id, step)

    def spec(workspace: Any, config: dict, learning_rates: Any, steps: Any, ranks: Any, metric: str,
             settings: dict | None) -> Any:
        return sweeps.spec_for(workspace, config, learning_rates, steps, ranks, metric or "dino", settings,
                               public=options.public, allow_local_paths=options.allow_local_paths)

    @user_errors
    def sweep_estimate(config: dict, learning_rates: str, steps: str, ranks: str = "", metric: str = "dino",
                       settings: dict | None = None, request: gr.Request = None) -> dict:
        """How many trials, steps and evaluations a sweep takes, and about how many seconds on this machine."""
        workspace = workspace_of(ctx, request)
        planned = spec(workspace, config, learning_rates, steps, ranks, metric, settings)
        return sweeps.plan(workspace.runs_dir, ctx.speed, planned, cuda=cuda)

    @user_errors
    def start_sweep(config: dict, learning_rates: str, steps: str, ranks: str = "", metric: str = "dino",
                    settings: dict | None = None, name: str = "", request: gr.Request = None) -> dict:
        """Queue a learning rate x steps (x rank) sweep of `config` (TrainConfig fields; `data` may name a
        dataset). `learning_rates`, `steps`, `ranks`: comma-separated numbers. Follow it with /sweep_status."""
        owner, user = page_of(request)
        workspace = workspace_of(ctx, request)
        planned = spec(workspace, config, learning_rates, steps, ranks, metric, settings)
        estimate = sweeps.plan(workspace.runs_dir, ctx.speed, planned, cuda=cuda)
        sweep_id, job = sweeps.start_sweep(ctx.jobs, workspace.runs_dir, planned, name=name or "", owner=owner,
                                           user=user)
        return {"sweep_id": sweep_id, "position": ctx.jobs.position(job), "estimate": estimate}

    @user_errors
    def sweep_status(sweep_id: str, request: gr.Request = None) -> dict:
        """Status and progress of a sweep; `results` (sweep.json: cells best first, trials, best) once it ended."""
        workspace = workspace_of(ctx, request)
        found = sweeps.sweep_status(ctx.jobs, workspace.runs_dir, sweep_id)
        return sweeps.public_view(found, workspace.root, workspace.data_dir)

    @user_errors
    def cancel_sweep(sweep_id: str, request: gr.Request = None) -> bool:
        """Stop a queued or running sweep (it keeps and scores what it has)."""
        return sweeps.cancel_sweep(ctx.jobs, workspace_of(ctx, request).runs_dir, sweep_id)

    @user_errors
    def promote_sweep(sweep_id: str, name: str = "", request: gr.Request = None) -> dict:
        """Copy a sweep's winner to a new normal run whose output is the winning checkpoint."""
        return {"run_id": sweeps.promote_winner(workspace_of(ctx, request).runs_dir, sweep_id, name or "")}

    @user_errors
    def list_sweeps(request: gr.Request = None) -> list[str]:
        """Every sweep's id in the caller's workspace, newest first."""
        return sweeps.list_sweeps(workspace_of(ctx, request).runs_dir)

    gr.api(evaluate, api_name="evaluate", concurrency_limit=None)  # the GPU job queue makes them take turns
    gr.api(run_metrics, api_name="run_metrics", concurrency_limit=None)
    gr.api(use_checkpoint, api_name="use_checkpoint")
    gr.api(sweep_estimate, api_name="sweep_estimate", concurrency_limit=None)
    gr.api(start_sweep, api_name="start_sweep")
    gr.api(sweep_status, api_name="sweep_status", concurrency_limit=None)
    gr.api(cancel_sweep, api_name="cancel_sweep")
    gr.api(promote_sweep, api_name="promote_sweep")
    gr.api(list_sweeps, api_name="sweeps", concurrency_limit=None)
