"""Export formats load back and give the same images; the model card says the right things; a push
uploads the expected files and the token appears in no log line, file, card or error message."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from generate_helpers import (
    EXAMPLE_DATASET,
    one_torch_thread,  # noqa: F401 - autouse fixture (one torch thread)
    pixels,
    trained_run,
)
from huggingface_hub import ModelCard
from safetensors import safe_open

from sdtune_ui.errors import SdtuneError
from sdtune_ui.export.formats import export_run, push_folder, push_run, scrub, zip_export
from sdtune_ui.export.kohya import read_lora_file
from sdtune_ui.generate.artifacts import artifact_from_spec, run_artifacts
from sdtune_ui.generate.engine import GenerationEngine, _normalise_lora
from sdtune_ui.generate.options import GenerationOptions
from sdtune_ui.models import load_pipeline, tiny_model_path

TOKEN = "hf_FAKEtoken1234567890abcdefSECRET"


def render(pipe, prompt: str = "a photo of sks robot") -> np.ndarray:
    generator = torch.Generator().manual_seed(0)
    return pipe(prompt, num_inference_steps=3, height=32, width=32, generator=generator, output_type="np").images


def test_kohya_lora_loads_back_with_the_same_images(tmp_path):
    run = trained_run("lora")   # all layer types, text-encoder LoRA, alpha 8 at rank 4
    written = export_run(run, "kohya", tmp_path)
    kohya_file = tmp_path / f"{run.name}.safetensors"
    assert written[0] == kohya_file and written[-1] == tmp_path / "README.md"
    state, metadata = read_lora_file(kohya_file)
    assert all(k.startswith(("lora_unet_", "lora_te_")) for k in state)
    assert any(k.startswith("lora_te_text_model_encoder_layers_0_self_attn_q_proj") for k in state)
    assert "lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight" in state
    alphas = {k: float(v) for k, v in state.items() if k.endswith(".alpha")}
    assert alphas and set(alphas.values()) == {8.0}
    assert len(alphas) * 2 + len(alphas) == len(state)           # down, up and alpha per module
    assert metadata["ss_network_dim"] == "4" and metadata["ss_network_alpha"] == "8.0"

    # diffusers' own loader reads the kohya file; the diffusers file goes through the engine's loading
    # (with its alpha scale). Both must give the same images.
    pipe = load_pipeline("tiny-sd1")
    pipe.set_progress_bar_config(disable=True)
    lora = run_artifacts(run).artifacts[0]

    pipe.load_lora_weights(str(lora.path), adapter_name="diffusers_file")  # alpha read from its metadata
    assert lora.alpha_factor == 1.0
    expected = render(pipe)
    pipe.delete_adapters("diffusers_file")
    base = render(pipe)
    pipe.load_lora_weights(str(kohya_file), adapter_name="kohya_file")
    got = render(pipe)
    assert np.abs(expected - base).max() > 0.05
    assert np.abs(got - expected).max() < 1e-4   # same weights, same scale: equal up to float rounding

    # The engine takes a kohya file from the user like any LoRA, and agrees with the run's own artifact.
    engine = GenerationEngine(device="cpu")
    options = GenerationOptions(prompt="a photo of sks robot", steps=3, width=32, height=32, seed=0)
    from_run = engine.generate("tiny-sd1", [lora], options)
    from_kohya = engine.generate("tiny-sd1", [artifact_from_spec(str(kohya_file))], options)
    assert np.abs(pixels(from_run) - pixels(from_kohya)).max() <= 1


def test_sdxl_kohya_uses_original_block_names_and_loads_back(tmp_path):
    run = trained_run("sdxl_pivotal")
    export_run(run, "kohya", tmp_path)
    kohya_file = tmp_path / f"{run.name}.safetensors"
    state, metadata = read_lora_file(kohya_file)
    assert metadata["ss_base_model_version"] == "sdxl_base_v1-0"
    assert any(k.startswith("lora_unet_input_blocks_") for k in state)
    assert not any(k.startswith("lora_unet_down_blocks") for k in state)
    assert (tmp_path / "sks.safetensors").exists()   # the embedding, A1111 style, beside the LoRA

    pipe = load_pipeline("tiny-sdxl")
    pipe.set_progress_bar_config(disable=True)
    from safetensors.torch import load_file

    pipe.load_lora_weights(_normalise_lora(load_file(run / "output" / "pytorch_lora_weights.safetensors")),
                           adapter_name="d")
    expected = render(pipe, "a photo of a robot")
    pipe.delete_adapters("d")
    pipe.load_lora_weights(str(kohya_file), adapter_name="k")
    assert np.abs(render(pipe, "a photo of a robot") - expected).max() < 1e-4


def test_a1111_embedding_gives_the_same_images(tmp_path):
    run = trained_run("textual_inversion")
    export_run(run, "a1111", tmp_path)
    a1111 = tmp_path / "sks.safetensors"     # A1111 names an embedding after its file: "sks" in the prompt
    with safe_open(str(a1111), "pt") as handle:
        assert list(handle.keys()) == ["emb_params"] and handle.get_tensor("emb_params").shape == (1, 32)
    pipe = load_pipeline("tiny-sd1")
    pipe.set_progress_bar_config(disable=True)
    pipe.load_textual_inversion(str(run / "output" / "learned_embeds.safetensors"), token="<sks>")
    pipe.load_textual_inversion(str(a1111), token="<a1111>")
    assert np.abs(render(pipe, "a photo of <sks>") - render(pipe, "a photo of <a1111>")).max() == 0


def test_a1111_pickle_embedding_needs_permission(tmp_path):
    from sdtune_ui.errors import ModelLoadError

    learned = run_artifacts(trained_run("textual_inversion")).artifacts[0]
    vector = next(iter(load_file_dict(learned.path).values()))
    legacy = tmp_path / "oldstyle.pt"   # the A1111 .pt layout (a pickle)
    torch.save({"string_to_param": {"*": vector}, "name": "oldstyle", "step": 100}, legacy)
    with pytest.raises(ModelLoadError, match="pickle"):
        artifact_from_spec(str(legacy))
    artifact = artifact_from_spec(str(legacy), allow_pickle=True)
    assert artifact.kind == "embedding" and artifact.token == "oldstyle"
    engine = GenerationEngine(device="cpu")
    options = GenerationOptions(prompt="a photo of oldstyle", steps=2, width=32, height=32)
    assert engine.generate("tiny-sd1", [artifact], options, allow_pickle=True).tokens == ["oldstyle"]


def load_file_dict(path: str) -> dict:
    from safetensors.torch import load_file

    return load_file(path)


def test_sdxl_embedding_keeps_both_encoders(tmp_path):
    export_run(trained_run("sdxl_pivotal"), "a1111", tmp_path)
    with safe_open(str(tmp_path / "sks.safetensors"), "pt") as handle:
        assert sorted(handle.keys()) == ["clip_g", "clip_l"]


def test_single_file_checkpoint_of_a_full_finetune(tmp_path):
    from diffusers import StableDiffusionPipeline

    run = trained_run("full")
    written = export_run(run, "single-file", tmp_path)
    single = tmp_path / f"{run.name}.safetensors"
    assert written[0] == single
    with safe_open(str(single), "pt") as handle:
        keys = set(handle.keys())
    assert "model.diffusion_model.input_blocks.0.0.weight" in keys
    assert "first_stage_model.decoder.up.0.block.0.conv1.weight" in keys
    assert "cond_stage_model.transformer.text_model.final_layer_norm.weight" in keys
    tuned = load_pipeline(str(run / "output"))
    back = StableDiffusionPipeline.from_single_file(str(single), config=str(run / "output"), local_files_only=True)
    for name in ("unet", "vae", "text_encoder"):
        mine, theirs = getattr(tuned, name).state_dict(), getattr(back, name).state_dict()
        assert mine.keys() == theirs.keys()
        assert all(torch.equal(mine[k], theirs[k]) for k in mine), name


@pytest.mark.parametrize("model", ["tiny-sd2-v", "tiny-sdxl"])
def test_single_file_layout_for_sd2_and_sdxl(tmp_path, model):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint
    from safetensors.torch import load_file

    from sdtune_ui.export.single_file import save_single_file, transformers_clip_state

    pipe = load_pipeline(model)
    path = save_single_file(pipe, tmp_path / "model.safetensors")
    cls = StableDiffusionXLPipeline if model == "tiny-sdxl" else StableDiffusionPipeline
    back = cls.from_single_file(str(path), config=str(tiny_model_path(model)), local_files_only=True)
    for name in ("unet", "vae", "text_encoder"):
        mine, theirs = getattr(pipe, name).state_dict(), getattr(back, name).state_dict()
        assert all(torch.equal(mine[k], theirs[k]) for k in mine), name
    if model == "tiny-sdxl":
        # diffusers picks the second encoder by width, which both tiny encoders share: check its layout directly.
        converted = convert_open_clip_checkpoint(pipe.text_encoder_2, load_file(str(path)),
                                                 prefix="conditioner.embedders.1.model.")
        mine = transformers_clip_state(pipe.text_encoder_2)
        assert mine.keys() == converted.keys() and all(torch.equal(mine[k], converted[k]) for k in mine)


def test_formats_that_do_not_apply_say_what_to_do(tmp_path):
    with pytest.raises(SdtuneError, match="kohya"):
        export_run(trained_run("lora"), "single-file", tmp_path)
    with pytest.raises(SdtuneError, match="LoRA runs"):
        export_run(trained_run("textual_inversion"), "kohya", tmp_path)
    with pytest.raises(SdtuneError, match="choose one of"):
        export_run(trained_run("lora"), "ckpt", tmp_path)


def test_model_card(tmp_path):
    run = trained_run("lora")
    export_run(run, "diffusers", tmp_path, repo_id="me/robot-lora")
    card = ModelCard.load(tmp_path / "README.md")
    data = card.data.to_dict()
    assert data["base_model"] == "tiny-sd1"
    assert {"text-to-image", "diffusers", "lora", "stable-diffusion"} <= set(data["tags"])
    assert data["instance_prompt"] == "a photo of sks robot"
    assert data["widget"][0]["text"] == "a photo of sks robot"
    assert (tmp_path / data["widget"][0]["output"]["url"]).exists()     # the sample is in the folder
    text = card.text
    assert "## Trigger words" in text and "`a photo of sks robot`" in text
    assert '"me/robot-lora", weight_name="pytorch_lora_weights.safetensors"' in text
    assert "| rank | 4 |" in text and "| lora_alpha | 8 |" in text and "| learning_rate | 0.01 |" in text
    assert str(EXAMPLE_DATASET.parent) not in card.content        # no local paths on a public card

    ti = tmp_path / "ti"
    export_run(trained_run("textual_inversion"), "diffusers", ti)
    ti_card = ModelCard.load(ti / "README.md")
    assert "textual_inversion" in ti_card.data.tags and ti_card.data.to_dict()["instance_prompt"] == "<sks>"
    full = tmp_path / "full"
    export_run(trained_run("full"), "diffusers", full)
    assert (full / "model_index.json").exists() and (full / "unet").is_dir()
    assert 'from_pretrained("path/to/this/folder"' in (full / "README.md").read_text()
    xl = tmp_path / "xl"
    export_run(trained_run("sdxl_pivotal"), "diffusers", xl)
    assert "stable-diffusion-xl" in ModelCard.load(xl / "README.md").data.tags


class FakeApi:
    """Records what a push does, and what the folder held at upload time."""

    def __init__(self, token: str, fail: Exception | None = None):
        self.token = token
        self.fail = fail
        self.calls: list[tuple[str, dict]] = []
        self.uploaded: dict[str, bytes] = {}

    def create_repo(self, **kwargs):
        self.calls.append(("create_repo", kwargs))
        if self.fail:
            raise self.fail

    def upload_folder(self, **kwargs):
        self.calls.append(("upload_folder", kwargs))
        root = Path(kwargs["folder_path"])
        self.uploaded = {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_push_uploads_the_export_and_never_leaks_the_token(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    apis: list[FakeApi] = []

    def factory(token: str) -> FakeApi:
        apis.append(FakeApi(token))
        return apis[-1]

    url = push_run(trained_run("pivotal"), "me/robot", token=TOKEN, private=True, api_factory=factory)
    assert url == "https://huggingface.co/me/robot"
    api = apis[0]
    assert api.token == TOKEN
    assert [name for name, _ in api.calls] == ["create_repo", "upload_folder"]
    assert api.calls[0][1] == {"repo_id": "me/robot", "repo_type": "model", "private": True, "exist_ok": True}
    assert {"README.md", "pytorch_lora_weights.safetensors", "learned_embeds.safetensors"} <= set(api.uploaded)
    assert "me/robot" in api.uploaded["README.md"].decode()
    for name, content in api.uploaded.items():
        assert TOKEN.encode() not in content, name
    assert all(TOKEN not in record.getMessage() for record in caplog.records)
    assert any("me/robot" in record.getMessage() for record in caplog.records)


def test_push_errors_are_scrubbed(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    (tmp_path / "README.md").write_text("card")

    def failing(token: str) -> FakeApi:
        return FakeApi(token, fail=RuntimeError(f"401 Unauthorized for token {token} (also hf_OTHERtoken999999)"))

    with pytest.raises(SdtuneError) as info:
        push_folder(tmp_path, "me/robot", token=TOKEN, api_factory=failing)
    message = str(info.value)
    assert TOKEN not in message and "hf_OTHERtoken999999" not in message and "401 Unauthorized" in message
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert all(TOKEN not in record.getMessage() for record in caplog.records)
    with pytest.raises(SdtuneError, match="token"):
        push_folder(tmp_path, "me/robot", token="  ", api_factory=failing)
    with pytest.raises(SdtuneError, match="repo id"):
        push_folder(tmp_path, "not a repo", token=TOKEN, api_factory=failing)
    assert scrub(f"x {TOKEN} y", TOKEN) == "x *** y"


def test_zip_export(tmp_path):
    written = export_run(trained_run("full"), "diffusers", tmp_path / "export")
    archive = zip_export(written, tmp_path / "export.zip")
    import zipfile

    names = zipfile.ZipFile(archive).namelist()
    assert "model_index.json" in names and "README.md" in names and any(n.startswith("unet/") for n in names)
