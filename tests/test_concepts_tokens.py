"""Textual inversion and pivotal tuning with several concepts: one token per concept, saved as one standard
single-token embedding file each, which diffusers, our generation and the A1111 export all load."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from sdtune_ui.config import TrainConfig
from sdtune_ui.export.formats import export_run
from sdtune_ui.generate.artifacts import artifacts_in_folder
from sdtune_ui.methods.outputs import EMBEDDING
from sdtune_ui.methods.textual_inversion import check_token_settings
from sdtune_ui.models import load_pipeline
from tests.concept_helpers import two_subjects
from tests.generate_helpers import one_torch_thread  # noqa: F401 - autouse: one torch thread
from tests.train_helpers import generate_latents, quick_config, run_training


@pytest.mark.parametrize("method", ["textual_inversion", "pivotal"])
def test_each_concept_gets_a_token_saved_as_its_own_embedding_file(method, tmp_path):
    root = two_subjects(tmp_path / "two", tokens=False)  # tokens <robot>, <square>, from their class words
    run = run_training(quick_config(root, method=method, learning_rate=5e-2, max_train_steps=2,
                                    validation_inference_steps=2), tmp_path / "run")
    config = run.config()
    assert config["concept_tokens"] == ["<robot>=robot", "<square>=square"]
    assert config["placeholder_token"] == "<robot>"
    assert {e["prompt"] for e in run.read_events() if e["kind"] == "sample"} == {"a photo of <robot>",
                                                                                   "a photo of <square>"}

    files = {"<robot>": run.output_dir / "learned_embeds.safetensors",
             "<square>": run.output_dir / "learned_embeds-square.safetensors"}
    for token, path in files.items():
        with safe_open(str(path), framework="pt") as handle:
            assert handle.metadata()["token"] == token and list(handle.keys()) == [token]
        assert load_file(path)[token].shape == (1, 32)  # one vector of the tiny text encoder's width
    assert not torch.equal(load_file(files["<robot>"])["<robot>"], load_file(files["<square>"])["<square>"])

    # diffusers loads each file by itself, the token read from the file
    pipe = load_pipeline("tiny-sd1")
    if method == "pivotal":
        pipe.load_lora_weights(run.output_dir)
    for path in files.values():
        pipe.load_textual_inversion(path)
    assert generate_latents(pipe, "a photo of <robot>", steps=2).shape == generate_latents(
        pipe, "a photo of <square>", steps=2).shape
    assert not torch.allclose(generate_latents(pipe, "a photo of <robot>", steps=2),
                              generate_latents(pipe, "a photo of <square>", steps=2))

    # generation finds both, each with its token; the A1111 export names each file by its token
    found = [a for a in artifacts_in_folder(run.output_dir, config) if a.kind == EMBEDDING]
    assert [(a.token, a.path) for a in found] == [(token, str(path)) for token, path in files.items()]
    written = export_run(run.path, "a1111", tmp_path / "a1111", model_card=False)
    assert {p.name for p in written} >= {"robot.safetensors", "square.safetensors"}


def test_placeholder_checks_cover_every_concept_token():
    errors: dict[str, str] = {}
    check_token_settings(TrainConfig(method="textual_inversion", concept_tokens=["<a>=dog", "<b>=cat"],
                                     validation_prompts=["a photo of <b>", "a photo of a dog"]), errors)
    assert errors == {"validation_prompts": "Validation prompt 'a photo of a dog' does not contain <a> or <b>."}
    errors = {}
    check_token_settings(TrainConfig(method="textual_inversion", concept_tokens=["<a>", "two words"]), errors)
    assert "without spaces" in errors["concept_tokens"]
