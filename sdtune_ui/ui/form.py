"""The training form, generated from TrainConfig's fields: adding a setting there adds its widget here.

Widget kind follows the field: choices -> dropdown, bool -> checkbox, int/float -> number, list -> one
line per item, str -> text. A few fields get a richer widget (model list, dataset list, method radio, the
earlier runs to start from).
Fields marked `advanced` go into the "Advanced" fold; fields that need method traits show only for methods with them,
and an adapter type's own settings (LoKr's factor) only while that type is chosen.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import gradio as gr

from sdtune_ui.config import TrainConfig, field_info, setting_applies
from sdtune_ui.methods import method_named
from sdtune_ui.models import DEMO_MODELS, KNOWN_MODELS, TINY_MODELS
from sdtune_ui.ui.common import humanize

MIN_WIDTH = 300  # px: three settings per line on a laptop screen, one on a phone
SWITCH = "cfg-switch"
# Settings that name the server's files or load pickles: only where the app runs for its owner.
LOCAL_ONLY = frozenset({"allow_pickle", "class_data"})


@dataclass
class Form:
    widgets: dict[str, gr.components.Component]
    metadata: dict[str, dict]
    hidden: frozenset[str] = frozenset()  # never shown here (a public app's host paths and pickle switch)

    @property
    def names(self) -> list[str]:
        return list(self.widgets)

    @property
    def components(self) -> list[gr.components.Component]:
        return list(self.widgets.values())

    def values(self, args: tuple | list) -> dict[str, Any]:
        """Handler arguments (in `components` order) as a {field: value} dict."""
        return dict(zip(self.names, args, strict=True))

    def updates(self, values: dict[str, Any], method: str | None = None, adapter: str | None = None) -> list[Any]:
        """One update per widget: new values where given, visibility for `method` (and `adapter`) when given."""
        out = []
        for name in self.names:
            kwargs: dict[str, Any] = {}
            if name in values:
                kwargs["value"] = values[name]
            if method is not None:
                kwargs["visible"] = setting_applies(name, method, adapter) and name not in self.hidden
            out.append(gr.update(**kwargs) if kwargs else gr.skip())
        return out


def model_choices() -> list[tuple[str, str]]:
    demo = [(f"{name} (offline demo model: draws toy robots, cats, houses...)", name) for name in DEMO_MODELS]
    tiny = [(f"{name} (offline, random weights: draws noise)", name) for name in TINY_MODELS]
    return demo + tiny + [(f"{label}: {name}", name) for name, label in KNOWN_MODELS.items()]


def _widget(f: dataclasses.Field, value: Any, *, visible: bool, datasets: list[tuple[str, str]],
            runs: list[tuple[str, str]], allow_local_paths: bool) -> gr.components.Component:
    label, info = humanize(f.name), f.metadata.get("help", "")
    common = dict(label=label, info=info, visible=visible, elem_id=f"cfg-{f.name}", min_width=MIN_WIDTH)
    if f.name == "model":
        return gr.Dropdown(choices=model_choices(), value=value, allow_custom_value=True,
                           **{**common, "info": info + " Type any Hub id (user/name) too."})
    if f.name == "method":
        # The registry's labels ("Textual inversion"); the value stays the method's name.
        return gr.Radio(choices=[(method_named(name).label, name) for name in f.metadata["choices"]], value=value,
                        **common)
    if f.name == "data":
        # Local runs may point at any folder or Hub dataset; a public app only offers its own datasets.
        return gr.Dropdown(choices=datasets, value=value or None, allow_custom_value=allow_local_paths, **common)
    if f.name == "init_from":
        # This app's runs (outputs and checkpoints); local apps also take any LoRA / embedding / pipeline path.
        return gr.Dropdown(choices=runs, value=value, allow_custom_value=allow_local_paths, **common)
    if f.metadata.get("choices"):
        return gr.Dropdown(choices=list(f.metadata["choices"]), value=value, **common)
    if isinstance(value, bool):
        # Gradio drops a checkbox's min_width: the "switch" class gives it the others' width (ui/app.py CSS),
        # so its label is not cut off between wider widgets.
        return gr.Checkbox(value=value, elem_classes=[SWITCH], **common)
    if isinstance(value, int):
        return gr.Number(value=value, precision=0, **common)
    if isinstance(value, float):
        return gr.Number(value=value, **common)
    if isinstance(value, list):
        return gr.Textbox(value="\n".join(value), lines=2, **{**common, "info": info + " One per line."})
    return gr.Textbox(value=value, **common)


def build_form(defaults: TrainConfig, *, datasets: list[tuple[str, str]], allow_local_paths: bool,
               runs: list[tuple[str, str]] | None = None) -> Form:
    """Create the widgets inside the current Blocks context: main settings, then an Advanced fold."""
    fields = field_info()
    metadata = {f.name: dict(f.metadata) for f in fields}
    values = dataclasses.asdict(defaults)
    hidden = frozenset() if allow_local_paths else LOCAL_ONLY
    widgets: dict[str, gr.components.Component] = {}

    def place(group: list[dataclasses.Field]) -> None:
        # One wrapping row: widgets hidden for the chosen method leave no holes, the rest reflow.
        with gr.Row():
            for f in group:
                widgets[f.name] = _widget(f, values[f.name], visible=f.name not in hidden and setting_applies(
                                              f.name, defaults.method, defaults.adapter),
                                          datasets=datasets, runs=runs or [("", "")],
                                          allow_local_paths=allow_local_paths)

    place([f for f in fields if not f.metadata.get("advanced")])
    with gr.Accordion("Advanced", open=False):
        place([f for f in fields if f.metadata.get("advanced")])
    # Keep the dataclass order so handler arguments line up with field_info().
    ordered = {f.name: widgets[f.name] for f in fields}
    return Form(ordered, metadata, hidden)
