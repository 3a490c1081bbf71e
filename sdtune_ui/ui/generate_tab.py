"""Generate tab: try a run's result (or any LoRA / embedding) against its base model, compare, find the
checkpoint that learned without forgetting (grid), then export or push it (Share panel).

Only widgets and glue live here: generation is sdtune_ui.generate.engine / grid, exports sdtune_ui.export.
Every GPU call waits its turn in the app's one GPU queue (ctx.jobs).
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import gradio as gr

from sdtune_ui.errors import SdtuneError
from sdtune_ui.export.formats import FORMATS, export_run, push_run, zip_export
from sdtune_ui.generate.artifacts import (
    Artifact,
    artifact_from_spec,
    base_model_from_card,
    checkpoint_steps,
    list_choices,
    parse_choice,
    run_artifacts,
)
from sdtune_ui.generate.engine import default_engine
from sdtune_ui.generate.options import GenerationOptions, option_fields
from sdtune_ui.generate.overfitting import default_grid_prompts, overfitting_grid
from sdtune_ui.methods.outputs import LORA
from sdtune_ui.models import KNOWN_MODELS, TINY_MODELS
from sdtune_ui.runs import RunDir
from sdtune_ui.ui.common import user_errors, wait_in_queue

NONE = ""   # "no trained result": the base model alone


def _on_gpu(ctx: Any, label: str, fn: Callable[[], Any], outputs: int) -> Generator[tuple, None, Any]:
    """Run `fn` in the GPU queue and return its result (`result = yield from _on_gpu(...)`).

    While it waits, yields rows for a handler with `outputs` outputs: the last one shows the queue position,
    the others are left as they are.
    """
    jobs = ctx.jobs
    if not (hasattr(jobs, "submit") and hasattr(jobs, "position")):
        return jobs.run_sync(label, fn)
    for item in wait_in_queue(jobs, label, fn):
        if isinstance(item, tuple) and len(item) == 2 and item[0] == "done":
            return item[1]
        yield (*[gr.skip()] * (outputs - 1), str(item))


def _source_choices(ctx: Any) -> list[tuple[str, str]]:
    """Runs by id (`run-id`, `run-id@step-N`): the same short values work for API callers."""
    choices = [("(none: base model only)", NONE)]
    for choice in list_choices(ctx.runs_dir):
        name = Path(choice.run_dir).name
        choices.append((choice.label, name if choice.step is None else f"{name}@step-{choice.step}"))
    return choices


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


class _Guard:
    """What a caller of this tab (page or API) may point at: runs under runs_dir; local files only when
    the app is not public (a Space or share link must not read the host's files)."""

    def __init__(self, ctx: Any, allow_local: bool):
        self.ctx, self.allow_local = ctx, allow_local

    def run(self, source: str) -> tuple[str, int | None]:
        """A run id (or a path inside runs_dir), optionally @step-N -> (run folder, step)."""
        name, step = parse_choice(source)
        run_dir = Path(self.ctx.runs_dir) / name
        if not _inside(run_dir, Path(self.ctx.runs_dir)) or not RunDir(run_dir).config_path.exists():
            raise SdtuneError("Pick a run from the list (press Refresh if it is new).")
        return str(run_dir), step

    def model(self, model: str) -> str:
        model = (model or "").strip()
        if not model:
            raise SdtuneError("Choose a base model.")
        if not self.allow_local and model not in TINY_MODELS and Path(model).expanduser().exists():
            raise SdtuneError("This app is public: use a Hub model id, not a path on the server.")
        return model

    def specs(self, text: str) -> list[str]:
        specs = [line.strip() for line in (text or "").splitlines() if line.strip()]
        if specs and not self.allow_local:
            for spec in specs:
                if Path(spec.rsplit(":", 1)[0]).expanduser().exists():
                    raise SdtuneError("This app is public: upload LoRA / embedding files, or give Hub repo ids.")
        return specs


def _option_widget(name: str, **extra: Any) -> Any:
    """The widget of one GenerationOptions field: its label, default and range come from the field."""
    f = next(f for f in option_fields() if f.name == name)
    meta, default = f.metadata, f.default
    common = dict(value=default, label=meta["label"], **extra)
    if meta["choices"]:
        return gr.Dropdown(list(meta["choices"]), **common)
    if isinstance(default, bool):
        return gr.Checkbox(**common)
    if isinstance(default, str):
        return gr.Textbox(**common)
    if meta["maximum"] is not None:
        return gr.Slider(meta["minimum"], meta["maximum"], step=meta["step"], **common)
    return gr.Number(precision=0 if isinstance(default, int) else None, minimum=meta["minimum"], **common)


def build(ctx: Any, options: Any = None) -> None:
    """The Generate tab's content (called inside `gr.Tab`); `options.allow_local_paths` (if given) gates paths."""
    allow_local = bool(getattr(options, "allow_local_paths", not getattr(ctx, "is_space", False)))
    guard = _Guard(ctx, allow_local)
    models = list(TINY_MODELS) + list(KNOWN_MODELS)

    with gr.Row():
        with gr.Column(scale=1, min_width=320):
            with gr.Row():
                # Custom values allowed: runs started after the page loaded (or by API callers) are valid too;
                # the guard checks every value against runs_dir.
                source = gr.Dropdown(_source_choices(ctx), value=NONE, allow_custom_value=True, scale=4,
                                     label="Trained result (run output or checkpoint)", elem_id="gen-source")
                refresh = gr.Button("Refresh", size="sm", scale=1)
            base_model = gr.Dropdown(models, value="tiny-sd1", allow_custom_value=True, label="Base model",
                                     info="A run picks its own base model; any Hub id works.", elem_id="gen-model")
            lora_scale = gr.Slider(0.0, 2.0, value=1.0, step=0.05, label="LoRA scale (0 = base model)")
            triggers = gr.Markdown("", elem_id="gen-triggers")
            with gr.Accordion("More LoRAs / embeddings", open=False):
                uploads = gr.File(label="LoRA or embedding files (.safetensors; diffusers, kohya or A1111)",
                                  file_count="multiple", file_types=[".safetensors"])
                paths = gr.Textbox(label="Hub repos" + (" or local paths" if allow_local else "")
                                   + ", one per line, optionally NAME:SCALE", lines=2)
                allow_pickle = gr.Checkbox(False, label="Allow pickle files (.bin/.pt/.ckpt can run code)",
                                           visible=allow_local)
                card_base = gr.Button("Use the base model from the first repo's model card", size="sm")
        with gr.Column(scale=2):
            # The option widgets come from GenerationOptions' fields (labels, ranges, defaults in one place).
            prompt = _option_widget("prompt", lines=2, elem_id="gen-prompt")
            negative = _option_widget("negative_prompt", lines=1)
            with gr.Row():
                scheduler, steps, guidance = (_option_widget(name) for name in ("scheduler", "steps", "guidance"))
            with gr.Row():
                width, height, seed, num_images, fuse = (
                    _option_widget(name) for name in ("width", "height", "seed", "num_images", "fuse_lora"))
            with gr.Row():
                go = gr.Button("Generate", variant="primary", elem_id="gen-generate")
                compare = gr.Button("Compare with base", elem_id="gen-compare")
            status = gr.Markdown("", elem_id="gen-status")
            gallery = gr.Gallery(label="Images", columns=4, height="auto", elem_id="gen-gallery")
    with gr.Accordion("Overfitting grid: prompts x checkpoints (x LoRA scales)", open=False):
        with gr.Row():
            grid_prompts = gr.Textbox(label="Prompts, one per line (empty: built from the run's tokens)", lines=4)
            # A dropdown that accepts any value: its choices change per run, and API callers name steps directly.
            grid_steps = gr.Dropdown([], value=[], multiselect=True, allow_custom_value=True,
                                     label="Checkpoints (none: all, plus the final output)")
            grid_scales = gr.Textbox("1.0", label="LoRA scales, comma separated (e.g. 0.5, 1.0)")
        grid_go = gr.Button("Make grid", elem_id="gen-grid")
        picture = gr.Image(label="Grid / comparison", type="pil", interactive=False, elem_id="gen-picture")
    with gr.Accordion("Share: export and push to the Hub", open=False):
        gr.Markdown("Exports the selected run (or checkpoint) with a model card. **kohya** and **a1111** files "
                    "load in AUTOMATIC1111 / ComfyUI; **single-file** is for full fine-tunes.")
        with gr.Row():
            fmt = gr.Radio(list(FORMATS), value="diffusers", label="Format")
            export_go = gr.Button("Export", elem_id="gen-export")
        files = gr.File(label="Download", file_count="multiple", interactive=False)
        with gr.Row():
            repo_id = gr.Textbox(label="Hub repo id", placeholder="your-name/my-model")
            private = gr.Checkbox(True, label="Private repo")
            token = gr.Textbox(label="Hub token (write access; used for this push only, never stored)",
                               type="password")
            push_go = gr.Button("Push to Hub", elem_id="gen-push")
        share_status = gr.Markdown("")

    # ------------------------------------------------------------------------------------ glue
    def artifacts_for(source: str, scale: float, upload_paths: list | None, path_text: str,
                      pickle_ok: bool) -> tuple[str | None, list[Artifact]]:
        base, found = None, []
        if source:
            run_dir, step = guard.run(source)
            result = run_artifacts(run_dir, step)
            base, found = result.base_model, result.artifacts
            for artifact in found:
                if artifact.kind == LORA:
                    artifact.scale = float(scale)
        for item in upload_paths or []:
            found.append(artifact_from_spec(str(getattr(item, "name", item)), allow_pickle=bool(pickle_ok)))
        for spec in guard.specs(path_text):
            found.append(artifact_from_spec(spec, allow_pickle=bool(pickle_ok)))
        return base, found

    def options_from(text: str, neg: str, sched: str, n_steps: float, cfg: float, w: float, h: float, s: float,
                     n: float, fused: bool) -> GenerationOptions:
        # Widgets send floats (sliders, numbers) and None (an emptied number box): back to the fields' types.
        return GenerationOptions(prompt=text or "", negative_prompt=neg or "", scheduler=sched, steps=int(n_steps),
                                 guidance=float(cfg), width=int(w or 0), height=int(h or 0), seed=int(s or 0),
                                 num_images=int(n), fuse_lora=bool(fused)).validate()

    option_inputs = [prompt, negative, scheduler, steps, guidance, width, height, seed, num_images, fuse]
    artifact_inputs = [source, base_model, lora_scale, uploads, paths, allow_pickle]

    # Handlers spell out every parameter: their names are the API's keyword arguments (gradio_client).
    @user_errors
    def on_generate(source: str, base_model: str, lora_scale: float, uploads: list | None, paths: str,
                    allow_pickle: bool, prompt: str, negative_prompt: str, scheduler: str, steps: float,
                    guidance: float, width: float, height: float, seed: float, num_images: float,
                    fuse_lora: bool) -> Iterator[tuple]:
        run_base, found = artifacts_for(source, lora_scale, uploads, paths, allow_pickle)
        model = guard.model(run_base or base_model)
        options = options_from(prompt, negative_prompt, scheduler, steps, guidance, width, height, seed, num_images,
                               fuse_lora)
        result = yield from _on_gpu(ctx, "Generating", lambda: default_engine().generate(
            model, found, options, allow_pickle=bool(allow_pickle)), outputs=2)
        images = list(zip(result.images, result.captions(), strict=True))
        words = f" · trigger words: {', '.join(result.tokens)}" if result.tokens else ""
        yield images, f"{len(images)} image(s) in {result.seconds:.1f} s on {model}{words}"

    @user_errors
    def on_compare(source: str, base_model: str, lora_scale: float, uploads: list | None, paths: str,
                   allow_pickle: bool, prompt: str, negative_prompt: str, scheduler: str, steps: float,
                   guidance: float, width: float, height: float, seed: float, num_images: float,
                   fuse_lora: bool) -> Iterator[tuple]:
        run_base, found = artifacts_for(source, lora_scale, uploads, paths, allow_pickle)
        if not found:
            raise SdtuneError("Pick a trained result (or add a LoRA / embedding) to compare with the base model.")
        model = guard.model(run_base or base_model)
        options = options_from(prompt, negative_prompt, scheduler, steps, guidance, width, height, seed, num_images,
                               fuse_lora)
        result = yield from _on_gpu(ctx, "Comparing", lambda: default_engine().compare(
            model, found, options, allow_pickle=bool(allow_pickle)), outputs=3)
        yield result.pairs(), result.image, f"Base {model} vs tuned, same prompt and seeds."

    @user_errors
    def on_grid(source: str, grid_prompts: str, checkpoints: list[str] | None, lora_scales: str, prompt: str,
                negative_prompt: str, scheduler: str, steps: float, guidance: float, width: float, height: float,
                seed: float, num_images: float, fuse_lora: bool) -> Iterator[tuple]:
        if not source:
            raise SdtuneError("Pick a run first: the grid compares its checkpoints.")
        run_dir, _ = guard.run(source)
        prompts_text, ticked, scales_text = grid_prompts, checkpoints, lora_scales
        try:
            scales = [float(x) for x in (scales_text or "").replace(";", ",").split(",") if x.strip()]
        except ValueError as err:
            raise SdtuneError("LoRA scales: numbers separated by commas, e.g. 0.5, 1.0.") from err
        prompts = [line.strip() for line in (prompts_text or "").splitlines() if line.strip()] or None
        chosen = [None if s == "final" else int(s) for s in (ticked or [])] or None
        options = options_from("grid", negative_prompt, scheduler, steps, guidance, width, height, seed, 1, fuse_lora)
        image: Any = None
        image = yield from _on_gpu(ctx, "Grid", lambda: overfitting_grid(
            run_dir, steps=chosen, prompts=prompts, scales=scales or None, options=options,
            engine=default_engine()), outputs=2)
        yield image, "Rows: checkpoints (and scales); columns: prompts; same seed everywhere."

    def on_source(src: str, current_prompt: str) -> tuple:
        if not src:
            return gr.skip(), "", gr.skip(), "", gr.update(choices=[], value=[])
        try:
            run_dir, _ = guard.run(src)
        except SdtuneError as err:
            return gr.skip(), str(err), gr.skip(), "", gr.update(choices=[], value=[])
        config = RunDir(Path(run_dir)).config()
        grid_defaults = default_grid_prompts(config)
        words = [w for w in (config.get("placeholder_token"), config.get("instance_prompt")) if w]
        text = f"Trigger: {', '.join(f'`{w}`' for w in dict.fromkeys(words))}" if words else ""
        suggestion = current_prompt or grid_defaults[0]
        step_choices = [str(s) for s in checkpoint_steps(run_dir)] + ["final"]
        return (config.get("model") or gr.skip(), text, suggestion, "\n".join(grid_defaults),
                gr.update(choices=step_choices, value=[]))

    @user_errors
    def on_card_base(specs: str, current: str) -> str:
        for spec in guard.specs(specs):
            found = base_model_from_card(artifact_from_spec(spec).path)
            if found:
                gr.Info(f"Base model from the model card: {found}")
                return found
        raise SdtuneError("No base_model found on those model cards.")

    @user_errors
    def on_export(source: str, format_name: str) -> tuple[list[str], str]:
        if not source:
            raise SdtuneError("Pick a run (or checkpoint) to export.")
        run_dir, step = guard.run(source)
        name = f"{Path(run_dir).name}-{'final' if step is None else f'step-{step}'}-{format_name}"
        out = Path(ctx.exports_dir) / name
        written = export_run(run_dir, format_name, out, step=step)
        archive = zip_export(written, Path(ctx.exports_dir) / f"{name}.zip")
        singles = [str(p) for p in written if p.is_file()]
        return [str(archive), *singles], f"Exported to {out} ({len(written)} item(s)); the .zip holds everything."

    @user_errors
    def on_push(src: str, repo: str, is_private: bool, secret: str) -> tuple[str, str]:
        if not src:
            raise SdtuneError("Pick a run (or checkpoint) to push.")
        run_dir, step = guard.run(src)
        url = push_run(run_dir, (repo or "").strip(), token=secret or "", private=bool(is_private), step=step)
        return "", f"Pushed to [{url}]({url}) ({'private' if is_private else 'public'})."

    refresh.click(lambda: gr.update(choices=_source_choices(ctx)), None, source, api_visibility="private")
    source.change(on_source, [source, prompt], [base_model, triggers, prompt, grid_prompts, grid_steps],
                  api_visibility="private")
    card_base.click(on_card_base, [paths, base_model], base_model, api_visibility="private")
    go.click(on_generate, [*artifact_inputs, *option_inputs], [gallery, status], api_name="generate")
    compare.click(on_compare, [*artifact_inputs, *option_inputs], [gallery, picture, status], api_name="compare")
    grid_go.click(on_grid, [source, grid_prompts, grid_steps, grid_scales, *option_inputs], [picture, status],
                  api_name="grid")
    export_go.click(on_export, [source, fmt], [files, share_status], api_name="export")
    # The token is an input of this event only: never echoed, and the box is emptied after every push.
    push_go.click(on_push, [source, repo_id, private, token], [token, share_status], api_visibility="private")
