"""SD3 and Flux results leave the app in the forms other tools load: the original (single-file / kohya) layout checked
against diffusers' own converters, kohya-format LoRAs that diffusers reads back to the same generation, exports with
a model card; and the app's generation engine applies them."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from sdtune_ui.config import TrainConfig
from sdtune_ui.export.formats import export_run
from sdtune_ui.families import family_named, model_parts
from sdtune_ui.generate.artifacts import run_artifacts
from sdtune_ui.generate.engine import GenerationEngine
from sdtune_ui.generate.options import GenerationOptions
from sdtune_ui.models import load_pipeline
from tests.flow_helpers import COMMON, METHOD_SETTINGS, one_torch_thread
from tests.train_helpers import INSTANCE_PROMPT, TI_PROMPT, run_training

__all__ = ["one_torch_thread"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, sdtune_home):
    """A Flux LoRA (transformer + CLIP), an SD3 pivotal run (LoRA + tokens) and an SD3 full fine-tune."""
    from sdtune_ui.examples import EXAMPLE_DATASET

    root = tmp_path_factory.mktemp("flow_runs")
    settings = {"flux_lora": ("tiny-flux", METHOD_SETTINGS["lora"]),
                "sd3_pivotal": ("tiny-sd3", dict(METHOD_SETTINGS["pivotal"], lora_targets="all",
                                                 train_text_encoder=True)),
                "sd3_full": ("tiny-sd3", METHOD_SETTINGS["full"])}
    return {name: run_training(TrainConfig(model=model, data=str(EXAMPLE_DATASET), **{**COMMON, **values}),
                               root / name) for name, (model, values) in settings.items()}


def test_sd3_single_file_transformer_loads_back_exactly_with_diffusers(tmp_path):
    pipe = load_pipeline("tiny-sd3")
    state = family_named("sd3").original_transformer_state(pipe.transformer)
    assert all(key.startswith("model.diffusion_model.") for key in state)
    file = tmp_path / "sd3_transformer.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(file))
    # A transformer-only file: the pipeline's other parts come from the config folder (offline: the tiny model).
    loaded = load_pipeline(str(file), single_file_config="tiny-sd3")
    assert type(loaded).__name__ == "StableDiffusion3Pipeline"
    ours, theirs = pipe.transformer.state_dict(), loaded.transformer.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_flux_original_layout_matches_diffusers_converter_at_full_width():
    """diffusers' Flux converter assumes Flux.1's width (3072), so this runs at that width on the meta device:
    names and shapes of every tensor make the round trip."""
    from diffusers import FluxTransformer2DModel
    from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers

    with torch.device("meta"):
        model = FluxTransformer2DModel(num_layers=1, num_single_layers=1, guidance_embeds=True)
    original = family_named("flux").original_transformer_state(model)
    assert "double_blocks.0.img_attn.qkv.weight" in original and "single_blocks.0.linear1.weight" in original
    converted = convert_flux_transformer_checkpoint_to_diffusers(dict(original))
    ours = model.state_dict()
    assert converted.keys() == ours.keys()
    assert all(converted[k].shape == ours[k].shape for k in ours)


def test_sd3_kohya_lora_is_the_same_update_on_the_fused_original_modules(runs, tmp_path):
    run = runs["sd3_pivotal"]
    export_run(run.path, "kohya", tmp_path / "kohya")
    kohya = load_file(tmp_path / "kohya" / f"{run.path.name}.safetensors")
    peft = load_file(run.output_dir / "pytorch_lora_weights.safetensors")
    slots = family_named("sd3").original_modules(dict(load_pipeline("tiny-sd3").transformer.config))
    names = {"lora_unet_" + slot.name.replace(".", "_") for slot in slots.values()}
    unet = {key.rsplit(".", 2)[0] if key.endswith(".weight") else key.rsplit(".", 1)[0]
            for key in kohya if key.startswith("lora_unet_")}
    assert unet and unet <= names
    assert any(key.startswith("lora_te2_text_model_encoder") for key in kohya)   # CLIP-G is the second encoder

    def delta(down, up, alpha):
        return up @ down * (float(alpha) / down.shape[0])

    fused = "lora_unet_joint_blocks_0_x_block_attn_qkv"
    merged = delta(kohya[f"{fused}.lora_down.weight"], kohya[f"{fused}.lora_up.weight"], kohya[f"{fused}.alpha"])
    parts = [delta(peft[f"transformer.transformer_blocks.0.attn.to_{x}.lora_A.weight"],
                   peft[f"transformer.transformer_blocks.0.attn.to_{x}.lora_B.weight"], 4) for x in "qkv"]
    torch.testing.assert_close(merged, torch.cat(parts))
    # The last block's context modulation keeps (shift, scale) in the original: its rows are swapped.
    last = "lora_unet_joint_blocks_1_context_block_adaLN_modulation_1"
    ours = delta(peft["transformer.transformer_blocks.1.norm1_context.linear.lora_A.weight"],
                 peft["transformer.transformer_blocks.1.norm1_context.linear.lora_B.weight"], 4)
    theirs = delta(kohya[f"{last}.lora_down.weight"], kohya[f"{last}.lora_up.weight"], kohya[f"{last}.alpha"])
    torch.testing.assert_close(theirs, torch.cat(ours.chunk(2)[::-1]))


def test_flux_kohya_lora_loads_in_diffusers_to_the_same_weights(runs):
    """diffusers reads kohya Flux LoRAs (double blocks split back from the fused qkv): fused into the model, ours and
    the diffusers-format file give the same weights. Its converter assumes Flux.1's width for the single blocks, so
    those are left out of both files at this toy width."""
    run = runs["flux_lora"]
    kohya = load_file(run.output_dir / f"{run.path.name}.safetensors")   # written at the end of training
    assert any(key.startswith("lora_unet_single_blocks_0_linear1") for key in kohya)
    assert any(key.startswith("lora_te1_text_model") for key in kohya)
    peft = load_file(run.output_dir / "pytorch_lora_weights.safetensors")

    def fused_weights(state: dict | None) -> dict:
        pipe = load_pipeline("tiny-flux")
        if state is not None:
            pipe.load_lora_weights(state, adapter_name="tested")
            pipe.fuse_lora(components=["transformer", "text_encoder"])
        return {name: p.detach().clone() for module in (pipe.transformer, pipe.text_encoder)
                for name, p in module.named_parameters() if "lora_" not in name}

    base = fused_weights(None)
    ours = fused_weights({k: v for k, v in peft.items() if "single_transformer_blocks" not in k})
    theirs = fused_weights({k: v for k, v in kohya.items() if "single_blocks" not in k})
    # diffusers 0.42.1's converter also drops the final layer's LoRA (it writes `proj_out.lora_A` without its
    # `transformer.` prefix), so that layer is not compared either; ComfyUI reads it by its original name.
    compared = [name for name in ours if "single_transformer_blocks" not in name and not name.startswith("proj_out")]
    changed = [name for name in compared if not torch.equal(ours[name], base[name.replace("base_layer.", "")])]
    assert len(changed) > 20   # the double blocks and the CLIP encoder carry the LoRA
    for name in compared:
        torch.testing.assert_close(theirs[name], ours[name], rtol=1e-5, atol=1e-6)


def test_exports_carry_the_family_licence_and_usage(runs, tmp_path):
    written = export_run(runs["flux_lora"].path, "diffusers", tmp_path / "flux")
    card = (tmp_path / "flux" / "README.md").read_text()
    assert "license_name: flux-1-dev-non-commercial-license" in card and "- flux" in card
    assert "FluxPipeline" in card and any(p.name == "pytorch_lora_weights.safetensors" for p in written)
    export_run(runs["sd3_pivotal"].path, "a1111", tmp_path / "sd3")
    card = (tmp_path / "sd3" / "README.md").read_text()
    assert "license_name: stabilityai-ai-community" in card and "- sd3" in card
    assert "has no load_textual_inversion" in card   # SD3's pipeline has none: the card adds the token itself
    embedding = load_file(tmp_path / "sd3" / "sks.safetensors")
    assert set(embedding) == {"clip_l", "clip_g"}


def test_full_fine_tune_exports_its_transformer_as_a_single_file(runs, tmp_path):
    export_run(runs["sd3_full"].path, "single-file", tmp_path / "single")
    file = next((tmp_path / "single").glob("*.safetensors"))
    tuned = load_pipeline(str(file), single_file_config="tiny-sd3")
    saved = load_pipeline(str(runs["sd3_full"].output_dir))
    ours, theirs = saved.transformer.state_dict(), tuned.transformer.state_dict()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_generation_engine_applies_flow_artifacts_and_compares(runs):
    engine = GenerationEngine(device="cpu", dtype=torch.float32)
    options = GenerationOptions(prompt=TI_PROMPT, steps=2, width=32, height=32, guidance=2.0, seed=1,
                                scheduler="dpm++")   # SD3 keeps its own flow sampler whatever is picked
    found = run_artifacts(runs["sd3_pivotal"].path)
    result = engine.compare("tiny-sd3", found.artifacts, options)
    assert engine.family == "sd3"
    base, tuned = result.base[0].images[0], result.tuned[0].images[0]
    assert base.size == (32, 32) and base.tobytes() != tuned.tobytes()
    assert engine.tokens == ["<sks>"]
    flux = run_artifacts(runs["flux_lora"].path)
    image = engine.generate("tiny-flux", flux.artifacts, options.replace(prompt=INSTANCE_PROMPT)).images[0]
    assert engine.family == "flux" and image.size == (32, 32)


def test_memory_profile_counts_the_transformer_of_the_checkpoint():
    sd3 = family_named("sd3")
    assert sd3.memory_for_config({"num_layers": 24}).unet_params < 3e9 < sd3.memory_for_config(
        {"num_layers": 38}).unet_params
    assert model_parts(load_pipeline("tiny-flux")).family.memory.unet_params > 1e10


def test_a_flow_run_is_scored_per_checkpoint_with_images_and_the_held_out_loss(runs):
    from sdtune_ui.evaluate.evaluation import EvalSettings, evaluate_run

    engine = GenerationEngine(device="cpu", dtype=torch.float32)
    settings = EvalSettings(metrics=("clip-t", "dino", "loss"), clip_model="tiny-clip", dino_model="tiny-dino",
                            num_images=1, inference_steps=2, size=32)
    result = evaluate_run(runs["flux_lora"].path, settings=settings, engine=engine)
    assert [(r["source"], r["step"]) for r in result.scores] == [("base", 0), ("checkpoint", 2), ("output", 3)]
    for record in result.scores:
        assert {"clip_t", "loss"} <= set(record["metrics"]) and record["metrics"]["loss"] > 0
    assert result.scores[0]["metrics"]["loss"] != result.scores[-1]["metrics"]["loss"]
