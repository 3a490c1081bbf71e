"""Train tab: model, method and settings (generated from TrainConfig), presets, config save/load,
Start / Cancel / Resume, and the live view of the run this browser watches (with that run's own settings).

The form stays valid by itself (train_form.py): switching method or dataset derives what the new choice
needs, and the validation result is shown before Start.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from sdtune_ui.app import live
from sdtune_ui.app import ops as app_ops
from sdtune_ui.app.form_rules import init_from_choices
from sdtune_ui.app.text import escape_html
from sdtune_ui.config import TrainConfig
from sdtune_ui.errors import SdtuneError
from sdtune_ui.examples import EXAMPLE_DATASET
from sdtune_ui.methods import DEFAULT_METHOD
from sdtune_ui.models import KNOWN_MODELS
from sdtune_ui.presets import VRAM_PRESETS, preset_values
from sdtune_ui.runs import list_runs
from sdtune_ui.train.memory import ESTIMATE_FIELDS
from sdtune_ui.ui import run_eval, run_view, sweep_panel, train_form
from sdtune_ui.ui.common import errors_for, keep_on_failure, page_of, workspace_of
from sdtune_ui.ui.form import Form, build_form

PLACEHOLDER = "No run yet: pick a dataset and press **Start training**."
REFRESH_S = 2.0


@dataclass
class TrainTab:
    form: Form
    watched: gr.BrowserState
    view: run_view.RunView
    tick: dict[str, Any]  # the live refresh (fn, inputs, outputs), also run when a page loads
    form_events: dict[str, dict[str, Any]]  # "validate": the live validation (also run when a page loads)


def default_config(cpu: bool, vram: str, data: str = "") -> TrainConfig:
    """What the form shows first: on a CPU, or with the Hub off and SD 1.5 never downloaded, the README's offline
    demo on demo-sd1; on a GPU SD 1.5 with the LoRA preset for its memory (the offline models stay one click
    away in the model list); `data` the dataset to train on."""
    from sdtune_ui.models.loading import unavailable_offline

    real_model = next(iter(KNOWN_MODELS))
    if cpu or unavailable_offline(real_model):  # the demo's own settings (batch size 4) win over the preset's
        values = {**preset_values(vram=vram), **app_ops.DEMO_SETTINGS}
    else:
        values = {"model": real_model, **preset_values(DEFAULT_METHOD)}
        values.update(preset_values(vram=vram))
    values["data"] = data
    return app_ops.config_from_values(values)


def dataset_choices(workspace: Any) -> list[str]:
    """The datasets the form offers, by name (the runs read them from the workspace's folder)."""
    return workspace.dataset_names()


def default_dataset(workspace: Any) -> str:
    """The example dataset when the workspace has it (a fresh install copies it in), else the first dataset."""
    names = workspace.dataset_names()
    return EXAMPLE_DATASET.name if EXAMPLE_DATASET.name in names else (names[0] if names else "")


def active_run(ctx: Any, workspace: Any) -> Path | None:
    """The run a fresh page should show: the workspace's running/queued one in this app, else any of its runs
    still running."""
    for job in ctx.jobs.active():
        if job.run_dir is not None and workspace.sees(job.run_dir):
            return job.run_dir
    for root in workspace.run_roots():
        for run in list_runs(root)[:20]:
            if live.read_snapshot(run.path).status in ("running", "queued", "starting"):
                return run.path
    return None


def build(ctx: Any, options: Any) -> TrainTab:
    user_errors = errors_for(ctx)
    gpu = options.gpu
    # With a workspace per user, the datasets are filled in for the user when the page loads (app.py).
    shared = None if ctx.workspaces.per_user else ctx.workspace()
    defaults = default_config(gpu.name is None, gpu.vram_preset, default_dataset(shared) if shared else "")
    gr.Markdown(gpu.describe(), elem_id="gpu-info")
    with gr.Row():
        vram = gr.Dropdown(list(VRAM_PRESETS), value=gpu.vram_preset, label="Memory preset",
                           info="Precision, batch size and memory savers for your GPU (detected by default).")
        use_method_presets = gr.Checkbox(True, label="Apply the method's recommended settings when switching method "
                                         "or adapter type", elem_id="use-method-presets")
        demo = gr.Button("Quick CPU demo settings (demo-sd1, example dataset, ~1 min)", size="sm",
                         elem_id="demo-settings")
    form = build_form(defaults, datasets=dataset_choices(shared) if shared else [],
                      allow_local_paths=options.allow_local_paths,
                      runs=init_from_choices(shared.run_roots() if shared else []))
    notes = gr.Markdown("", elem_id="form-notes")
    memory_line = gr.Markdown(app_ops.memory_estimate(defaults.to_dict(), gpu), elem_id="memory-estimate")
    gpus = app_ops.gpu_count()
    processes = gr.Dropdown([str(n) for n in range(1, max(gpus, 1) + 1)], value="1", label="Processes (GPUs)",
                            visible=gpus > 1, elem_id="num-processes",
                            info="More than one: the run starts as `accelerate launch`, one process per GPU.")
    multi_gpu_mode = gr.Radio([("DDP: a whole model per GPU (fastest when it fits)", "ddp"),
                               ("FSDP: shard weights and optimizer (full fine-tuning of SDXL)", "fsdp")],
                              value="ddp", label="Multi-GPU mode", visible=gpus > 1, elem_id="multi-gpu-mode")
    with gr.Row(equal_height=True):
        run_name = gr.Textbox(label="Run name (optional)", placeholder="e.g. robot-lora", scale=1, min_width=240,
                              info="Starts the run's id; the time is added so it stays unique.", elem_id="run-name")
        validation = gr.Markdown("", elem_id="form-validation")
    with gr.Row():
        start = gr.Button("Start training", variant="primary", elem_id="start-training")
        cancel = gr.Button("Cancel", variant="stop", elem_id="cancel-training")
        resume = gr.Button("Resume", elem_id="resume-training")
        resume_less = gr.Button("Resume with less memory", elem_id="resume-less-memory")
        save = gr.Button("Save config")
        load = gr.UploadButton("Load config", file_types=[".json"])
    config_file = gr.File(label="Saved config", visible=False)
    watched = gr.BrowserState("", storage_key="sdtune-watched-run")
    last = gr.State(None)
    sweep_panel.build(ctx, options, form, watched)
    gr.Markdown("### Live view")
    view = run_view.build_run_view("live", PLACEHOLDER)
    with gr.Accordion("Settings of this run (read-only)", open=False, visible=False,
                      elem_id="run-settings-fold") as settings_fold:
        run_settings = gr.Dataframe(headers=["setting", "value"], interactive=False, wrap=True,
                                    elem_id="run-settings")
        edit_copy = gr.Button("Edit a copy in the form above", size="sm", elem_id="edit-copy")
    settings_of = gr.State("")  # the run whose settings are shown
    timer = gr.Timer(REFRESH_S)
    fields = form.components

    # ---------------------------------------------------------------- handlers
    @user_errors
    def on_start(request: gr.Request, num_processes: str, mode: str, name: str, *args: Any) -> str:
        owner, user = page_of(request)
        job = app_ops.start_training(ctx, form.values(args), public=options.public,
                                     num_processes=int(num_processes or 1), multi_gpu_mode=mode, name=name or "",
                                     owner=owner, user=user, workspace=workspace_of(ctx, request))
        ahead = ctx.jobs.position(job)
        run_id = escape_html(job.run_dir.name)
        gr.Info(f"Run {run_id} queued behind {ahead} job(s)." if ahead else f"Run {run_id} started.")
        return job.run_dir.name

    @user_errors
    def on_cancel(run_id: str, request: gr.Request = None) -> None:
        if not run_id:
            raise SdtuneError("No run to cancel.")
        app_ops.cancel_run(ctx.jobs, workspace_of(ctx, request).runs_dir_of(run_id), run_id)
        gr.Info("Cancelling: the run stops after the current step and keeps a checkpoint to resume from.")

    @user_errors
    def on_resume(run_id: str, request: gr.Request = None) -> str:
        owner, user = page_of(request)
        runs_dir = workspace_of(ctx, request).runs_dir_of(run_id)
        job = app_ops.resume_run(ctx.jobs, runs_dir, run_id, owner=owner, user=user)
        gr.Info(f"Run {escape_html(run_id)} queued to resume from its last checkpoint.")
        return job.run_dir.name

    @user_errors
    def on_resume_less_memory(run_id: str, request: gr.Request = None) -> str:
        owner, user = page_of(request)
        runs_dir = workspace_of(ctx, request).runs_dir_of(run_id)
        job = app_ops.resume_run(ctx.jobs, runs_dir, run_id, memory_fallback=True, owner=owner, user=user)
        gr.Info(f"Run {escape_html(run_id)} queued to resume with less memory (its log says what changed).")
        return job.run_dir.name

    def on_estimate(*args: Any) -> str:
        return app_ops.memory_estimate(form.values(args), gpu)

    @user_errors
    def on_save(request: gr.Request, *args: Any) -> Any:
        config = app_ops.config_from_values(form.values(args))  # the dataset by its name, as the form shows it
        folder = workspace_of(ctx, request).exports_dir / "configs"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{config.method}-{time.strftime('%Y%m%d-%H%M%S')}.json"
        config.save(path)
        return gr.update(value=str(path), visible=True)

    def on_tick(run_id: str, previous: Any, shown_settings: str, metric: str | None = None,
                step: str | None = None, request: gr.Request = None) -> list[Any]:
        workspace = workspace_of(ctx, request)
        attach = gr.skip()
        if not run_id:
            found = active_run(ctx, workspace)
            if found is not None:
                run_id = attach = found.name
        path = app_ops.run_path(workspace.runs_dir_of(run_id), run_id)
        updates, signature = run_view.render(ctx.jobs, path, previous, PLACEHOLDER, metric, step,
                                             shown=workspace.shown)
        settings = [gr.skip(), gr.skip(), gr.skip()]
        if (run_id or "") != shown_settings:
            rows = train_form.settings_rows(path, workspace.shown) if path is not None else []
            settings = [gr.update(visible=bool(rows)), rows or [["", ""]], run_id or ""]
        return [attach, signature, *updates, *settings]

    # ---------------------------------------------------------------- wiring
    tick_outputs = [watched, last, *view.outputs, settings_fold, run_settings, settings_of]
    tick_args = dict(fn=on_tick, inputs=[watched, last, settings_of, *view.inputs], outputs=tick_outputs,
                     show_progress="hidden", concurrency_limit=None)
    started = start.click(on_start, [processes, multi_gpu_mode, run_name, *fields], watched, api_name="start_training")
    started.then(**{**tick_args, "inputs": [watched, gr.State(None), gr.State("")]})
    run_eval.wire(ctx, options, view.scores, watched)
    keep_on_failure(started, [watched])
    cancel.click(on_cancel, watched, None, api_name="cancel_training")
    keep_on_failure(resume.click(on_resume, watched, watched, api_name="resume_training"), [watched])
    keep_on_failure(resume_less.click(on_resume_less_memory, watched, watched, api_name="resume_with_less_memory"),
                    [watched])
    gr.on([form.widgets[name].change for name in ESTIMATE_FIELDS if name in form.widgets], on_estimate, fields,
          memory_line, show_progress="hidden", api_visibility="private")
    keep_on_failure(save.click(on_save, fields, config_file), [config_file])
    timer.tick(**tick_args, api_visibility="private")
    form_events = train_form.wire(ctx, options, form, notes=notes, validation=validation, vram=vram,
                                  use_presets=use_method_presets, demo=demo, load=load, edit_copy=edit_copy,
                                  watched=watched)
    return TrainTab(form, watched, view, tick_args, form_events)


def refresh_datasets(workspace: Any, selected: str | None = None) -> Any:
    """An update for the form's dataset list (and its selection when a dataset was just made or picked)."""
    choices = dataset_choices(workspace)
    if selected:
        return gr.update(choices=choices, value=selected)
    return gr.update(choices=choices)
