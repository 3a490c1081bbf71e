"""The Generate tab's overfitting grid: prompts x checkpoints (x LoRA scales), sized by default to take about two
minutes on this machine, with the estimate (images x measured seconds per image) shown before it starts and
its progress ("image 3 of 12") while it runs. Closing the page stops it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gradio as gr

from sdtune_ui.app.generation import (
    default_checkpoints,
    grid_rows_wanted,
    method_traits,
    parse_scales,
    plan_grid,
)
from sdtune_ui.errors import SdtuneError
from sdtune_ui.generate.artifacts import artifacts_in_folder, checkpoint_steps
from sdtune_ui.generate.engine import default_engine
from sdtune_ui.generate.overfitting import default_grid_prompts, overfitting_grid
from sdtune_ui.runs import RunDir
from sdtune_ui.ui.common import errors_for, keep_on_failure, workspace_of

MAX_PUBLIC_GRID_IMAGES = 64  # rows x prompts of one grid on a public app


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def build(ctx: Any, guard: Any, source: gr.Dropdown, option_inputs: list[Any]) -> None:
    from sdtune_ui.ui import generate_tab  # the tab module holds the shared helpers (no cycle at import time)

    user_errors = errors_for(ctx)

    with gr.Accordion("Overfitting grid: prompts x checkpoints (x LoRA scales)", open=False, elem_id="gen-grid-fold"):
        with gr.Row():
            grid_prompts = gr.Textbox(label="Prompts, one per line (empty: built from the run's tokens)", lines=4,
                                      elem_id="gen-grid-prompts")
            # A dropdown that accepts any value: its choices change per run, and API callers name steps directly.
            grid_steps = gr.Dropdown([], value=[], multiselect=True, allow_custom_value=True,
                                     label="Checkpoints (preselected to fit about two minutes; none: all)",
                                     elem_id="gen-grid-steps")
            grid_scales = gr.Textbox("1.0", label="LoRA scales, comma separated (e.g. 0.5, 1.0)",
                                     elem_id="gen-grid-scales")
        estimate = gr.Markdown("", elem_id="gen-grid-estimate")
        grid_go = gr.Button("Make grid", elem_id="gen-grid")
        grid_status = gr.Markdown("", elem_id="gen-grid-status")
        picture = gr.Image(label="Grid", type="pil", interactive=False, elem_id="gen-picture")

    def run_rows(source: str, request: Any) -> tuple[str, dict, list[str]]:
        run_dir, _ = guard.run(source, workspace_of(ctx, request))
        config = RunDir(Path(run_dir)).config()
        available = [str(s) for s in checkpoint_steps(run_dir)]
        if artifacts_in_folder(RunDir(Path(run_dir)).output_dir, config):
            available.append("final")
        return run_dir, config, available

    def plan_for(source: str, prompts_text: str, ticked: list[str] | None, scales_text: str, steps: float,
                 request: Any) -> Any:
        run_dir, config, available = run_rows(source, request)
        prompts = [p for p in (prompts_text or "").splitlines() if p.strip()] or default_grid_prompts(config)
        adapters, _ = method_traits(config)
        scales = parse_scales(scales_text) if adapters else [1.0]
        step_s, measured = ctx.speed.step_seconds(str(config.get("model", "")), cuda=_cuda())
        rows = len(ticked) if ticked else len(available)
        return plan_grid(rows, len(scales) or 1, len(prompts), int(steps or 1), step_s, measured), available

    def on_source(src: str, steps: float, request: gr.Request = None) -> tuple:
        if not src:
            return "", gr.update(choices=[], value=[]), ""
        try:
            run_dir, config, available = run_rows(src, request)
        except SdtuneError:
            return gr.skip(), gr.update(choices=[], value=[]), ""
        prompts = default_grid_prompts(config)
        step_s, measured = ctx.speed.step_seconds(str(config.get("model", "")), cuda=_cuda())
        row_s = plan_grid(1, 1, len(prompts), int(steps or 1), step_s, measured).seconds
        chosen = default_checkpoints(available, row_s)
        plan = plan_grid(len(chosen), 1, len(prompts), int(steps or 1), step_s, measured)
        return "\n".join(prompts), gr.update(choices=available, value=chosen), "Estimate: " + plan.text()

    def on_change(src: str, prompts_text: str, ticked: list[str] | None, scales_text: str, steps: float,
                  request: gr.Request = None) -> str:
        if not src:
            return ""
        try:
            plan, _ = plan_for(src, prompts_text, ticked, scales_text, steps, request)
        except SdtuneError as err:
            return str(err)
        return "Estimate: " + plan.text()

    @user_errors(status=(1, 2))
    def on_grid(source: str, grid_prompts: str, checkpoints: list[str] | None, lora_scales: str, prompt: str,
                negative_prompt: str, scheduler: str, steps: float, guidance: float, width: float, height: float,
                seed: float, num_images: float, fuse_lora: bool, request: gr.Request = None) -> Iterator[tuple]:
        if not source:
            raise SdtuneError("Pick a run first: the grid compares its checkpoints.")
        run_dir, _ = guard.run(source, workspace_of(ctx, request))
        scales = parse_scales(lora_scales)
        prompts = [line.strip() for line in (grid_prompts or "").splitlines() if line.strip()] or None
        chosen = grid_rows_wanted(checkpoints)
        options = generate_tab.options_from("grid", negative_prompt, scheduler, steps, guidance, width, height, seed,
                                            1, fuse_lora, public=guard.public)
        if guard.public:
            plan, _ = plan_for(source, grid_prompts, checkpoints, lora_scales, options.steps, request)
            if plan.images > MAX_PUBLIC_GRID_IMAGES:
                raise SdtuneError(f"This public app makes grids of at most {MAX_PUBLIC_GRID_IMAGES} images (this one "
                                  f"has {plan.images}): tick fewer checkpoints, prompts or scales.")
        config = RunDir(Path(run_dir)).config()

        model = str(config.get("model", ""))

        def work(job: Any) -> Any:
            finished: list[float] = []

            def progress(done: int, total: int) -> None:
                job.report(done, total, "image")
                finished.append(time.perf_counter())
                if len(finished) > 1:  # an image after the first: its time, per denoising step
                    ctx.speed.record(model, (finished[-1] - finished[-2]) / max(1, options.steps))

            return overfitting_grid(run_dir, steps=chosen, prompts=prompts, scales=scales or None, options=options,
                                    engine=default_engine(), progress=progress, cancel=lambda: job.cancelled)

        image = yield from generate_tab.on_gpu(ctx, f"Grid of {Path(run_dir).name}", work, outputs=2, status=1,
                                               request=request)
        yield image, "Rows: checkpoints (and scales); columns: prompts; same seed everywhere."

    steps_widget = option_inputs[3]
    source.change(on_source, [source, steps_widget], [grid_prompts, grid_steps, estimate], api_visibility="private")
    plan_inputs = [source, grid_prompts, grid_steps, grid_scales, steps_widget]
    gr.on([grid_prompts.change, grid_steps.change, grid_scales.change, steps_widget.change], on_change, plan_inputs,
          estimate, show_progress="hidden", api_visibility="private", trigger_mode="always_last")
    keep_on_failure(grid_go.click(on_grid, [source, grid_prompts, grid_steps, grid_scales, *option_inputs],
                                  [picture, grid_status], api_name="grid"), [picture, grid_status])
