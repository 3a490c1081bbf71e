"""The Dataset tab's doctor section: check the selected dataset for a method (duplicates, sizes, captions,
trigger words, buckets, concepts, masks, recommended steps); the report lands in this section."""

from __future__ import annotations

from typing import Any

import gradio as gr

from sdtune_ui.config import bound_message
from sdtune_ui.errors import ConfigError
from sdtune_ui.ui.common import errors_for, keep_on_failure, workspace_of


class DoctorSection:
    def __init__(self, ctx: Any, dataset: gr.Dropdown, methods: list[tuple[str, str]], default_method: str):
        self.ctx, self.dataset = ctx, dataset
        with gr.Accordion("Dataset doctor", open=False, elem_id="doctor-fold"):
            with gr.Row():
                self.method = gr.Dropdown(methods, value=default_method, label="Method", elem_id="doctor-method")
                self.resolution = gr.Number(512, precision=0, label="Resolution")
                self.trigger = gr.Textbox(label="Trigger word (optional)", info="e.g. sks, or <sks> for textual "
                                          "inversion: the doctor checks that captions use it")
                self.instance_prompt = gr.Textbox(label="Instance prompt (optional)", elem_id="doctor-instance-prompt",
                                                  info="e.g. 'a photo of sks dog': every image trains on it, "
                                                  "so captions are not needed")
                self.bucketing = gr.Checkbox(False, label="Aspect bucketing")
            self.go = gr.Button("Check the dataset", elem_id="doctor-check")
            self.report = gr.Textbox(label="Doctor's report", lines=12, elem_id="doctor-report")

    def wire(self, shown: list[Any]) -> None:
        ctx = self.ctx
        user_errors = errors_for(ctx)

        @user_errors
        def on_doctor(name: str, method: str, resolution: float, trigger_word: str, instance: str,
                      bucketing: bool, request: gr.Request = None) -> str:
            from sdtune_ui.data.doctor import diagnose

            workspace = workspace_of(ctx, request)
            folder = workspace.dataset_folder(name)
            problem = bound_message(resolution or 512, 64, 4096)
            if problem:
                raise ConfigError({"resolution": problem})
            report = diagnose(folder, method=method, resolution=int(resolution or 512),
                              trigger=(trigger_word or "").strip() or None,
                              instance_prompt=(instance or "").strip() or None, bucketing=bool(bucketing))
            return workspace.shown(report.to_text())

        inputs = [self.dataset, self.method, self.resolution, self.trigger, self.instance_prompt, self.bucketing]
        keep_on_failure(self.go.click(on_doctor, inputs, self.report, api_name="doctor"), [self.report])


def build(ctx: Any, dataset: gr.Dropdown, methods: list[tuple[str, str]], default_method: str) -> DoctorSection:
    return DoctorSection(ctx, dataset, methods, default_method)
