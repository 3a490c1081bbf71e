"""Inpainting (issue 14): the 9-channel family variants, inpainting batches, training inpainting models with the
usual methods, converting text-to-image models, and generating with a picture and a mask.

Learning is measured in latents, as elsewhere (docs/ENGINEERING_NOTES.md: the tiny models learn a picture long
before they draw it); the slow test at the end trains DreamBooth on the inpainting model and measures what it paints.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from generate_helpers import FAST, one_torch_thread, trained_run  # noqa: F401 - autouse fixture (one torch thread)
from PIL import Image

from sdtune_ui.config import TrainConfig
from sdtune_ui.examples import EXAMPLE_DATASET
from sdtune_ui.families import detect_family, family_for_unet_config, family_named
from sdtune_ui.generate.artifacts import run_artifacts
from sdtune_ui.generate.engine import GenerationEngine
from sdtune_ui.generate.options import GenerationOptions
from sdtune_ui.methods.inpaint_convert import add_input_channels
from sdtune_ui.models import load_pipeline, tiny_model_path
from sdtune_ui.runs import RunDir

PROMPT = "a photo of sks robot"


def box_mask(size: int = 64, box: tuple[int, int, int, int] = (16, 16, 48, 48)) -> Image.Image:
    mask = Image.new("L", (size, size), 0)
    mask.paste(255, box)
    return mask


def test_inpainting_models_are_their_familys_variant():
    for name, family, pipeline in (("tiny-sd1-inpaint", "sd1", "StableDiffusionInpaintPipeline"),
                                   ("tiny-sdxl-inpaint", "sdxl", "StableDiffusionXLInpaintPipeline")):
        pipe = load_pipeline(name)
        found = detect_family(pipe)
        assert found.inpainting and found.base_family() is family_named(family)
        assert type(pipe).__name__ == pipeline == found.pipeline_class_name
        assert found.pipeline_class("inpaint").__name__ == pipeline
        assert pipe.unet.config.in_channels == 9
        assert not detect_family(load_pipeline(name.removesuffix("-inpaint"))).inpainting
    # SD2's inpainting UNets (linear projections, 9 channels) too; each text-to-image family has one variant.
    assert family_for_unet_config({"in_channels": 9, "use_linear_projection": True}).name == "sd2-inpaint"
    assert {family_named(n).inpainting_variant().name for n in ("sd1", "sd2", "sdxl")} == {
        "sd1-inpaint", "sd2-inpaint", "sdxl-inpaint"}


def test_added_channels_start_at_zero_so_the_converted_unet_draws_what_it_drew():
    unet = load_pipeline("tiny-sd1").unet
    generator = torch.Generator().manual_seed(0)
    sample, hidden = torch.randn(1, 4, 16, 16, generator=generator), torch.randn(1, 77, 32, generator=generator)
    with torch.no_grad():
        before = unet(sample, 500, hidden).sample
        add_input_channels(unet, 5)
        extra = torch.randn(1, 5, 16, 16, generator=generator)
        after = unet(torch.cat([sample, extra], dim=1), 500, hidden).sample
    assert unet.config.in_channels == 9 and unet.conv_in.weight.shape[1] == 9
    assert torch.equal(before, after)


def make_trainer(tmp_path: Path, **overrides):
    from sdtune_ui.train.trainer import Trainer

    values = dict(model="tiny-sd1-inpaint", method="lora", data=str(EXAMPLE_DATASET), resolution=32,
                  max_train_steps=4, validation_steps=0, checkpointing_steps=0, random_flip=True, mask_variants=3)
    trainer = Trainer(TrainConfig(**{**values, **overrides}), RunDir(tmp_path / "run").create())
    trainer.setup()
    return trainer


def test_an_inpainting_batch_holds_the_mask_and_the_masked_pictures_latents(tmp_path):
    trainer = make_trainer(tmp_path)
    uncached = make_trainer(tmp_path / "b", cache_latents=False, center_crop=True)
    # The same steps draw the same masks (and masked latents) with or without the cache.
    for step in range(4):
        batch, other = trainer._batch(step), uncached._batch(step)
        assert torch.equal(batch.inpaint_mask, other.inpaint_mask)
        assert torch.allclose(batch.masked_latents, other.masked_latents, atol=1e-5)
    assert batch.inpaint_mask.shape == (1, 1, 16, 16) and batch.masked_latents.shape == (1, 4, 16, 16)
    assert set(batch.inpaint_mask.unique().tolist()) <= {0.0, 1.0}
    # The cached masked latents are the VAE's latents of the picture blanked (to 0) inside the mask.
    item = trainer.data.items[0]
    for flip in (0, 1):
        for variant in range(3):
            mask, latents = trainer.inpaint_cache[id(item)][flip][variant]
            pixel_mask = trainer._pixel_mask(item, flip, variant)
            expected = trainer._encode_latents((item.pixels[flip] * (pixel_mask < 0.5))[None])[0]
            assert torch.equal(latents, expected)
            assert torch.equal(mask, torch.nn.functional.interpolate(pixel_mask[None], size=(16, 16))[0])
    masks = [trainer.inpaint_cache[id(item)][0][v][0] for v in range(3)]
    assert not torch.equal(masks[0], masks[1]) and not torch.equal(masks[1], masks[2])


def test_a_pictures_own_mask_is_its_inpainting_mask(tmp_path):
    data = tmp_path / "data"
    shutil.copytree(EXAMPLE_DATASET, data)
    box_mask(128, (32, 32, 96, 96)).save(data / "robot_00-masklabel.png")
    trainer = make_trainer(tmp_path, data=str(data), random_flip=False)
    item = next(it for it in trainer.data.items if it.name == "robot_00.png")
    assert len(trainer.inpaint_cache[id(item)][0]) == 1     # no synthetic masks for it
    mask = trainer.inpaint_cache[id(item)][0][0][0][0]
    assert mask[4:12, 4:12].min() == 1 and mask.sum() == 64


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_an_inpainting_lora_loads_in_the_diffusers_inpainting_pipeline(family):
    run = trained_run(f"inpaint_lora_{family}")
    assert list(RunDir(run).samples_dir.glob("*.png"))      # sample images made with a picture and a mask
    pipe = load_pipeline(f"tiny-{family}-inpaint")
    assert type(pipe).__name__.endswith("InpaintPipeline")

    def unet_output() -> torch.Tensor:
        generator = torch.Generator().manual_seed(0)
        sample = torch.randn(1, 9, 16, 16, generator=generator)
        hidden = torch.randn(1, 77, pipe.unet.config.cross_attention_dim, generator=generator)
        extra = {}
        if family == "sdxl":
            extra = {"added_cond_kwargs": {"text_embeds": torch.zeros(1, 32), "time_ids": torch.zeros(1, 6)}}
        with torch.no_grad():
            return pipe.unet(sample, 500, hidden, **extra).sample

    before = unet_output()
    pipe.load_lora_weights(str(run / "output"))
    assert (unet_output() - before).abs().max() > 1e-4
    image = Image.open(EXAMPLE_DATASET / "robot_00.png").convert("RGB").resize((64, 64))
    out = pipe(PROMPT, image=image, mask_image=box_mask(), num_inference_steps=2,
               generator=torch.Generator().manual_seed(0)).images[0]
    assert out.size == (64, 64)


def test_inpainting_keeps_the_pixels_outside_the_mask_and_repaints_inside(tmp_path):
    """Through the engine (the CLI and the app's path): outside the mask the input picture comes back exactly;
    inside, the model's painting."""
    found = run_artifacts(trained_run("inpaint_lora_sd1"))
    picture = Image.open(EXAMPLE_DATASET / "robot_00.png").convert("RGB").resize((64, 64))
    picture.save(tmp_path / "picture.png")
    box_mask().save(tmp_path / "mask.png")
    options = GenerationOptions(prompt=PROMPT, init_image=str(tmp_path / "picture.png"),
                                mask=str(tmp_path / "mask.png"), steps=3, seed=1)
    engine = GenerationEngine("cpu", torch.float32)
    result = engine.generate(found.base_model, found.artifacts, options)
    out = np.asarray(result.images[0], np.int16)
    original = np.asarray(picture, np.int16)
    inside = np.asarray(box_mask()) > 0
    assert out.shape == original.shape
    assert np.abs(out - original)[~inside].max() == 0                # stated tolerance: exact
    assert np.abs(out - original)[inside].mean() > 20                 # repainted
    # Without pasting the original back, the 9-channel model redraws the rest through the VAE.
    redrawn = np.asarray(engine.generate(found.base_model, found.artifacts,
                                         options.replace(keep_unmasked=False)).images[0], np.int16)
    assert np.array_equal(redrawn[inside], out[inside]) and np.abs(redrawn - original)[~inside].mean() > 5
    # An inpainting model without a picture paints all of a blank canvas (text-to-image).
    plain = engine.generate(found.base_model, found.artifacts, GenerationOptions(prompt=PROMPT, **FAST))
    assert plain.images[0].size == (32, 32)


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_a_converted_model_is_an_inpainting_pipeline(family):
    from diffusers import StableDiffusionInpaintPipeline, StableDiffusionXLInpaintPipeline

    run = trained_run(f"inpaint_convert_{family}")
    pipeline_class = StableDiffusionXLInpaintPipeline if family == "sdxl" else StableDiffusionInpaintPipeline
    pipe = pipeline_class.from_pretrained(run / "output")
    assert pipe.unet.config.in_channels == 9 and detect_family(pipe).inpainting
    base = load_pipeline(f"tiny-{family}").unet
    # Trained: the new channels are no longer zero; the old ones moved too (a full fine-tune).
    assert pipe.unet.conv_in.weight[:, 4:].abs().max() > 0
    assert not torch.equal(pipe.unet.conv_in.weight[:, :4], base.conv_in.weight)
    image = Image.open(EXAMPLE_DATASET / "robot_00.png").convert("RGB").resize((64, 64))
    pipe.set_progress_bar_config(disable=True)
    assert pipe(PROMPT, image=image, mask_image=box_mask(), num_inference_steps=2).images[0].size == (64, 64)
    # A checkpoint of the conversion is an inpainting pipeline as well.
    checkpoint = run_artifacts(run, step=3).artifacts[0]
    assert (Path(checkpoint.path) / "unet" / "config.json").read_text().count('"in_channels": 9') == 1


def test_converting_an_inpainting_model_is_refused(tmp_path):
    from sdtune_ui.train import train

    status = train(TrainConfig(model="tiny-sd1-inpaint", method="inpaint_convert", data=str(EXAMPLE_DATASET),
                               resolution=32, max_train_steps=1), tmp_path / "run")
    assert status == "failed"
    message = [e for e in RunDir(tmp_path / "run").read_events() if e["kind"] == "status"][-1]["message"]
    assert "already an inpainting model" in message


@pytest.mark.slow
def test_inpainting_dreambooth_paints_the_subject_into_the_masked_region(tmp_path):
    """DreamBooth on tiny-sd1-inpaint from one photo of the subject (the robot on the beach) with its own mask (a box
    around the robot), 300 CPU steps. Then the robot is painted over with sand and that region masked: the trained
    model's prediction inside the mask is closer to the robot than to the sand (the base model's is not), and
    sampling from the sand picture moves the masked region toward the robot.

    Measured on 2 CPU cores; with seven photos (other scenes) 300 steps were not enough for a clear margin here,
    nor with the re-drawn example's robot_00 (a smaller robot: trained ratios 1.1, no better than the base's).
    """
    from diffusers import DDIMScheduler, DDPMScheduler, DiffusionPipeline

    from sdtune_ui.train import train

    data = tmp_path / "robots"
    data.mkdir()
    source = data / "robot_00.png"
    big_subject_on_a_beach().save(source)
    source.with_suffix(".txt").write_text(f"{PROMPT} on a beach")
    Image.fromarray(robot_box(Image.open(source), margin=8)).save(data / "robot_00-masklabel.png")
    config = TrainConfig(model="tiny-sd1-inpaint", method="dreambooth", data=str(data), instance_prompt=PROMPT,
                         resolution=64, max_train_steps=300, learning_rate=5e-4, caption_dropout=0.0,
                         checkpointing_steps=0, validation_steps=0, log_every=50)
    assert train(config, tmp_path / "run") == "completed"

    picture = Image.open(source).convert("RGB").resize((64, 64))
    mask = robot_box(picture, margin=4)
    background = np.asarray(picture).copy()
    background[mask > 0] = background[60, 2]                   # the beach's sand where the robot stood
    base = load_pipeline("tiny-sd1-inpaint")
    trained = DiffusionPipeline.from_pretrained(tmp_path / "run" / "output")

    def latents(array: np.ndarray) -> torch.Tensor:
        pixels = torch.from_numpy(array.astype(np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
        return base.vae.encode(pixels).latent_dist.mode() * base.vae.config.scaling_factor

    with torch.no_grad():
        subject, scene = latents(np.asarray(picture)), latents(background)
        blanked = latents(np.where(mask[..., None] > 0, 127.5, np.asarray(picture)))
    latent_mask = torch.nn.functional.interpolate(torch.from_numpy(mask / 255.0).float()[None, None], size=(32, 32))
    inside = latent_mask.expand_as(subject) > 0.5

    def distances(x: torch.Tensor) -> tuple[float, float]:
        return float(((x - subject) ** 2)[inside].mean()), float(((x - scene) ** 2)[inside].mean())

    # 1. What each model predicts (x0, averaged over 8 noise draws) inside the mask, from the sand picture noised to
    #    t = 999, 900 and 800: how much closer to the robot than to the sand.
    scheduler = DDPMScheduler.from_config(base.scheduler.config)
    ids = base.tokenizer([PROMPT], padding="max_length", max_length=77, return_tensors="pt").input_ids
    draws = 8
    ratios = {}
    for name, pipe in (("base", base), ("trained", trained)):
        with torch.no_grad():
            hidden = pipe.text_encoder(ids)[0].expand(draws, -1, -1)
            for t in (999, 900, 800):
                noise = torch.randn((draws, *subject.shape[1:]), generator=torch.Generator().manual_seed(0))
                noisy = scheduler.add_noise(scene.expand(draws, -1, -1, -1), noise, torch.tensor([t] * draws))
                inputs = torch.cat([noisy, latent_mask.expand(draws, -1, -1, -1), blanked.expand(draws, -1, -1, -1)], 1)
                eps = pipe.unet(inputs, t, hidden).sample
                alpha = scheduler.alphas_cumprod[t]
                x0 = ((noisy - (1 - alpha).sqrt() * eps) / alpha.sqrt()).mean(dim=0, keepdim=True)
                to_subject, to_scene = distances(x0)
                ratios[name, t] = to_subject / to_scene
    assert all(ratios["trained", t] < 0.85 for t in (999, 900, 800))   # measured 0.75, 0.75, 0.65
    assert all(ratios["base", t] > 0.95 for t in (999, 900, 800))      # measured 0.99, 1.01, 1.10
    assert all(ratios["trained", t] < 0.8 * ratios["base", t] for t in (999, 900, 800))

    # 2. Sampling (DDIM, 30 steps, strength 0.5, 3 seeds) from the sand picture: the masked region moves to the robot.
    painted = {}
    for name, pipe in (("base", base), ("trained", trained)):
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
        pipe.set_progress_bar_config(disable=True)
        results = [distances(pipe(PROMPT, image=Image.fromarray(background), mask_image=Image.fromarray(mask),
                                  strength=0.5, guidance_scale=1.0, num_inference_steps=30, output_type="latent",
                                  generator=torch.Generator().manual_seed(seed)).images) for seed in range(3)]
        painted[name] = np.mean(results, axis=0)
    assert painted["trained"][0] < 0.75 * painted["base"][0]                       # measured 0.80 vs 1.62
    assert painted["trained"][0] / painted["trained"][1] < painted["base"][0] / painted["base"][1]   # 1.07 vs 1.28


def big_subject_on_a_beach() -> Image.Image:
    """The example subject as large as the example pictures drew it before they were re-drawn with the demo
    model's scenes (where it stands smaller, at a random size): the acceptance test above was measured on it."""
    from sdtune_ui.models.demo.scenes import Scene, draw_scene

    return draw_scene(Scene("robot", "red", "on a beach", x=0.5, ground=0.92, scale=0.8), 128, subject=True)


def robot_box(picture: Image.Image, margin: int) -> np.ndarray:
    """A mask (uint8, 255 inside) of the red robot's bounding box plus a margin."""
    array = np.asarray(picture.convert("RGB")).astype(int)
    ys, xs = np.nonzero((array[..., 0] > 150) & (array[..., 1] < 80))
    mask = np.zeros(array.shape[:2], np.uint8)
    mask[max(0, ys.min() - margin): ys.max() + margin, max(0, xs.min() - margin): xs.max() + margin] = 255
    return mask


def test_tiny_inpainting_model_folders_are_complete():
    for name in ("tiny-sd1-inpaint", "tiny-sdxl-inpaint"):
        assert (tiny_model_path(name) / "model_index.json").read_text().count("Inpaint") == 1
