"""The Train tab's form behaviour: a method or dataset switch settles the form into settings that validate
(sdtune_ui.app.form_rules), the validation result is shown live before Start with the fields to change
highlighted, presets, the CPU demo (with the example dataset), loading a config or a copy of a run's settings.
A dataset of several concepts is listed under the form (each concept's prompt, token and class come from it);
`init_from` picks one of this app's runs to continue, refreshed whenever the picker is opened."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gradio as gr

from sdtune_ui.app import ops as app_ops
from sdtune_ui.app import public_rules
from sdtune_ui.app.form_rules import dataset_hints, init_from_choices, settle, validation_report
from sdtune_ui.app.text import code, error_markdown, escape_html, escape_markdown
from sdtune_ui.config import TrainConfig
from sdtune_ui.errors import ConfigError
from sdtune_ui.methods import method_named, method_names
from sdtune_ui.presets import family_memory_preset, preset_switch_values, preset_values
from sdtune_ui.runs import RunDir
from sdtune_ui.ui.common import discard_upload, errors_for, workspace_of
from sdtune_ui.ui.form import Form

INVALID = "field-invalid"  # CSS class of a widget whose value does not validate (ui/app.py styles it)
USER_CHOSE = "user"        # `filled` marker: the values came from the user (a loaded config), keep them


def settings_rows(run_path: Path, shown: Callable[[str], str] = str) -> list[list[str]]:
    """A run's settings for people: what it trains, on what, how long and how fast, then everything not at its
    default (`shown`: the texts as the viewer may see them, e.g. the dataset's folder relative to the workspace).
    The first rows are the ones a long table would scroll out of sight."""
    config = RunDir(run_path).config()
    if not config:
        return []
    defaults = dataclasses.asdict(TrainConfig())
    first = ("model", "method", "data", "max_train_steps", "learning_rate")
    rows = [[name, shown(_shown(config.get(name)))] for name in first if name in config]
    for name, value in config.items():
        if name in first or name not in defaults or value == defaults[name]:
            continue
        rows.append([name, shown(_shown(value))])
    return rows


def _shown(value: Any) -> str:
    return "\n".join(map(str, value)) if isinstance(value, list) else str(value)


def _label(method: str) -> str:
    return method_named(method).label if method in method_names() else method


def ready_text(config: TrainConfig) -> str:
    data = Path(config.data).name or config.data
    return (f"**Ready to start:** {escape_markdown(_label(config.method))} on {code(config.model)}, "
            f"{config.max_train_steps or f'{config.num_train_epochs} epoch(s)'} steps, dataset {code(data)}.")


def problems_text(errors: dict[str, str], method: str) -> str:
    count = len(errors)
    return (f"**{escape_markdown(_label(method))}: {count} setting{'s' if count > 1 else ''} to change before "
            "Start** (highlighted):\n\n" + error_markdown(ConfigError(errors)))


def wire(ctx: Any, options: Any, form: Form, *, notes: gr.Markdown, validation: gr.Markdown, vram: gr.Dropdown,
         use_presets: gr.Checkbox, demo: gr.Button, load: gr.UploadButton, edit_copy: gr.Button,
         watched: Any) -> dict[str, Any]:
    """Connect the form's events; returns the dataset-follow event's arguments (the Dataset tab triggers it).

    The form names datasets of the workspace by name; `with_folder` gives the values with the dataset's folder,
    as a run reads them."""
    user_errors = errors_for(ctx)
    fields = form.components
    data_widget = form.widgets["data"]
    filled = gr.State({})     # what the form derived by itself (may be derived again)
    method_now = gr.State(form.widgets["method"].value)
    invalid = gr.State([])    # fields highlighted now

    def checks_for(workspace: Any) -> Callable[[TrainConfig], None]:
        def check(config: TrainConfig) -> None:
            public_rules.check_workspace_rules(config, workspace, public=options.public)
            app_ops.check_model_available(config)
        return check

    def with_folder(values: dict[str, Any], request: Any) -> dict[str, Any]:
        return app_ops.dataset_by_name(values, workspace_of(ctx, request))

    def hints_of(values: dict[str, Any], request: Any) -> Any:
        return dataset_hints(str(with_folder(values, request).get("data") or ""))

    def changed(values: dict[str, Any], current: dict[str, Any]) -> dict[str, Any]:
        return {name: value for name, value in values.items() if current.get(name) != value}

    def notes_for(settled_notes: list[str], values: dict[str, Any], hints: Any) -> str:
        lines = [escape_markdown(note) for note in settled_notes]
        if hints.concepts:
            heading, *concepts = hints.concepts_note()
            lines.append(escape_markdown(heading) + "\n\n" + "\n".join(f"- {escape_markdown(c)}" for c in concepts))
        try:
            bucketing = bool(app_ops.config_from_values(values).bucketing)
        except ConfigError:
            bucketing = hints.bucketing
        if hints.images and bucketing == hints.bucketing:
            lines.append(escape_markdown(hints.bucketing_note()))
        elif hints.images:
            lines.append(f"Aspect bucketing is {'on' if bucketing else 'off'} as you chose (the dataset doctor "
                         f"recommends {'on' if hints.bucketing else 'off'} for this dataset).")
        return "\n\n".join(lines)

    def on_method(request: gr.Request, method: str, adapter: str, apply_presets: bool, memory: str, previous: str,
                  done: dict, *args: Any) -> list[Any]:
        current = form.values(args)
        # The memory preset is applied after the method's (and its adapter type's), so memory-saving settings win.
        presets = (preset_switch_values(previous, method, memory, adapter, current.get("model"))
                   if apply_presets else {})
        values = {**current, **app_ops.widget_values(presets), "method": method, "adapter": adapter}
        hints = hints_of(values, request)
        settled = settle(values, hints, previous_method=previous, filled=done)
        update = changed(settled.values, current)
        return [*form.updates(update, method, settled.values.get("adapter")), method, settled.filled,
                notes_for(settled.notes, settled.values, hints)]

    def on_data(request: gr.Request, done: dict, *args: Any) -> list[Any]:
        current = form.values(args)
        hints = hints_of(current, request)
        if done.get("bucketing") == USER_CHOSE:
            return [*[gr.skip()] * len(fields), {}, notes_for([], current, hints)]
        settled = settle(current, hints, filled=done, refill=True)
        update = {k: v for k, v in changed(settled.values, current).items() if k != "data"}
        return [*form.updates(update), settled.filled, notes_for(settled.notes, settled.values, hints)]

    def on_vram(memory: str, model: str, method: str) -> list[Any]:
        return form.updates(app_ops.widget_values(preset_values(vram=memory, model=model, method=method)))

    def on_model(memory: str, model: str, method: str) -> list[Any]:
        family_preset = family_memory_preset(model, memory, method) if memory else {}
        return form.updates(app_ops.widget_values(family_preset)) if family_preset else [gr.skip()] * len(fields)

    @user_errors
    def on_demo(request: gr.Request, previous: str, done: dict, *args: Any) -> list[Any]:
        current = form.values(args)
        workspace = workspace_of(ctx, request)
        example = app_ops.load_example(workspace.datasets_dir)
        demo = app_ops.demo_settings(str(current.get("method") or ""))  # the chosen method's demo, else LoRA's
        values = {**current, **app_ops.widget_values({**preset_values(vram="CPU"), **demo}), "data": example.name}
        hints = dataset_hints(str(example))
        settled = settle(values, hints, previous_method=previous, filled=done, refill=True)
        method = settled.values["method"]
        updates = form.updates(changed(settled.values, current), method, settled.values.get("adapter"))
        updates[form.names.index("data")] = gr.update(choices=workspace.dataset_names(), value=example.name)
        gr.Info(f"CPU demo settings: {app_ops.DEMO_SETTINGS['model']}, {escape_html(_label(method))}, the example "
                f"dataset {escape_html(example.name)}.")
        return [*updates, "CPU", method, settled.filled, notes_for(settled.notes, settled.values, hints)]

    def copy_of(config: TrainConfig, workspace: Any) -> list[Any]:
        values = app_ops.widget_values(config.to_dict())
        # A dataset and a run of the workspace by their names, as the form lists them (a run's config names folders).
        values["data"] = workspace.dataset_name(config.data) or config.data
        values["init_from"] = workspace.run_name(config.init_from) or config.init_from
        return [*form.updates(values, config.method, config.adapter), config.method, {"bucketing": USER_CHOSE}]

    @user_errors
    def on_load(file: str, request: gr.Request = None) -> list[Any]:
        try:
            return copy_of(TrainConfig.load(file), workspace_of(ctx, request))
        finally:
            discard_upload(ctx, file)

    @user_errors
    def on_edit_copy(run_id: str, request: gr.Request = None) -> list[Any]:
        workspace = workspace_of(ctx, request)
        run = app_ops.run_dir(workspace.runs_dir_of(run_id), run_id or "")
        gr.Info(f"The form now holds a copy of {escape_html(run_id)}'s settings; Start makes a new run.")
        return copy_of(TrainConfig.from_dict(run.config()), workspace)

    def on_validate(request: gr.Request, shown: list[str], *args: Any) -> list[Any]:
        values = with_folder(form.values(args), request)
        errors, config = validation_report(values, check=checks_for(workspace_of(ctx, request)))
        errors = {name: workspace_of(ctx, request).shown(message) for name, message in errors.items()}
        text = problems_text(errors, str(values.get("method", ""))) if errors else ready_text(config)
        bad = sorted(name for name in errors if name in form.widgets)
        updates = [gr.skip()] * len(fields)
        for index, name in enumerate(form.names):
            if (name in bad) != (name in shown):
                updates[index] = gr.update(elem_classes=[INVALID] if name in bad else [])
        return [text, bad, *updates]

    state_out = [method_now, filled, notes]
    method_inputs = [form.widgets["method"], form.widgets["adapter"], use_presets, vram, method_now, filled, *fields]
    for switch in (form.widgets["method"], form.widgets["adapter"]):
        # always_last: a switch made while the previous one is still settling is applied, not dropped.
        switch.input(on_method, method_inputs, [*fields, *state_out], show_progress="hidden",
                     trigger_mode="always_last")
    vram.input(on_vram, [vram, form.widgets["model"], form.widgets["method"]], fields, show_progress="hidden")
    # A model whose family has memory presets of its own (SD3.5, Flux.1) gets them for this GPU when picked.
    form.widgets["model"].input(on_model, [vram, form.widgets["model"], form.widgets["method"]], fields,
                                show_progress="hidden")
    demo.click(on_demo, [method_now, filled, *fields], [*fields, vram, *state_out], show_progress="hidden")
    load.upload(on_load, load, [*fields, method_now, filled])
    edit_copy.click(on_edit_copy, watched, [*fields, method_now, filled], api_visibility="private")
    follow = dict(fn=on_data, inputs=[filled, *fields], outputs=[*fields, filled, notes], show_progress="hidden",
                  api_visibility="private")
    data_widget.change(**follow)
    init_from = form.widgets["init_from"]
    def on_init_from_open(request: gr.Request = None) -> Any:
        return gr.update(choices=init_from_choices(workspace_of(ctx, request).run_roots()))

    init_from.focus(on_init_from_open, None, init_from, show_progress="hidden", api_visibility="private")
    validate = dict(fn=on_validate, inputs=[invalid, *fields], outputs=[validation, invalid, *fields],
                    show_progress="hidden", api_visibility="private")
    gr.on([w.change for w in fields], trigger_mode="always_last", **validate)
    return {"follow": follow, "validate": validate}
