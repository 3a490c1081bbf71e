"""Generate tab: try a run's result (or any LoRA / embedding) against its base model, compare, find the
checkpoint that learned without forgetting (grid: generate_grid.py), then export or push it (generate_share.py).

Only widgets and glue live here: generation is sdtune_ui.generate.engine / grid, exports sdtune_ui.export.
Every GPU call waits its turn in the app's one GPU queue (ctx.jobs) and shows up in the queue panel; a
generation asked for by a page that is closed stops with it.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from sdtune_ui.app.generation import NONE, StepTimer, method_traits, source_choices, trigger_words
from sdtune_ui.app.text import code, escape_html, escape_markdown
from sdtune_ui.errors import ConfigError, SdtuneError
from sdtune_ui.generate import editing
from sdtune_ui.generate.artifacts import (
    Artifact,
    artifact_from_spec,
    base_model_from_card,
    controlnet_artifact,
    parse_choice,
    run_artifacts,
)
from sdtune_ui.generate.engine import default_engine
from sdtune_ui.generate.options import GenerationOptions, option_fields
from sdtune_ui.methods.outputs import CONTROLNET, LORA
from sdtune_ui.models import KNOWN_MODELS, OFFLINE_MODELS
from sdtune_ui.runs import RunDir
from sdtune_ui.ui import generate_grid, generate_share
from sdtune_ui.ui.common import errors_for, keep_on_failure, wait_in_queue, workspace_of

REFRESH_S = 3.0


def on_gpu(ctx: Any, label: str, fn: Callable[[Any], Any], outputs: int, status: int, request: Any = None,
           ) -> Generator[tuple, None, Any]:
    """Run `fn(job)` in the GPU queue and return its result (`result = yield from on_gpu(...)`).

    While it waits or runs, yields rows for a handler with `outputs` outputs: the one at `status` shows the
    queue position or the progress, the others are left as they are. The job stops with its page.
    """
    for item in wait_in_queue(ctx.jobs, label, fn, request=request, stops_with_page=True, takes_job=True):
        if isinstance(item, tuple) and len(item) == 2 and item[0] == "done":
            return item[1]
        row: list[Any] = [gr.skip()] * outputs
        row[status] = escape_markdown(item)
        yield tuple(row)


def progress_of(job: Any, timer: StepTimer | None = None, unit: str = "step") -> Callable[[int, int], None]:
    """A step callback that reports progress to the queue, times the steps and stops when the job is cancelled."""
    def report(done: int, total: int) -> None:
        job.check_cancelled()
        job.report(done, total, unit)
        if timer is not None:
            timer.tick()
    return report


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


class Guard:
    """What a caller of this tab (page or API) may point at: runs under runs_dir; local files only when
    the app is not public (a Space or share link must not read the host's files)."""

    def __init__(self, ctx: Any, allow_local: bool, public: bool | None = None):
        self.ctx, self.allow_local = ctx, allow_local
        self.public = (not allow_local) if public is None else public  # the public app's limits apply

    def run(self, source: str, workspace: Any = None) -> tuple[str, int | None]:
        """A run id (or a path inside a runs folder the workspace sees), optionally @step-N -> (run folder, step).

        `workspace`: the caller's (app/workspace.py); default: the shared one."""
        workspace = workspace or self.ctx.workspace()
        name, step = parse_choice(source)
        run_dir = Path(name) if Path(name).is_absolute() else workspace.runs_dir_of(name) / name
        if not any(_inside(run_dir, root) for root in workspace.run_roots()) or \
                not RunDir(run_dir).config_path.exists():
            raise SdtuneError("Pick a run from the list.")
        return str(run_dir), step

    def model(self, model: str) -> str:
        model = (model or "").strip()
        if not model:
            raise SdtuneError("Choose a base model.")
        if not self.allow_local and model not in OFFLINE_MODELS and Path(model).expanduser().exists():
            raise SdtuneError("This app is public: use a Hub model id, not a path on the server.")
        return model

    def pickle(self, allow_pickle: bool) -> bool:
        """Whether pickle files may load: asked for, and never on a public app (whatever an API caller sends)."""
        if allow_pickle and not self.allow_local:
            raise SdtuneError("This app is public: pickle files (.bin/.pt/.ckpt can run code) are refused; use "
                              ".safetensors files.")
        return bool(allow_pickle)

    def specs(self, text: str) -> list[str]:
        specs = [line.strip() for line in (text or "").splitlines() if line.strip()]
        if specs and not self.allow_local:
            for spec in specs:
                if Path(spec.rsplit(":", 1)[0]).expanduser().exists():
                    raise SdtuneError("This app is public: upload LoRA / embedding files, or give Hub repo ids.")
        return specs


_Guard = Guard  # the name the tests import


def field_slider(minimum: float, maximum: float, **kwargs: Any) -> gr.Slider:
    """A slider that passes any number on, so the handler's validation names the field and its limits in the
    message (gradio's own check says only "Value 100000 is greater than maximum value 150")."""
    slider = gr.Slider(minimum, maximum, **kwargs)
    # An instance attribute, not a subclass: gradio writes a .pyi stub beside any module that subclasses a component.
    slider.preprocess = lambda payload: payload  # type: ignore[method-assign]
    return slider


def option_widget(name: str, *, public: bool = False, **extra: Any) -> Any:
    """The widget of one GenerationOptions field: its label, default and range come from the field (a public app's
    sliders end at the public maximum)."""
    f = next(f for f in option_fields() if f.name == name)
    meta, default = f.metadata, f.default
    common = dict(value=default, label=meta["label"], elem_id=f"gen-{name.replace('_', '-')}", **extra)
    if meta["choices"]:
        return gr.Dropdown(list(meta["choices"]), **common)
    if isinstance(default, bool):
        return gr.Checkbox(**common)
    if isinstance(default, str):
        return gr.Textbox(**common)
    if meta["maximum"] is not None and meta["maximum"] <= 10_000:
        maximum = meta["public_maximum"] if public and meta["public_maximum"] is not None else meta["maximum"]
        return field_slider(meta["minimum"], maximum, step=meta["step"], **common)
    return gr.Number(precision=0 if isinstance(default, int) else None, **common)


def options_from(text: str, neg: str, sched: str, n_steps: float, cfg: float, w: float, h: float, s: float,
                 n: float, fused: bool, strength: float = 1.0, keep_unmasked: bool = True,
                 conditioning_scale: float = 1.0, *, public: bool = False) -> GenerationOptions:
    """Widget values back to the fields' types (sliders send floats, an emptied number box None), validated
    (`public`: within the public app's limits too)."""
    values = dict(steps=n_steps, guidance=cfg, width=w or 0, height=h or 0, seed=s or 0, num_images=n,
                  strength=strength, conditioning_scale=conditioning_scale)
    numbers, problems = {}, {}
    for name, value in values.items():
        try:
            number = float(value)
            numbers[name] = number if name in ("guidance", "strength", "conditioning_scale") else int(number)
        except (TypeError, ValueError, OverflowError):
            problems[name] = f"Give a number (got {value!r})."
    if problems:
        raise ConfigError(problems)
    return GenerationOptions(prompt=text or "", negative_prompt=neg or "", scheduler=sched, fuse_lora=bool(fused),
                             keep_unmasked=bool(keep_unmasked), **numbers).validate(public=public)


def png_files(result: Any, prefix: str = "") -> list[str]:
    """The images as the CLI writes them (PNG, the settings in a text chunk, named by seed), in a new folder of
    gradio's upload folder: served as they are (a PIL image would become a WebP without settings) and swept away
    with the uploads (ui/uploads.py)."""
    from gradio.utils import get_upload_folder

    root = Path(get_upload_folder())
    root.mkdir(parents=True, exist_ok=True)
    folder = tempfile.mkdtemp(prefix="generated-", dir=root)
    return [str(path) for path in result.save(folder, prefix=prefix)]


MODES = [("Text to image", editing.TEXT or "text"), ("Inpaint: paint over a picture", editing.INPAINT),
         ("ControlNet: follow a control picture", editing.CONTROL)]


def painted_mask(edited: dict | None) -> tuple[Any, Any]:
    """(picture, mask) from the inpainting editor: its background, and white wherever any layer was painted."""
    import numpy as np
    from PIL import Image

    edited = edited or {}
    picture = edited.get("background")
    if picture is None:
        raise SdtuneError("Inpainting: upload the picture to edit first, then paint over what to repaint.")
    painted = np.zeros((picture.height, picture.width), bool)
    for layer in edited.get("layers") or []:
        if layer is not None:
            painted |= np.asarray(layer.convert("RGBA").resize(picture.size))[..., 3] > 0
    if not painted.any():
        raise SdtuneError("Inpainting: paint over the region to repaint (the brush marks it white).")
    return picture.convert("RGB"), Image.fromarray((painted * 255).astype(np.uint8), "L")


def edit_inputs(mode: str, edited: dict | None, control: Any, controlnet: str, found: list[Artifact],
                guard: Guard) -> editing.EditPictures | None:
    """The pictures of an edit from the tab's widgets; a ControlNet named in the box joins the artifacts."""
    if mode == editing.INPAINT:
        picture, mask = painted_mask(edited)
        return editing.EditPictures(image=picture, mask=mask)
    if mode == editing.CONTROL:
        if control is None:
            raise SdtuneError("ControlNet: upload the control picture (edges, depth ...) first.")
        spec = (controlnet or "").strip()
        if spec and not any(a.kind == CONTROLNET for a in found):
            guard.specs(spec)   # a public app takes no host paths
            found.append(controlnet_artifact(spec))
        return editing.EditPictures(control=control.convert("RGB"))
    return None


def edit_mode(config: dict) -> str | None:
    """The mode a run's result is used in: ControlNet for a ControlNet run, inpainting for an inpainting model."""
    from sdtune_ui.export.model_card import family_of
    from sdtune_ui.methods import CONTROL, method_named, method_names

    method = str(config.get("method", ""))
    if method not in method_names():
        return None
    if method_named(method).has(CONTROL):
        return editing.CONTROL
    family = method_named(method).output_family(family_of(config))
    return editing.INPAINT if family.inpainting else MODES[0][1]


@dataclass
class GenerateTab:
    source: gr.Dropdown
    refresh: dict[str, Any]   # the run list's refresh (fn, inputs, outputs): also run when a page loads


def trigger_line(config: dict) -> str:
    words = trigger_words(config)
    if not words:
        return ""
    line = "Trigger words: " + ", ".join(code(w) for w in words)
    instance = str(config.get("instance_prompt") or "").strip()
    return line + (f" (instance prompt {code(instance)})" if instance else "")


def build(ctx: Any, options: Any = None) -> GenerateTab:
    """The Generate tab's content (called inside `gr.Tab`); `options.allow_local_paths` (if given) gates paths."""
    user_errors = errors_for(ctx)
    allow_local = bool(getattr(options, "allow_local_paths", not getattr(ctx, "is_space", False)))
    guard = Guard(ctx, allow_local, public=bool(getattr(options, "public", not allow_local)))
    models = list(OFFLINE_MODELS) + list(KNOWN_MODELS)

    with gr.Row():
        # Custom values allowed: API callers name runs directly; the guard checks every value against runs_dir.
        # With a workspace per user the list is the user's, filled when the page loads (on_refresh).
        first = source_choices([] if ctx.workspaces.per_user else ctx.workspace().run_roots())
        source = gr.Dropdown(first, value=NONE, allow_custom_value=True, scale=6,
                             label="Trained result (run output or checkpoint; new runs appear by themselves)",
                             elem_id="gen-source")
        refresh = gr.Button("Refresh", size="sm", scale=0, min_width=100, elem_id="gen-refresh")
    with gr.Row():
        with gr.Column(scale=1, min_width=320):
            base_model = gr.Dropdown(models, value=OFFLINE_MODELS[0], allow_custom_value=True, label="Base model",
                                     info="A run picks its own base model; any Hub id works.", elem_id="gen-model")
            lora_scale = gr.Slider(0.0, 2.0, value=1.0, step=0.05, label="LoRA scale (0 = base model)",
                                   visible=False, elem_id="gen-lora-scale")
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
            prompt = option_widget("prompt", lines=2)
            negative = option_widget("negative_prompt", lines=1)
            with gr.Row():
                scheduler, steps, guidance = (option_widget(name, public=guard.public, min_width=200)
                                              for name in ("scheduler", "steps", "guidance"))
            with gr.Row():
                # Sizes get a row of their own: squeezed, the slider's 2048 end is cut off.
                width, height = (option_widget(name, public=guard.public, min_width=260)
                                 for name in ("width", "height"))
            with gr.Row():
                seed, num_images, fuse = (option_widget(name, public=guard.public, min_width=160)
                                          for name in ("seed", "num_images", "fuse_lora"))
            mode = gr.Radio(MODES, value=MODES[0][1], label="Mode", elem_id="gen-mode")
            with gr.Group(visible=False) as inpaint_box:
                editor = gr.ImageEditor(type="pil", label="Picture to edit: upload it, then paint over what to repaint",
                                        elem_id="gen-editor", height=380,
                                        brush=gr.Brush(colors=["#ffffff"], color_mode="fixed"))
                with gr.Row():
                    strength, keep_unmasked = (option_widget(name, min_width=200)
                                               for name in ("strength", "keep_unmasked"))
            with gr.Group(visible=False) as control_box:
                with gr.Row():
                    control_image = gr.Image(type="pil", label="Control picture (edges, depth ...)", height=260,
                                             elem_id="gen-control-image")
                    with gr.Column():
                        conditioning_scale = option_widget("conditioning_scale")
                        controlnet = gr.Textbox("", label="ControlNet", elem_id="gen-controlnet",
                                                info="A ControlNet run picked above brings its own; else a Hub id"
                                                + (", a folder" if allow_local else "") + " or tiny-controlnet-sd1")
            with gr.Row():
                go = gr.Button("Generate", variant="primary", elem_id="gen-generate")
                compare = gr.Button("Compare with base", elem_id="gen-compare")
            status = gr.Markdown("", elem_id="gen-status")
            # PNG, not the default WebP: lossless (the unmasked pixels of an inpainting stay exact).
            gallery = gr.Gallery(label="Images", columns=4, height=420, preview=False, object_fit="contain",
                                 format="png", elem_id="gen-gallery")
            side_by_side = gr.Image(label="Base vs tuned: same prompt and seeds", type="pil", interactive=False,
                                    format="png", visible=False, elem_id="gen-compare-image")

    option_inputs = [prompt, negative, scheduler, steps, guidance, width, height, seed, num_images, fuse]
    edit_widgets = [mode, editor, strength, keep_unmasked, control_image, conditioning_scale, controlnet]
    generate_grid.build(ctx, guard, source, option_inputs)
    generate_share.build(ctx, guard, source)

    # ------------------------------------------------------------------------------------ glue
    def artifacts_for(source: str, scale: float, upload_paths: list | None, path_text: str,
                      pickle_ok: bool, request: Any) -> tuple[str | None, list[Artifact]]:
        pickle_ok = guard.pickle(pickle_ok)
        base, found = None, []
        if source:
            run_dir, step = guard.run(source, workspace_of(ctx, request))
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

    artifact_inputs = [source, base_model, lora_scale, uploads, paths, allow_pickle]

    # Handlers spell out every parameter: their names are the API's keyword arguments (gradio_client).
    @user_errors(status=(1, 2))
    def on_generate(source: str, base_model: str, lora_scale: float, uploads: list | None, paths: str,
                    allow_pickle: bool, prompt: str, negative_prompt: str, scheduler: str, steps: float,
                    guidance: float, width: float, height: float, seed: float, num_images: float,
                    fuse_lora: bool, mode: str = "text", edited: dict | None = None, strength: float = 1.0,
                    keep_unmasked: bool = True, control_image: Any = None, conditioning_scale: float = 1.0,
                    controlnet: str = "", request: gr.Request = None) -> Iterator[tuple]:
        run_base, found = artifacts_for(source, lora_scale, uploads, paths, allow_pickle, request)
        model = guard.model(run_base or base_model)
        options = options_from(prompt, negative_prompt, scheduler, steps, guidance, width, height, seed, num_images,
                               fuse_lora, strength, keep_unmasked, conditioning_scale, public=guard.public)
        pictures = edit_inputs(mode, edited, control_image, controlnet, found, guard)
        timer = StepTimer()
        result = yield from on_gpu(ctx, "Generating", lambda job: default_engine().generate(
            model, found, options, allow_pickle=guard.pickle(allow_pickle), pictures=pictures,
            step_callback=progress_of(job, timer)), outputs=2, status=1, request=request)
        step_s = timer.seconds_per_step()
        if step_s:  # remembered for grid estimates (one step of the whole batch, per image)
            ctx.speed.record(model, step_s / max(1, len(result.images)))
        images = list(zip(png_files(result), result.captions(), strict=True))
        words = f" · trigger words: {', '.join(code(t) for t in result.tokens)}" if result.tokens else ""
        yield images, f"{len(images)} image(s) in {result.seconds:.1f} s on {escape_markdown(model)}{words}"

    @user_errors(status=(2, 3))
    def on_compare(source: str, base_model: str, lora_scale: float, uploads: list | None, paths: str,
                   allow_pickle: bool, prompt: str, negative_prompt: str, scheduler: str, steps: float,
                   guidance: float, width: float, height: float, seed: float, num_images: float,
                   fuse_lora: bool, mode: str = "text", edited: dict | None = None, strength: float = 1.0,
                   keep_unmasked: bool = True, control_image: Any = None, conditioning_scale: float = 1.0,
                   controlnet: str = "", request: gr.Request = None) -> Iterator[tuple]:
        run_base, found = artifacts_for(source, lora_scale, uploads, paths, allow_pickle, request)
        if not found:
            raise SdtuneError("Pick a trained result (or add a LoRA / embedding) to compare with the base model.")
        model = guard.model(run_base or base_model)
        options = options_from(prompt, negative_prompt, scheduler, steps, guidance, width, height, seed, num_images,
                               fuse_lora, strength, keep_unmasked, conditioning_scale, public=guard.public)
        pictures = edit_inputs(mode, edited, control_image, controlnet, found, guard)

        def work(job: Any) -> Any:
            job.report(0, 2, "set")
            return default_engine().compare(model, found, options, allow_pickle=guard.pickle(allow_pickle),
                                            pictures=pictures)

        result = yield from on_gpu(ctx, "Comparing", work, outputs=3, status=2, request=request)
        pairs = []
        for base, tuned in zip(result.base, result.tuned, strict=True):
            for base_file, tuned_file, seed in zip(png_files(base, "base-"), png_files(tuned, "tuned-"), base.seeds,
                                                   strict=True):
                pairs += [(base_file, f"base · seed {seed}"), (tuned_file, f"tuned · seed {seed}")]
        yield (pairs, result.image,
               f"Base {escape_markdown(model)} vs tuned, same prompt and seeds (side by side below).")

    def on_source(src: str, current_prompt: str, request: gr.Request = None) -> tuple:
        if not src:
            return gr.skip(), "", gr.update(visible=False), gr.skip(), gr.skip()
        try:
            run_dir, _ = guard.run(src, workspace_of(ctx, request))
        except SdtuneError as err:
            return gr.skip(), escape_markdown(err), gr.update(visible=False), gr.skip(), gr.skip()
        config = RunDir(Path(run_dir)).config()
        adapters, _ = method_traits(config)
        words = trigger_words(config)
        suggestion = current_prompt or str(config.get("instance_prompt") or "") or (
            f"a photo of {words[0]}" if words else "")
        return (config.get("model") or gr.skip(), trigger_line(config), gr.update(visible=adapters),
                suggestion or gr.skip(), edit_mode(config) or gr.skip())

    def on_mode(chosen: str) -> tuple:
        return gr.update(visible=chosen == editing.INPAINT), gr.update(visible=chosen == editing.CONTROL)

    @user_errors
    def on_card_base(specs: str, current: str) -> str:
        for spec in guard.specs(specs):
            found = base_model_from_card(artifact_from_spec(spec).path)
            if found:
                gr.Info(f"Base model from the model card: {escape_html(found)}")
                return found
        raise SdtuneError("No base_model found on those model cards.")

    def on_refresh(current: str | None, last: Any, request: gr.Request = None) -> list[Any]:
        choices = source_choices(workspace_of(ctx, request).run_roots())
        if choices == last:
            return [gr.skip(), last]
        values = [value for _, value in choices]
        return [gr.update(choices=choices, value=current if current in values else NONE), choices]

    shown = gr.State(None)
    timer = gr.Timer(REFRESH_S)
    refresh_io = dict(fn=on_refresh, inputs=[source, shown], outputs=[source, shown], show_progress="hidden",
                      api_visibility="private")
    refresh.click(**refresh_io)
    timer.tick(**refresh_io, concurrency_limit=None)
    source.change(on_source, [source, prompt], [base_model, triggers, lora_scale, prompt, mode],
                  api_visibility="private")
    mode.change(on_mode, mode, [inpaint_box, control_box], api_visibility="private")
    keep_on_failure(card_base.click(on_card_base, [paths, base_model], base_model, api_visibility="private"),
                    [base_model])
    keep_on_failure(go.click(on_generate, [*artifact_inputs, *option_inputs, *edit_widgets], [gallery, status],
                             api_name="generate"), [gallery, status])
    compared = compare.click(on_compare, [*artifact_inputs, *option_inputs, *edit_widgets],
                             [gallery, side_by_side, status], api_name="compare")
    keep_on_failure(compared, [gallery, side_by_side, status])
    # Shown once there is something to show, under the images, where the user looks.
    compared.success(lambda: gr.update(visible=True), None, side_by_side, api_visibility="private")
    return GenerateTab(source, refresh_io)
