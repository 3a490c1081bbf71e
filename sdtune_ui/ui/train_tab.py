"""Train tab: model, method and settings (generated from TrainConfig), presets, config save/load,
Start / Cancel / Resume, and the live view of the run this browser watches."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from sdtune_ui.app import live
from sdtune_ui.app import ops as app_ops
from sdtune_ui.config import VRAM_PRESETS, TrainConfig, preset_values
from sdtune_ui.methods import DEFAULT_METHOD
from sdtune_ui.models import KNOWN_MODELS
from sdtune_ui.runs import list_runs
from sdtune_ui.train.memory import ESTIMATE_FIELDS
from sdtune_ui.ui import run_view
from sdtune_ui.ui.common import user_errors
from sdtune_ui.ui.form import Form, build_form

PLACEHOLDER = "No run yet: pick a dataset and press **Start training**."
REFRESH_S = 2.0


@dataclass
class TrainTab:
    form: Form
    watched: gr.BrowserState
    view: run_view.RunView
    tick: dict[str, Any]  # the live refresh (fn, inputs, outputs), also run when a page loads


def default_config(cpu: bool, vram: str) -> TrainConfig:
    """What the form shows first: on a CPU the one-minute demo, on a GPU SD 1.5 with the LoRA preset for its
    memory (the tiny demo models stay one click away in the model list)."""
    values = dict(app_ops.DEMO_SETTINGS) if cpu else {"model": next(iter(KNOWN_MODELS)),
                                                       **preset_values(DEFAULT_METHOD)}
    values.update(preset_values(vram=vram))
    return app_ops.config_from_values(values)


def dataset_choices(ctx: Any) -> list[tuple[str, str]]:
    return [(name, str(ctx.datasets_dir / name)) for name in app_ops.list_datasets(ctx.datasets_dir)]


def active_run(ctx: Any) -> Path | None:
    """The run a fresh page should show: this app's running/queued one, else any run still running."""
    for job in ctx.jobs.active():
        if job.run_dir is not None:
            return job.run_dir
    for run in list_runs(ctx.runs_dir)[:20]:
        if live.read_snapshot(run.path).status in ("running", "queued", "starting"):
            return run.path
    return None


