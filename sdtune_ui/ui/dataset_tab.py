"""Dataset tab: add images (uploads, a zip, a local folder, the example), the dataset doctor, auto-captioning,
caption editing (table, find/replace), and export (zip download, Hub push). The data package does the work."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gradio as gr

from sdtune_ui.app import ops as app_ops
from sdtune_ui.data.formats import edit_captions, existing_formats, list_images, read_captions, write_captions
from sdtune_ui.errors import DatasetError
from sdtune_ui.methods import DEFAULT_METHOD, method_classes
from sdtune_ui.ui.common import user_errors, wait_in_queue

UPLOAD_TYPES = ["image", ".zip", ".txt", ".jsonl", ".csv", ".json"]
MAX_THUMBNAILS = 200  # every thumbnail is a full image sent to the browser; the caption table lists all


@dataclass
class DatasetTab:
    dataset: gr.Dropdown            # the selected dataset's name (a folder of the data dir)
    shown: list[gr.components.Component]  # thumbnails and caption table of the selected dataset
    on_load: Callable[[str], list[Any]]  # fills `dataset` and `shown` when a page loads
    made: list[Any]                   # events after which the dataset exists (the Train tab follows them)


def _captioners() -> tuple[list[tuple[str, str]], str | None]:
    from sdtune_ui.caption import CAPTIONERS

    return [(f"{name}: {spec.description}", name) for name, spec in CAPTIONERS.items()], "tiny-blip"


def build(ctx: Any, options: Any) -> DatasetTab:
    names = app_ops.list_datasets(ctx.datasets_dir)
    with gr.Row():
        dataset = gr.Dropdown(names, value=names[0] if names else "my-dataset", allow_custom_value=True,
                              label="Dataset", info="Pick one, or type a new name to make a new dataset.",
                              elem_id="dataset-name", scale=3)
        example = gr.Button("Load the example dataset (toy robot, 8 images)", elem_id="load-example", scale=1)
    with gr.Row():
        uploads = gr.File(file_count="multiple", file_types=UPLOAD_TYPES, elem_id="dataset-upload",
                          label="Images, caption .txt files, metadata.jsonl/csv, or a .zip of them")
        with gr.Column():
            folder = gr.Textbox(label="...or a folder on this computer", visible=options.allow_local_paths,
                                placeholder="/path/to/images")
            add = gr.Button("Add to dataset", variant="primary", elem_id="add-images")
    report = gr.Textbox(label="Report", lines=6, elem_id="dataset-report")

    with gr.Accordion("Dataset doctor", open=False):
        with gr.Row():
            doc_method = gr.Dropdown([(cls.label, cls.name) for cls in method_classes()], value=DEFAULT_METHOD,
                                     label="Method")
            doc_resolution = gr.Number(512, precision=0, label="Resolution")
            doc_trigger = gr.Textbox(label="Trigger word (optional)")
            doctor = gr.Button("Check the dataset")

    captioner_choices, default_captioner = _captioners()
    with gr.Accordion("Auto-captioning", open=False, visible=bool(captioner_choices)):
        with gr.Row():
            captioner = gr.Dropdown(captioner_choices, value=default_captioner, label="Captioner",
                                    elem_id="captioner")
            trigger = gr.Textbox(label="Trigger word", info="Put in front of every caption, e.g. sks")
            prefix = gr.Textbox(label="Prefix")
            suffix = gr.Textbox(label="Suffix")
            overwrite = gr.Checkbox(False, label="Overwrite existing captions")
        caption_btn = gr.Button("Caption the images", elem_id="caption-images")

    gr.Markdown("### Images and captions")
    thumbs = gr.Gallery(label="Images", columns=8, height=220, elem_id="dataset-gallery")
    table = gr.Dataframe(headers=["file", "caption"], datatype=["str", "str"], interactive=True,
                         column_count=2, label="Captions (edit, then save)", elem_id="caption-table")
    with gr.Row():
        save = gr.Button("Save captions")
        find = gr.Textbox(label="Find")
        replace = gr.Textbox(label="Replace with")
        regex = gr.Checkbox(False, label="Regular expression")
        apply_replace = gr.Button("Replace in all captions")

    with gr.Accordion("Export", open=False):
        with gr.Row():
            export_zip = gr.Button("Download as zip")
            export_file = gr.File(label="Zip", interactive=False)
        with gr.Row():
            repo = gr.Textbox(label="Hub dataset repo", placeholder="user/my-dataset")
            token = gr.Textbox(label="Hugging Face token (write access; used once, never stored)", type="password")
            private = gr.Checkbox(True, label="Private")
            push = gr.Button("Push to the Hub")

    # ---------------------------------------------------------------- handlers
    def folder_of(name: str) -> Any:
        return app_ops.dataset_path(ctx.datasets_dir, name)

    def show(name: str) -> list[Any]:
        """Thumbnails and the caption table of dataset `name` (empty when it does not exist yet)."""
        try:
            root = folder_of(name)
        except DatasetError:
            return [[], [["", ""]]]
        captions = read_captions(root)
        files = list_images(root)
        rows = [[file, captions.get(file, "")] for file in files] or [["", ""]]
        return [[(str(root / file), file) for file in files[:MAX_THUMBNAILS]], rows]

    def listing(name: str) -> Any:
        return gr.update(choices=app_ops.list_datasets(ctx.datasets_dir), value=app_ops.safe_name(name))

    def on_page_load(name: str) -> list[Any]:
        # The choices were fixed when the app started: list today's datasets, keep the selection if it exists.
        names = app_ops.list_datasets(ctx.datasets_dir)
        if name in names or not names:
            return [gr.update(choices=names), *show(name)]
        return [gr.update(choices=names, value=names[0]), *show(names[0])]

    @user_errors
    def on_example() -> list[Any]:
        root = app_ops.load_example(ctx.datasets_dir)
        text = f"Example dataset ready: {len(list_images(root))} images with captions in {root.name}."
        return [listing(root.name), text, *show(root.name)]

    @user_errors
    def on_add(name: str, files: list[str] | None, local: str) -> list[Any]:
        root, result = app_ops.ingest_into(ctx.datasets_dir, name, files or [], local_folder=local,
                                           allow_local_paths=options.allow_local_paths)
        return [listing(root.name), result.to_text(), *show(root.name)]

    @user_errors
    def on_doctor(name: str, method: str, resolution: float, trigger_word: str) -> str:
        from sdtune_ui.data.doctor import diagnose

        return diagnose(folder_of(name), method=method, resolution=int(resolution or 512),
                        trigger=trigger_word.strip() or None).to_text()

    @user_errors
    def on_caption(name: str, model: str, trigger_word: str, pre: str, post: str, redo: bool) -> Any:
        from sdtune_ui.caption import caption_folder, unload_captioners

        root = folder_of(name)

        def work() -> Any:
            app_ops.release_generation_memory()
            try:
                return caption_folder(root, model, trigger=trigger_word.strip() or None, prefix=pre, suffix=post,
                                      overwrite=redo)
            finally:
                unload_captioners()  # give the GPU memory back before the next training run

        for item in wait_in_queue(ctx.jobs, f"Captioning {root.name}", work):
            if isinstance(item, tuple):
                yield [item[1].to_text(), *show(name)]
            else:
                yield [item, gr.skip(), gr.skip()]

    @user_errors
    def on_save(name: str, rows: Any) -> list[Any]:
        root = folder_of(name)
        known = set(list_images(root))
        values = rows.values.tolist() if hasattr(rows, "values") else rows
        captions = {str(file): str(text or "") for file, text in values if file in known}
        write_captions(root, captions, existing_formats(root) or ("txt", "jsonl"))
        return [f"Saved {len(captions)} caption(s).", *show(name)]

    @user_errors
    def on_replace(name: str, old: str, new: str, is_regex: bool) -> list[Any]:
        changed = edit_captions(folder_of(name), find=old, replace=new, regex=is_regex)
        return [f"Changed {len(changed)} caption(s).", *show(name)]

    @user_errors
    def on_zip(name: str) -> str:
        return str(app_ops.zip_dataset(folder_of(name), ctx.exports_dir))

    @user_errors
    def on_push(name: str, repo_id: str, hf_token: str, is_private: bool) -> str:
        from sdtune_ui.data.hub import push_dataset_to_hub

        if not hf_token.strip():
            raise gr.Error("Paste a Hugging Face token with write access to push.")
        url = push_dataset_to_hub(folder_of(name), repo_id.strip(), token=hf_token.strip(), private=is_private)
        return f"Pushed to {url}"

    # ---------------------------------------------------------------- wiring
    shown = [thumbs, table]
    loaded = example.click(on_example, None, [dataset, report, *shown], api_name="load_example")
    added = add.click(on_add, [dataset, uploads, folder], [dataset, report, *shown], api_name="add_images")
    added.then(lambda: None, None, uploads, api_visibility="private")
    dataset.change(show, dataset, shown, show_progress="hidden", api_visibility="private")
    doctor.click(on_doctor, [dataset, doc_method, doc_resolution, doc_trigger], report, api_name="doctor")
    caption_btn.click(on_caption, [dataset, captioner, trigger, prefix, suffix, overwrite], [report, *shown],
                      api_name="caption", concurrency_limit=None)
    save.click(on_save, [dataset, table], [report, *shown], api_name="save_captions")
    apply_replace.click(on_replace, [dataset, find, replace, regex], [report, *shown], api_name="replace")
    export_zip.click(on_zip, dataset, export_file, api_name="export_zip")
    push.click(on_push, [dataset, repo, token, private], report, api_visibility="private")
    return DatasetTab(dataset, shown, on_page_load, [loaded, added])
