"""Assemble the app: header (hardware, Space notices), Dataset, Train, Runs and Generate tabs, API endpoints."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from sdtune_ui.app import ops as app_ops
from sdtune_ui.app.ops import GpuInfo, detect_gpu
from sdtune_ui.ui import api, dataset_tab, generate_tab, queue_panel, runs_tab, train_tab
from sdtune_ui.ui.common import workspace_of
from sdtune_ui.ui.context import AppContext
from sdtune_ui.ui.form import MIN_WIDTH, SWITCH
from sdtune_ui.ui.train_form import INVALID

TITLE = "sdtune_ui: fine-tune Stable Diffusion"
CSS = f"""
.{INVALID} {{ outline: 2px solid var(--color-red-500, #ef4444); outline-offset: 2px; border-radius: 6px; }}
.{SWITCH} {{ min-width: min({MIN_WIDTH}px, 100%) !important; }}
#queue-panel {{ padding: 4px 8px; }}
#queue-table table {{ font-size: 0.9em; }}
"""


@dataclass(frozen=True)
class AppOptions:
    """How the app is exposed. A public app (Space, share link, --public) never reads or offers the host's files;
    neither does an app with a workspace per user (its users are not the machine's owner)."""

    public: bool = False
    gpu: GpuInfo = field(default_factory=lambda: GpuInfo(None, 0.0))
    space_id: str | None = None
    has_hf_token: bool = False
    per_user: bool = False
    allow_hub_import: bool = False  # on a public app, only when its owner allows it (--allow-hub-import)

    @property
    def allow_local_paths(self) -> bool:
        return not self.public and not self.per_user

    @property
    def hub_import(self) -> bool:
        """Whether the Dataset tab imports Hub datasets: always locally; on a public app only where allowed (a
        visitor makes the server download a dataset's files, which can be large)."""
        return not self.public or self.allow_hub_import

    @property
    def show_duplicate(self) -> bool:
        # The shared original usually runs on free CPU hardware: invite people to duplicate it onto a GPU.
        return bool(self.space_id) and self.gpu.name is None


def options_for(ctx: AppContext, *, share: bool = False, gpu: GpuInfo | None = None,
                allow_hub_import: bool | None = None) -> AppOptions:
    space_id = os.environ.get("SPACE_ID") or None
    if allow_hub_import is None:  # a Space sets it as a variable (SDTUNE_ALLOW_HUB_IMPORT=1)
        allow_hub_import = os.environ.get("SDTUNE_ALLOW_HUB_IMPORT", "").lower() in ("1", "true", "yes")
    return AppOptions(public=bool(share or ctx.is_space or space_id), gpu=gpu or detect_gpu(), space_id=space_id,
                      has_hf_token=bool(os.environ.get("HF_TOKEN")), per_user=ctx.workspaces.per_user,
                      allow_hub_import=allow_hub_import)


def space_notices(options: AppOptions) -> list[str]:
    notes = []
    if options.space_id and options.gpu.name is None:
        notes.append("This Space has no GPU: only the tiny demo models train in reasonable time. Duplicate it "
                     "and pick GPU hardware (Settings > Hardware) to train real models.")
    if options.space_id and not options.has_hf_token:
        notes.append("No HF_TOKEN secret is set: gated base models cannot be downloaded. Add one in the Space's "
                     "settings; pushing to the Hub asks for a token in the Export section.")
    return notes


def build_app(ctx: AppContext, options: AppOptions | None = None) -> gr.Blocks:
    options = options or options_for(ctx)
    ctx.data_dir.mkdir(parents=True, exist_ok=True)
    for folder in (ctx.runs_dir, ctx.datasets_dir, ctx.exports_dir):
        folder.mkdir(parents=True, exist_ok=True)
    if not app_ops.list_datasets(ctx.datasets_dir):
        app_ops.load_example(ctx.datasets_dir)  # a fresh install can train at once, on the example
    with gr.Blocks(title=TITLE) as demo:
        with gr.Row():
            gr.Markdown(f"# {TITLE}")
            if options.show_duplicate:
                gr.DuplicateButton(elem_id="duplicate")
        for note in space_notices(options):
            gr.Markdown(f"> **Note:** {note}", elem_classes=["space-notice"])
        queue_panel.build(ctx, options)
        with gr.Tabs():
            with gr.Tab("Dataset", id="dataset"):
                data = dataset_tab.build(ctx, options)
            with gr.Tab("Train", id="train"):
                train = train_tab.build(ctx, options)
            with gr.Tab("Runs", id="runs"):
                runs_tab.build(ctx, options, train.watched)
            with gr.Tab("Generate", id="generate"):
                generate = generate_tab.build(ctx, options)
        api.register(ctx, options)
        queue_panel.register_page_close(demo, ctx)

        def follow_dataset(name: str, request: gr.Request = None) -> Any:
            # Picking or making a dataset makes it the one to train on.
            workspace = workspace_of(ctx, request)
            return train_tab.refresh_datasets(workspace, name if name in train_tab.dataset_choices(workspace) else None)

        follow = dict(fn=follow_dataset, inputs=data.dataset, outputs=train.form.widgets["data"],
                      show_progress="hidden", api_visibility="private")
        data.dataset.change(**follow)
        for event in data.made:
            event.success(**follow)
        # A (re)loaded page shows the selected dataset and re-attaches to the watched or running run at once.
        demo.load(data.on_load, data.dataset, [data.dataset, *data.shown], show_progress="hidden",
                  api_visibility="private").then(**follow).then(**train.form_events["follow"]).then(
                      **train.form_events["validate"])  # the form's notes (bucketing) and verdict at once
        demo.load(**train.tick, api_visibility="private")
        demo.load(**generate.refresh)  # runs finished since the app started are listed at once
    return demo
