"""The Generate tab's Share panel: export the selected run (or checkpoint) with a model card, push it to the Hub."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr

from sdtune_ui.app.ops import export_cleanly
from sdtune_ui.app.text import escape_markdown
from sdtune_ui.errors import SdtuneError
from sdtune_ui.export.formats import FORMATS, push_run, zip_export
from sdtune_ui.ui.common import errors_for, keep_on_failure, workspace_of


def build(ctx: Any, guard: Any, source: gr.Dropdown) -> None:
    user_errors = errors_for(ctx)
    with gr.Accordion("Share: export and push to the Hub", open=False, elem_id="gen-share-fold"):
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
        share_status = gr.Markdown("", elem_id="gen-share-status")

    @user_errors
    def on_export(source: str, format_name: str, request: gr.Request = None) -> tuple[list[str], str]:
        if not source:
            raise SdtuneError("Pick a run (or checkpoint) to export.")
        workspace = workspace_of(ctx, request)
        run_dir, step = guard.run(source, workspace)
        name = f"{Path(run_dir).name}-{'final' if step is None else f'step-{step}'}-{format_name}"
        out = workspace.exports_dir / name
        written = export_cleanly(run_dir, format_name, out, step=step)
        archive = zip_export(written, workspace.exports_dir / f"{name}.zip")
        singles = [str(p) for p in written if p.is_file()]
        return [str(archive), *singles], escape_markdown(
            f"Exported to {workspace.shown(out)} ({len(written)} item(s)); the .zip holds everything.")

    @user_errors
    def on_push(src: str, repo: str, is_private: bool, secret: str, request: gr.Request = None) -> tuple[str, str]:
        if not src:
            raise SdtuneError("Pick a run (or checkpoint) to push.")
        run_dir, step = guard.run(src, workspace_of(ctx, request))
        url = push_run(run_dir, (repo or "").strip(), token=secret or "", private=bool(is_private), step=step)
        return "", f"Pushed to [{escape_markdown(url)}]({url}) ({'private' if is_private else 'public'})."

    keep_on_failure(export_go.click(on_export, [source, fmt], [files, share_status], api_name="export"),
                    [files, share_status])
    # The token is an input of this event only: never echoed, and the box is emptied after every push.
    keep_on_failure(push_go.click(on_push, [source, repo_id, private, token], [token, share_status],
                                  api_visibility="private"), [token, share_status])