def build(ctx: Any, options: Any) -> TrainTab:
    gpu = options.gpu
    defaults = default_config(gpu.name is None, gpu.vram_preset)
    gr.Markdown(gpu.describe(), elem_id="gpu-info")
    with gr.Row():
        vram = gr.Dropdown(list(VRAM_PRESETS), value=gpu.vram_preset, label="Memory preset",
                           info="Precision, batch size and memory savers for your GPU (detected by default).")
        use_method_presets = gr.Checkbox(True, label="Apply the method's recommended settings when switching method "
                                         "or adapter type")
        demo = gr.Button("Quick CPU demo settings (tiny-sd1, ~1 min)", size="sm")
    form = build_form(defaults, datasets=dataset_choices(ctx), allow_local_paths=options.allow_local_paths)
    memory_line = gr.Markdown(app_ops.memory_estimate(defaults.to_dict(), gpu), elem_id="memory-estimate")
    gpus = app_ops.gpu_count()
    processes = gr.Dropdown([str(n) for n in range(1, max(gpus, 1) + 1)], value="1", label="Processes (GPUs)",
                            visible=gpus > 1, elem_id="num-processes",
                            info="More than one: the run starts as `accelerate launch`, one process per GPU.")
    multi_gpu_mode = gr.Radio([("DDP: a whole model per GPU (fastest when it fits)", "ddp"),
                               ("FSDP: shard weights and optimizer (full fine-tuning of SDXL)", "fsdp")],
                              value="ddp", label="Multi-GPU mode", visible=gpus > 1, elem_id="multi-gpu-mode")
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
    gr.Markdown("### Live view")
    view = run_view.build_run_view("live", PLACEHOLDER)
    timer = gr.Timer(REFRESH_S)
    fields = form.components

    # ---------------------------------------------------------------- handlers
    @user_errors
    def on_start(num_processes: str, mode: str, *args: Any) -> str:
        job = app_ops.start_training(ctx, form.values(args), public=options.public,
                                     num_processes=int(num_processes or 1), multi_gpu_mode=mode)
        ahead = ctx.jobs.position(job)
        name = job.run_dir.name
        gr.Info(f"Run {name} queued behind {ahead} job(s)." if ahead else f"Run {name} started.")
        return name

    @user_errors
    def on_cancel(run_id: str) -> None:
        if not run_id:
            raise gr.Error("No run to cancel.")
        app_ops.cancel_run(ctx.jobs, ctx.runs_dir, run_id)
        gr.Info("Cancelling: the run stops after the current step and keeps a checkpoint to resume from.")

    @user_errors
    def on_resume(run_id: str) -> str:
        job = app_ops.resume_run(ctx.jobs, ctx.runs_dir, run_id)
        gr.Info(f"Run {run_id} queued to resume from its last checkpoint.")
        return job.run_dir.name

    @user_errors
    def on_resume_less_memory(run_id: str) -> str:
        job = app_ops.resume_run(ctx.jobs, ctx.runs_dir, run_id, memory_fallback=True)
        gr.Info(f"Run {run_id} queued to resume with less memory (its log says what changed).")
        return job.run_dir.name

    def on_estimate(*args: Any) -> str:
        return app_ops.memory_estimate(form.values(args), gpu)

    def on_method(method: str, adapter: str, apply_presets: bool, memory: str) -> list[Any]:
        # The memory preset is applied after the method's (and its adapter type's), so memory-saving settings win.
        values = preset_values(method, memory, adapter) if apply_presets else {}
        return form.updates(app_ops.widget_values(values), method, adapter)

    def on_vram(memory: str) -> list[Any]:
        return form.updates(app_ops.widget_values(preset_values(vram=memory)))

    def on_demo() -> list[Any]:
        values = {**app_ops.DEMO_SETTINGS, **preset_values(vram="CPU")}
        return form.updates(app_ops.widget_values(values), values["method"], values.get("adapter")) + ["CPU"]

    @user_errors
    def on_save(*args: Any) -> Any:
        config = app_ops.config_from_values(form.values(args))
        folder = ctx.exports_dir / "configs"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{config.method}-{time.strftime('%Y%m%d-%H%M%S')}.json"
        config.save(path)
        return gr.update(value=str(path), visible=True)

    @user_errors
    def on_load(file: str) -> list[Any]:
        config = TrainConfig.load(file)
        return form.updates(app_ops.widget_values(config.to_dict()), config.method, config.adapter)

    def on_tick(run_id: str, previous: Any) -> list[Any]:
        attach = gr.skip()
        if not run_id:
            found = active_run(ctx)
            if found is not None:
                run_id = attach = found.name
        updates, signature = run_view.render(ctx.jobs, app_ops.run_path(ctx.runs_dir, run_id), previous, PLACEHOLDER)
        return [attach, signature, *updates]

    # ---------------------------------------------------------------- wiring
    start.click(on_start, [processes, multi_gpu_mode, *fields], watched, api_name="start_training").then(
        on_tick, [watched, gr.State(None)], [watched, last, *view.outputs], show_progress="hidden")
    cancel.click(on_cancel, watched, None, api_name="cancel_training")
    resume.click(on_resume, watched, watched, api_name="resume_training")
    resume_less.click(on_resume_less_memory, watched, watched, api_name="resume_with_less_memory")
    gr.on([form.widgets[name].change for name in ESTIMATE_FIELDS if name in form.widgets], on_estimate, fields,
          memory_line, show_progress="hidden", api_visibility="private")
    method_inputs = [form.widgets["method"], form.widgets["adapter"], use_method_presets, vram]
    form.widgets["method"].input(on_method, method_inputs, fields, show_progress="hidden")
    form.widgets["adapter"].input(on_method, method_inputs, fields, show_progress="hidden")
    vram.input(on_vram, vram, fields, show_progress="hidden")
    demo.click(on_demo, None, [*fields, vram], show_progress="hidden")
    save.click(on_save, fields, config_file)
    load.upload(on_load, load, fields)
    tick_args = dict(fn=on_tick, inputs=[watched, last], outputs=[watched, last, *view.outputs],
                     show_progress="hidden", concurrency_limit=None)
    timer.tick(**tick_args, api_visibility="private")
    return TrainTab(form, watched, view, tick_args)


def refresh_datasets(ctx: Any, selected: str | None = None) -> Any:
    """An update for the form's dataset list (and its selection when a dataset was just made or picked)."""
    choices = dataset_choices(ctx)
    if selected:
        return gr.update(choices=choices, value=str(ctx.datasets_dir / selected))
    return gr.update(choices=choices)

