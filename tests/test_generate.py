"""Generation engine: trained artifacts change the images, scale 0 and unrelated prompts do not,
checkpoints materialise once, compare and the overfitting grid, user files, model switching."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest
import torch
from generate_helpers import (
    FAST,
    one_torch_thread,  # noqa: F401 - autouse fixture (one torch thread)
    pixels,
    trained_run,
)

from sdtune_ui.errors import ModelLoadError, SdtuneError
from sdtune_ui.generate.artifacts import (
    Artifact,
    artifact_from_spec,
    base_model_from_card,
    list_choices,
    materialize_checkpoint,
    parse_choice,
    parse_spec,
    run_artifacts,
)
from sdtune_ui.generate.engine import GenerationEngine, default_engine, release_gpu
from sdtune_ui.generate.grid import grid_layout
from sdtune_ui.generate.options import SCHEDULERS, GenerationOptions
from sdtune_ui.generate.overfitting import default_grid_prompts, overfitting_grid


@pytest.fixture(scope="module")
def engine() -> GenerationEngine:
    return GenerationEngine(device="cpu")


def opts(prompt: str, **kw) -> GenerationOptions:
    return GenerationOptions(prompt=prompt, **{**FAST, **kw})


def with_scale(artifacts: list[Artifact], scale: float) -> list[Artifact]:
    for artifact in artifacts:
        if artifact.kind == "lora":
            artifact.scale = scale
    return artifacts


def test_lora_changes_images_and_scale_zero_is_the_base(engine):
    found = run_artifacts(trained_run("lora"))
    assert [a.kind for a in found.artifacts] == ["lora"] and found.base_model == "tiny-sd1"
    # Trained with alpha 8 at rank 4; the file records both, so no correction factor is needed ...
    assert found.artifacts[0].alpha_factor == 1.0
    options = opts("a photo of sks robot", seed=7, num_images=2)
    base = engine.generate("tiny-sd1", [], options)
    tuned = engine.generate("tiny-sd1", found.artifacts, options)
    # ... and the loaded adapter has the trained scale (alpha / rank = 2).
    adapter = next(iter(engine.pipe.unet.peft_config.values()))
    assert (adapter.r, adapter.lora_alpha) == (4, 8)
    zero = engine.generate("tiny-sd1", with_scale(found.artifacts, 0.0), options)
    assert tuned.seeds == [7, 8]
    assert np.abs(pixels(tuned) - pixels(base)).max() > 10
    assert np.array_equal(pixels(zero), pixels(base))
    # Same seed, same device: the same images; image i alone is reproduced with seed + i.
    again = engine.generate("tiny-sd1", with_scale(found.artifacts, 1.0), options)
    assert np.array_equal(pixels(again), pixels(tuned))
    single = engine.generate("tiny-sd1", found.artifacts, opts("a photo of sks robot", seed=8))
    assert np.abs(pixels(single)[0] - pixels(tuned)[1]).max() <= 2


def test_textual_inversion_changes_only_prompts_with_its_token(engine):
    found = run_artifacts(trained_run("textual_inversion"))
    assert [a.kind for a in found.artifacts] == ["embedding"]
    base = engine.generate("tiny-sd1", [], opts("a photo of <sks>"))
    tuned = engine.generate("tiny-sd1", found.artifacts, opts("a photo of <sks>"))
    assert tuned.tokens == ["<sks>"]
    assert np.abs(pixels(tuned) - pixels(base)).max() > 2
    plain_base = engine.generate("tiny-sd1", [], opts("a photo of a robot"))
    plain_tuned = engine.generate("tiny-sd1", found.artifacts, opts("a photo of a robot"))
    assert np.array_equal(pixels(plain_tuned), pixels(plain_base))
    # Removing the embedding restores the untouched vocabulary.
    assert engine.generate("tiny-sd1", [], opts("a photo of <sks>")).tokens == []
    assert np.array_equal(pixels(engine.generate("tiny-sd1", [], opts("a photo of <sks>"))), pixels(base))


def test_pivotal_uses_lora_and_embedding(engine):
    found = run_artifacts(trained_run("pivotal"))
    assert sorted(a.kind for a in found.artifacts) == ["embedding", "lora"]
    base = engine.generate("tiny-sd1", [], opts("a photo of <sks>"))
    tuned = engine.generate("tiny-sd1", found.artifacts, opts("a photo of <sks>"))
    assert np.abs(pixels(tuned) - pixels(base)).max() > 10
    plain = engine.generate("tiny-sd1", [], opts("a photo of a robot"))
    zero = engine.generate("tiny-sd1", with_scale(found.artifacts, 0.0), opts("a photo of a robot"))
    assert np.array_equal(pixels(zero), pixels(plain))


def test_full_finetune_and_its_checkpoint(engine):
    run = trained_run("full")
    found = run_artifacts(run)
    assert [a.kind for a in found.artifacts] == ["pipeline"]
    base = engine.generate("tiny-sd1", [], opts("a photo of sks robot"))
    tuned = engine.generate("tiny-sd1", found.artifacts, opts("a photo of sks robot"))
    assert np.abs(pixels(tuned) - pixels(base)).max() > 10
    folder = materialize_checkpoint(run, 3)
    assert (folder / "model_index.json").exists()
    middle = engine.generate("tiny-sd1", run_artifacts(run, 3).artifacts, opts("a photo of sks robot"))
    assert np.abs(pixels(middle) - pixels(base)).max() > 1
    assert np.abs(pixels(middle) - pixels(tuned)).max() > 1


def test_checkpoint_materialises_once_and_differs_from_final(engine):
    run = trained_run("lora")
    folder = materialize_checkpoint(run, 3)
    stamp = (folder / "pytorch_lora_weights.safetensors").stat().st_mtime_ns
    assert materialize_checkpoint(run, 3) == folder
    assert (folder / "pytorch_lora_weights.safetensors").stat().st_mtime_ns == stamp
    step3 = engine.generate("tiny-sd1", run_artifacts(run, 3).artifacts, opts("a photo of sks robot"))
    final = engine.generate("tiny-sd1", run_artifacts(run).artifacts, opts("a photo of sks robot"))
    base = engine.generate("tiny-sd1", [], opts("a photo of sks robot"))
    assert np.abs(pixels(step3) - pixels(final)).max() > 1
    assert np.abs(pixels(step3) - pixels(base)).max() > 1
    with pytest.raises(SdtuneError, match="available: 3"):
        materialize_checkpoint(run, 99)


def test_several_loras_scales_and_fuse(engine):
    run = trained_run("lora")
    final, middle = run_artifacts(run).artifacts[0], run_artifacts(run, 3).artifacts[0]
    final.scale, middle.scale = 0.7, 0.5
    both = engine.generate("tiny-sd1", [final, middle], opts("a photo of sks robot"))
    assert len(engine.pipe.get_active_adapters()) == 2
    fused = engine.generate("tiny-sd1", [final, middle], opts("a photo of sks robot", fuse_lora=True))
    assert np.abs(pixels(fused) - pixels(both)).max() <= 3
    # A later change of scale unfuses first, so scale 0 is the base again.
    base = engine.generate("tiny-sd1", [], opts("a photo of sks robot"))
    final.scale = middle.scale = 0.0
    off = engine.generate("tiny-sd1", [final, middle], opts("a photo of sks robot"))
    assert np.abs(pixels(off) - pixels(base)).max() <= 1


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_every_scheduler_generates(engine, scheduler):
    result = engine.generate("tiny-sd1", [], opts("a red toy", scheduler=scheduler, steps=2, negative_prompt="blue"))
    assert result.images[0].size == (32, 32)


def test_options_are_validated(engine):
    with pytest.raises(SdtuneError, match="multiple of 8"):
        engine.generate("tiny-sd1", [], opts("x", width=30))
    with pytest.raises(SdtuneError, match="guidance"):
        engine.generate("tiny-sd1", [], opts("x", guidance=31))
    GenerationOptions(prompt="x", guidance=30).validate()
    with pytest.raises(SdtuneError, match="prompt"):
        engine.generate("tiny-sd1", [], opts("  "))


def test_compare_base_and_tuned_side_by_side(engine):
    found = run_artifacts(trained_run("lora"))
    result = engine.compare("tiny-sd1", found.artifacts, opts("a photo of sks robot", num_images=2))
    base = engine.generate("tiny-sd1", [], opts("a photo of sks robot", num_images=2))
    assert np.array_equal(pixels(result.base[0]), pixels(base))
    assert np.abs(pixels(result.tuned[0]) - pixels(base)).max() > 10
    layout = grid_layout((32, 32), rows=2, cols=2)
    assert result.image.size == layout.size
    assert [caption for _, caption in result.pairs()] == ["base · seed 0", "tuned · seed 0",
                                                          "base · seed 1", "tuned · seed 1"]


def test_overfitting_grid_two_checkpoints_four_prompts(engine):
    run = trained_run("lora")
    grid = overfitting_grid(run, steps=[3, None], engine=engine, options=opts("unused"))
    # 4 prompt columns of 32 px images upscaled to 128 px cells, 2 checkpoint rows, plus the label margins.
    layout = grid_layout((32, 32), rows=2, cols=4)
    assert grid.size == layout.size == (layout.label_width + 4 * 128, layout.header_height + 2 * 128)
    array = np.asarray(grid)
    header = array[: layout.header_height, layout.label_width:]
    row_labels = array[layout.header_height:, : layout.label_width]
    assert (header < 128).any() and (row_labels < 128).any(), "labels are drawn"
    # With LoRA scales: one row per checkpoint and scale.
    scaled = overfitting_grid(run, steps=[None], scales=[0.0, 1.0], prompts=["a photo of sks robot"],
                              engine=engine, options=opts("unused"))
    assert scaled.size == grid_layout((32, 32), rows=2, cols=1).size


def test_overfitting_grid_rows_carry_the_evaluation_scores(engine, tmp_path, monkeypatch):
    import json
    import shutil

    from sdtune_ui.generate import overfitting

    run = tmp_path / "lora-run"
    shutil.copytree(trained_run("lora"), run)
    from sdtune_ui.evaluate import EvalSettings

    settings = EvalSettings(num_images=2, inference_steps=3).to_dict()
    scores = [("base", 0, 0.30, 0.0), ("checkpoint", 3, 0.45, 0.01), ("output", 6, 0.50, 0.20)]
    (run / "metrics.jsonl").write_text("".join(json.dumps({
        "source": source, "step": step, "metrics": {"dino": dino, "class_drift": drift}, "settings": settings,
        "t": step}) + "\n" for source, step, dino, drift in scores))
    labels = []
    monkeypatch.setattr(overfitting, "make_grid", lambda rows, row_labels, col_labels: labels.extend(row_labels))
    overfitting_grid(run, steps=[3, None], prompts=["a photo of sks robot"], engine=engine, options=opts("unused"))
    # Step 3 wins: the output scores higher but its class drifted 0.20 toward the subject.
    assert labels == ["step 3\nbest\nDINO 0.450\ndrift 0.010", "final\nDINO 0.500\ndrift 0.200"]


def test_default_grid_prompts_from_the_run_tokens():
    assert default_grid_prompts({"method": "dreambooth", "instance_prompt": "a photo of sks dog",
                                 "class_prompt": "a photo of a dog"}) == [
        "a photo of sks dog", "a photo of sks dog on a beach", "a photo of a dog", "a photo of a cat"]
    assert default_grid_prompts({"method": "lora", "instance_prompt": "a photo of sks cat"})[2:] == [
        "a photo of a cat", "a photo of a dog"]
    assert default_grid_prompts({"method": "textual_inversion", "placeholder_token": "<cat-toy>",
                                 "initializer_token": "toy", "instance_prompt": ""}) == [
        "a photo of <cat-toy>", "a photo of <cat-toy> on a beach", "a photo of a toy", "a photo of a cat"]


def test_base_model_from_a_local_model_card(tmp_path):
    (tmp_path / "README.md").write_text("---\nbase_model: stabilityai/stable-diffusion-xl-base-1.0\n"
                                        "tags:\n- lora\n---\n# my lora\n")
    (tmp_path / "pytorch_lora_weights.safetensors").write_bytes(b"")
    assert base_model_from_card(tmp_path) == "stabilityai/stable-diffusion-xl-base-1.0"
    assert base_model_from_card(tmp_path / "pytorch_lora_weights.safetensors") == \
        "stabilityai/stable-diffusion-xl-base-1.0"
    (tmp_path / "README.md").write_text("---\nbase_model:\n- runwayml/stable-diffusion-v1-5\n---\n")
    assert base_model_from_card(tmp_path) == "runwayml/stable-diffusion-v1-5"
    assert base_model_from_card(tmp_path / "nothing-here") is None


def test_user_files_and_pickle_refusal(engine, tmp_path):
    lora_file = run_artifacts(trained_run("lora")).artifacts[0].path
    artifact = artifact_from_spec(f"{lora_file}:0.5")
    assert artifact.kind == "lora" and artifact.scale == 0.5
    embedding = artifact_from_spec(run_artifacts(trained_run("textual_inversion")).artifacts[0].path)
    assert embedding.kind == "embedding" and embedding.token == "<sks>"
    engine.generate("tiny-sd1", [artifact, embedding], opts("a photo of <sks>"))
    assert engine.tokens == ["<sks>"]
    pickle_file = tmp_path / "evil.pt"
    torch.save({"lora_unet_x.lora_down.weight": torch.zeros(1, 1), "lora_unet_x.lora_up.weight": torch.zeros(1, 1)},
               pickle_file)
    with pytest.raises(ModelLoadError, match="pickle"):
        artifact_from_spec(str(pickle_file))
    assert artifact_from_spec(str(pickle_file), allow_pickle=True).kind == "lora"
    with pytest.raises(ModelLoadError, match="not found"):
        artifact_from_spec(str(tmp_path / "missing.safetensors"))
    assert parse_spec("C:\\loras\\a.safetensors:0.8") == ("C:\\loras\\a.safetensors", 0.8)
    assert parse_spec("C:\\loras\\a.safetensors") == ("C:\\loras\\a.safetensors", None)
    assert artifact_from_spec("someone/some-lora:0.6").path == "someone/some-lora"


def test_sdxl_pivotal_embeds_into_both_encoders(engine):
    found = run_artifacts(trained_run("sdxl_pivotal"))
    base = engine.generate("tiny-sdxl", [], opts("a photo of <sks>"))
    tuned = engine.generate("tiny-sdxl", found.artifacts, opts("a photo of <sks>"))
    assert tuned.tokens == ["<sks>"]
    assert "<sks>" in engine.pipe.tokenizer.get_vocab() and "<sks>" in engine.pipe.tokenizer_2.get_vocab()
    assert np.abs(pixels(tuned) - pixels(base)).max() > 10
    with pytest.raises(ModelLoadError, match="SDXL"):
        engine.generate("tiny-sd1", [a for a in found.artifacts if a.kind == "embedding"], opts("x"))


def test_switching_models_frees_the_previous_pipeline():
    engine = GenerationEngine(device="cpu")
    first = engine.load_model("tiny-sd1")
    ref = weakref.ref(first)
    del first
    engine.load_model("tiny-sd2-v")
    gc.collect()
    assert ref() is None and engine.family == "sd2"
    engine.unload()
    assert engine.pipe is None
    shared = default_engine()
    shared.load_model("tiny-sd1")
    release_gpu()   # what the job queue calls before training
    assert shared.pipe is None and shared.model_key is None


def test_run_choices_list_outputs_and_checkpoints(tmp_path):
    run = trained_run("lora")
    choices = list_choices(run.parent)
    values = [c.value for c in choices if c.run_dir == str(run)]
    assert values == [str(run), f"{run}@step-3"]
    assert parse_choice(f"{run}@step-3") == (str(run), 3) and parse_choice(str(run)) == (str(run), None)


def test_a_damaged_lora_file_is_listed_and_using_it_says_which_file_and_what_to_do(tmp_path):
    import shutil

    run = shutil.copytree(trained_run("lora"), tmp_path / "runs" / "lora-damaged")
    (run / "output" / "pytorch_lora_weights.safetensors").write_bytes(b"not a safetensors file" * 4)
    assert [c.step for c in list_choices(run.parent)] == [None, 3]   # the run stays visible
    with pytest.raises(ModelLoadError, match="pytorch_lora_weights.safetensors: the file is damaged.*checkpoints"):
        run_artifacts(run)
