"""Dataset tab: add images (uploads, a zip, a local folder, the example, a Hub dataset), the dataset doctor,
auto-captioning, the images of every concept with their masks, caption editing (table, find/replace), deleting,
cropping and masking images, and export (zip download, Hub push). The data package does the work."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gradio as gr

from sdtune_ui.app import ops as app_ops
from sdtune_ui.app.datasets import dataset_images, import_hub_dataset
from sdtune_ui.app.text import escape_markdown
from sdtune_ui.data.conditions import DEFAULT_DEPTH_MODEL, DETECTORS, TINY_DEPTH
from sdtune_ui.data.edit import crop_square, delete_images, save_captions, save_mask
from sdtune_ui.data.formats import edit_captions
from sdtune_ui.errors import DatasetError, SdtuneError
from sdtune_ui.methods import DEFAULT_METHOD, method_classes
from sdtune_ui.ui import dataset_doctor
from sdtune_ui.ui.common import discard_upload, errors_for, keep_on_failure, wait_in_queue, workspace_of

UPLOAD_TYPES = ["image", ".zip", ".txt", ".jsonl", ".csv", ".json"]
MAX_THUMBNAILS = 200  # every thumbnail is a full image sent to the browser; the caption table lists all
COLUMNS = ["file", "caption", "mask"]


@dataclass
class DatasetTab:
    dataset: gr.Dropdown            # the selected dataset's name (a folder of the data dir)
    shown: list[gr.components.Component]  # layout line, thumbnails and caption table of the selected dataset
    on_load: Callable[[str], list[Any]]  # fills `dataset` and `shown` when a page loads
    made: list[Any]                   # events after which the dataset exists (the Train tab follows them)


def _captioners() -> tuple[list[tuple[str, str]], str | None]:
    from sdtune_ui.caption import CAPTIONERS

    return [(f"{name}: {spec.description}", name) for name, spec in CAPTIONERS.items()], "tiny-blip"


def build(ctx: Any, options: Any) -> DatasetTab:
    user_errors = errors_for(ctx)
    # With a workspace per user, the list is filled for the user when the page loads (on_page_load).
    names = [] if ctx.workspaces.per_user else ctx.workspace().dataset_names()
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
    report = gr.Textbox(label="Report (pictures already in the dataset are skipped and listed)", lines=6,
                        elem_id="dataset-report")
    with gr.Accordion("Import a Hugging Face dataset", open=False, elem_id="hub-import-fold",
                      visible=getattr(options, "hub_import", True)):
        with gr.Row():
            hub_repo = gr.Textbox(label="Dataset id", placeholder="user/dataset-name", elem_id="hub-dataset")
            hub_split = gr.Textbox("train", label="Split")
            hub_max = gr.Number(100, precision=0, minimum=1, label="At most this many images")
            hub_go = gr.Button("Import into this dataset", elem_id="hub-import")
    doctor = dataset_doctor.build(ctx, dataset, [(cls.label, cls.name) for cls in method_classes()], DEFAULT_METHOD)

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
    layout = gr.Markdown("", elem_id="dataset-layout")
    thumbs = gr.Gallery(label="Images (masks and ControlNet conditions beside their image)", columns=8, height=220,
                        elem_id="dataset-gallery")
    table = gr.Dataframe(headers=COLUMNS, datatype=["str", "str", "str"], interactive=True, column_count=3,
                         static_columns=[0, 2], label="Captions: edit the caption column, then save; click a row to "
                         "pick its image", elem_id="caption-table", wrap=True, column_widths=["30%", "55%", "15%"])
    with gr.Row():
        save = gr.Button("Save captions", elem_id="save-captions")
        find = gr.Textbox(label="Find")
        replace = gr.Textbox(label="Replace with")
        regex = gr.Checkbox(False, label="Regular expression")
        apply_replace = gr.Button("Replace in all captions")
    with gr.Row(equal_height=True):
        picked = gr.Textbox(label="Picked image", interactive=False, elem_id="picked-image", scale=3)
        delete = gr.Button("Delete it", variant="stop", elem_id="delete-image", scale=1)
        crop = gr.Button("Crop it to a centred square", elem_id="crop-image", scale=1)
    with gr.Accordion("Paint a mask for the picked image (masked training looks only where you paint)", open=False):
        painter = gr.ImageEditor(type="pil", label="Paint over what matters", elem_id="mask-painter", height=360,
                                 brush=gr.Brush(colors=["#ffffff"], color_mode="fixed"))
        save_mask_btn = gr.Button("Save the mask", elem_id="save-mask")

    with gr.Accordion("ControlNet condition pictures (a-condlabel.png beside a.png)", open=False):
        with gr.Row():
            detector = gr.Dropdown(list(DETECTORS), value=DETECTORS[0], label="Compute from each picture",
                                   elem_id="condition-detector")
            depth_model = gr.Textbox(DEFAULT_DEPTH_MODEL, label="Depth model (transformers; tiny-depth offline)")
            redo_conditions = gr.Checkbox(False, label="Replace condition pictures that exist")
        conditions_btn = gr.Button("Compute condition pictures", elem_id="compute-conditions")

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
    def folder_of(name: str, request: Any, *, create: bool = False) -> Any:
        return workspace_of(ctx, request).dataset_folder(name, create=create)

    def show(name: str, request: gr.Request = None) -> list[Any]:
        """Layout line, thumbnails (each mask and condition picture beside its image) and the caption table."""
        try:
            images, description = dataset_images(folder_of(name, request))
        except DatasetError:
            return ["", [], [["", "", ""]]]
        items: list[tuple[str, str]] = []
        for image in images[:MAX_THUMBNAILS]:
            items.append((str(image.path), image.name))
            if image.mask is not None:
                items.append((str(image.mask), f"mask of {image.name}"))
            if image.condition is not None:
                items.append((str(image.condition), f"condition of {image.name}"))
        rows = [[image.name, image.caption, image.mask_name] for image in images]
        line = f"Layout: {escape_markdown(description)}" if description else ""
        return [line, items, rows or [["", "", ""]]]

    def listing(root: Any, request: Any) -> tuple[Any, str]:
        """An update of the dataset list selecting `root`, and its name."""
        workspace = workspace_of(ctx, request)
        name = workspace.dataset_name(root) or root.name
        return gr.update(choices=workspace.dataset_names(), value=name), name

    def on_page_load(name: str, request: gr.Request = None) -> list[Any]:
        # The choices were fixed when the app started: list today's datasets, keep the selection if it exists.
        names = workspace_of(ctx, request).dataset_names()
        if name in names or not names:
            return [gr.update(choices=names), *show(name, request)]
        return [gr.update(choices=names, value=names[0]), *show(names[0], request)]

    @user_errors
    def on_example(request: gr.Request = None) -> list[Any]:
        root = app_ops.load_example(workspace_of(ctx, request).datasets_dir)
        count = len(dataset_images(root)[0])
        update, name = listing(root, request)
        return [update, f"Example dataset ready: {count} images with captions in {root.name}.", *show(name, request)]

    @user_errors
    def on_add(name: str, files: list[str] | None, local: str, request: gr.Request = None) -> list[Any]:
        try:
            target = folder_of(name, request, create=True)
            root, result = app_ops.ingest_into(target.parent, target.name, files or [], local_folder=local,
                                               allow_local_paths=options.allow_local_paths)
        finally:
            discard_upload(ctx, files or [])  # kept or refused, the uploaded copies are not needed any more
        update, name = listing(root, request)
        return [update, workspace_of(ctx, request).shown(result.to_text()), *show(name, request)]

    @user_errors
    def on_hub(name: str, repo_id: str, split: str, most: float, request: gr.Request = None) -> list[Any]:
        if not getattr(options, "hub_import", True):
            raise DatasetError("This public app does not import Hub datasets (its owner can allow it with "
                               "--allow-hub-import); upload the images or a zip instead.")
        root = folder_of(name, request, create=True)
        result = import_hub_dataset(root, repo_id or "", split=split or "train", max_images=int(most or 0) or None,
                                    public=options.public)
        update, name = listing(root, request)
        return [update, workspace_of(ctx, request).shown(result.to_text()), *show(name, request)]

    @user_errors
    def on_caption(name: str, model: str, trigger_word: str, pre: str, post: str, redo: bool,
                   request: gr.Request = None) -> Any:
        from sdtune_ui.caption import caption_folder, unload_captioners

        root = folder_of(name, request)

        def work(job: Any) -> Any:
            app_ops.release_generation_memory()
            try:
                return caption_folder(root, model, trigger=trigger_word.strip() or None, prefix=pre, suffix=post,
                                      overwrite=redo, progress=lambda k, n: job.report(k, n, "image"),
                                      cancel=lambda: job.cancelled)
            finally:
                unload_captioners()  # give the GPU memory back before the next training run

        for item in wait_in_queue(ctx.jobs, f"Captioning {root.name}", work, request=request, takes_job=True):
            if isinstance(item, tuple):
                yield [workspace_of(ctx, request).shown(item[1].to_text()), *show(name, request)]
            else:
                yield [item, *[gr.skip()] * len(shown)]

    @user_errors
    def on_conditions(name: str, kind: str, model: str, redo: bool, request: gr.Request = None) -> Any:
        from sdtune_ui.data.conditions import write_conditions

        root = folder_of(name, request)
        if getattr(options, "public", False) and model.strip() not in ("", DEFAULT_DEPTH_MODEL, TINY_DEPTH):
            raise SdtuneError(f"This app is public: depth comes from {DEFAULT_DEPTH_MODEL} only.")

        def work(job: Any) -> Any:
            app_ops.release_generation_memory()
            return write_conditions(root, kind, depth_model=model.strip() or DEFAULT_DEPTH_MODEL, overwrite=redo,
                                    progress=lambda k, n: job.report(k, n, "image"))

        for item in wait_in_queue(ctx.jobs, f"Condition pictures for {root.name}", work, request=request,
                                  takes_job=True):
            if isinstance(item, tuple):
                result = item[1]
                failed = f"; {len(result.failed)} failed: {', '.join(result.failed[:3])}" if result.failed else ""
                yield [f"Wrote {len(result.written)} {kind} condition picture(s), kept {len(result.kept)}{failed}.",
                       *show(name, request)]
            else:
                yield [item, *[gr.skip()] * len(shown)]

    @user_errors
    def on_save(name: str, rows: Any, request: gr.Request = None) -> list[Any]:
        root = folder_of(name, request)
        values = rows.values.tolist() if hasattr(rows, "values") else rows
        images, _ = dataset_images(root)
        was = {image.name: image.caption for image in images}
        # Only what differs from the folder is written: a kohya image showing its folder's prompt gets no file.
        edits = {str(row[0]): str(row[1] or "") for row in values if row and row[0] in was and row[1] != was[row[0]]}
        save_captions(root, edits, layout=_layout(root))
        return [f"Saved {len(edits)} changed caption(s).", *show(name, request)]

    @user_errors
    def on_replace(name: str, old: str, new: str, is_regex: bool, request: gr.Request = None) -> list[Any]:
        changed = edit_captions(folder_of(name, request), find=old, replace=new, regex=is_regex)
        return [f"Changed {len(changed)} caption(s).", *show(name, request)]

    def on_pick(name: str, rows: Any, event: gr.SelectData, request: gr.Request = None) -> list[Any]:
        row = event.index[0] if isinstance(event.index, (list, tuple)) else event.index
        values = rows.values.tolist() if hasattr(rows, "values") else rows
        if row is None or row >= len(values) or not values[row][0]:
            return [gr.skip(), gr.skip()]
        file = str(values[row][0])
        try:
            return [file, str(folder_of(name, request) / file)]  # the painter starts from the picked image
        except DatasetError:
            return [file, gr.skip()]

    @user_errors
    def on_delete(name: str, file: str, request: gr.Request = None) -> list[Any]:
        if not file:
            raise SdtuneError("Click a row of the table first to pick the image to delete.")
        delete_images(folder_of(name, request), [file])
        return [f"Deleted {file} (with its caption files and mask).", "", *show(name, request)]

    @user_errors
    def on_crop(name: str, file: str, request: gr.Request = None) -> list[Any]:
        if not file:
            raise SdtuneError("Click a row of the table first to pick the image to crop.")
        width, height = crop_square(folder_of(name, request), file)
        return [f"Cropped {file} to {width}x{height}.", *show(name, request)]

    @user_errors
    def on_mask(name: str, file: str, painted: dict | None, request: gr.Request = None) -> list[Any]:
        if not file:
            raise SdtuneError("Click a row of the table first to pick the image to mask.")
        layers = (painted or {}).get("layers") or []
        target = save_mask(folder_of(name, request), file, layers[0] if layers else None)
        return [f"Saved the mask {target.name} beside {file}.", *show(name, request)]

    @user_errors
    def on_zip(name: str, request: gr.Request = None) -> str:
        return str(app_ops.zip_dataset(folder_of(name, request), workspace_of(ctx, request).exports_dir))

    @user_errors
    def on_push(name: str, repo_id: str, hf_token: str, is_private: bool, request: gr.Request = None) -> str:
        from sdtune_ui.data.hub import push_dataset_to_hub

        if not hf_token.strip():
            raise SdtuneError("Paste a Hugging Face token with write access to push.")
        url = push_dataset_to_hub(folder_of(name, request), repo_id.strip(), token=hf_token.strip(),
                                  private=is_private)
        return f"Pushed to {url}"

    # ---------------------------------------------------------------- wiring
    shown = [layout, thumbs, table]
    made_out = [dataset, report, *shown]
    loaded = example.click(on_example, None, made_out, api_name="load_example")
    added = add.click(on_add, [dataset, uploads, folder], made_out, api_name="add_images")
    keep_on_failure(added, made_out)
    added.then(lambda: None, None, uploads, api_visibility="private")  # handled, kept or not: removed (on_add)
    imported = hub_go.click(on_hub, [dataset, hub_repo, hub_split, hub_max], made_out, api_name="import_hub_dataset")
    keep_on_failure(imported, made_out)
    dataset.change(show, dataset, shown, show_progress="hidden", api_visibility="private")
    doctor.wire(shown)
    keep_on_failure(caption_btn.click(on_caption, [dataset, captioner, trigger, prefix, suffix, overwrite],
                                      [report, *shown], api_name="caption", concurrency_limit=None), [report, *shown])
    keep_on_failure(save.click(on_save, [dataset, table], [report, *shown], api_name="save_captions"),
                    [report, *shown])
    keep_on_failure(apply_replace.click(on_replace, [dataset, find, replace, regex], [report, *shown],
                                        api_name="replace"), [report, *shown])
    table.select(on_pick, [dataset, table], [picked, painter], api_visibility="private")
    keep_on_failure(delete.click(on_delete, [dataset, picked], [report, picked, *shown], api_name="delete_image"),
                    [report, picked, *shown])
    keep_on_failure(crop.click(on_crop, [dataset, picked], [report, *shown], api_visibility="private"),
                    [report, *shown])
    keep_on_failure(save_mask_btn.click(on_mask, [dataset, picked, painter], [report, *shown],
                                        api_visibility="private"), [report, *shown])
    keep_on_failure(conditions_btn.click(on_conditions, [dataset, detector, depth_model, redo_conditions],
                                         [report, *shown], api_name="conditions", concurrency_limit=None),
                    [report, *shown])
    keep_on_failure(export_zip.click(on_zip, dataset, export_file, api_name="export_zip"), [export_file])
    keep_on_failure(push.click(on_push, [dataset, repo, token, private], report, api_visibility="private"), [report])
    return DatasetTab(dataset, shown, on_page_load, [loaded, added, imported])


def _layout(root: Any) -> str:
    from sdtune_ui.data.layouts import scan_dataset

    return scan_dataset(root, strict=False).layout
