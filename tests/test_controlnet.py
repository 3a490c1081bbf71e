"""ControlNet (issue 14): condition pictures (the user's, Canny edges, depth), the dataset doctor's check, training a
new ControlNet or fine-tuning one, its artifact in the diffusers pipelines, and generating with a control picture.

The slow test at the end measures that a trained ControlNet follows its condition: with the right condition picture
it denoises a picture better than with another picture's, while an untrained one (zero convolutions) ignores it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from generate_helpers import FAST, one_torch_thread, trained_run  # noqa: F401 - autouse fixture (one torch thread)
from PIL import Image, ImageDraw, ImageFilter

from sdtune_ui.cli.main import main
from sdtune_ui.config import TrainConfig
from sdtune_ui.data.conditions import TINY_DEPTH, DepthEstimator, canny, write_conditions
from sdtune_ui.data.doctor import diagnose
from sdtune_ui.examples import EXAMPLE_DATASET
from sdtune_ui.generate.artifacts import run_artifacts
from sdtune_ui.generate.engine import GenerationEngine
from sdtune_ui.generate.options import GenerationOptions
from sdtune_ui.models import load_pipeline, resolve_model
from sdtune_ui.runs import RunDir
from sdtune_ui.train import train

PROMPT = "a photo of sks robot"


def test_canny_edges_outline_shapes():
    picture = Image.new("RGB", (64, 64), (20, 20, 20))
    ImageDraw.Draw(picture).rectangle((16, 16, 47, 47), fill=(230, 230, 230))
    edges = np.asarray(canny(picture))
    assert edges.shape == (64, 64, 3) and set(np.unique(edges)) == {0, 255}
    assert edges[16:48, 15:18].max() == 255 and edges[16:48, 46:49].max() == 255    # the square's sides
    assert edges[24:40, 24:40].max() == 0 and edges[:10, :10].max() == 0               # flat areas: none


def test_depth_from_a_transformers_depth_model_offline():
    """`tiny-depth` is a Depth Anything model built from a config (random weights): the real code path, offline."""
    estimate = DepthEstimator(TINY_DEPTH, device="cpu")
    picture = Image.open(EXAMPLE_DATASET / "robot_00.png").convert("RGB").resize((80, 64))
    depth = np.asarray(estimate(picture))
    assert depth.shape == (64, 80, 3) and depth.min() == 0 and depth.max() == 255    # normalised per picture
    assert np.array_equal(depth, np.asarray(estimate(picture)))                      # deterministic


def test_conditions_are_written_beside_their_pictures_and_the_doctor_checks_them(tmp_path):
    data = tmp_path / "data"
    shutil.copytree(EXAMPLE_DATASET, data)
    report = diagnose(data, method="controlnet")
    missing = next(f for f in report.findings if f.code == "missing_conditions")
    assert missing.severity == "error" and len(missing.files) == 8 and not report.ok
    assert any(f.code == "computed_conditions" for f in diagnose(data, method="controlnet",
                                                                  conditioning="canny").findings)
    assert not any("conditions" in f.code for f in diagnose(data, method="lora").findings)

    assert main(["dataset", "conditions", str(data), "--detector", "canny"]) == 0
    written = sorted(p.name for p in data.glob("*-condlabel.png"))
    assert len(written) == 8 and written[0] == "robot_00-condlabel.png"
    assert Image.open(data / "robot_00-condlabel.png").size == Image.open(data / "robot_00.png").size
    assert diagnose(data, method="controlnet").ok
    (data / "robot_00.png").unlink()
    lonely = next(f for f in diagnose(data, method="controlnet").findings if f.code == "conditions_without_image")
    assert lonely.files == ["robot_00-condlabel.png"]
    # Pictures that have one keep it; depth from the offline model.
    again = write_conditions(data, "depth", depth_model=TINY_DEPTH)
    assert not again.written and len(again.kept) == 7


def test_a_run_without_condition_pictures_fails_before_loading_the_model(tmp_path):
    status = train(TrainConfig(model="tiny-sd1", method="controlnet", data=str(EXAMPLE_DATASET), resolution=32,
                               max_train_steps=1), tmp_path / "run")
    assert status == "failed"
    message = [e for e in RunDir(tmp_path / "run").read_events() if e["kind"] == "status"][-1]["message"]
    assert "condition picture" in message and "conditioning to canny or depth" in message


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_a_trained_controlnet_loads_in_the_diffusers_controlnet_pipeline(family):
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline, StableDiffusionXLControlNetPipeline

    run = trained_run(f"controlnet_{family}")
    assert list(RunDir(run).samples_dir.glob("*.png"))        # sample images drawn with a condition picture
    controlnet = ControlNetModel.from_pretrained(run / "output")
    # Trained from the base UNet: its encoder started as a copy, the zero convolutions are no longer zero.
    assert controlnet.controlnet_down_blocks[0].weight.abs().max() > 0
    assert controlnet.controlnet_cond_embedding.conv_out.weight.abs().max() > 0
    pipeline_class = StableDiffusionXLControlNetPipeline if family == "sdxl" else StableDiffusionControlNetPipeline
    pipe = pipeline_class.from_pretrained(resolve_model(f"tiny-{family}"), controlnet=controlnet)
    pipe.set_progress_bar_config(disable=True)
    condition = canny(Image.open(EXAMPLE_DATASET / "robot_01.png").convert("RGB").resize((64, 64)))
    assert pipe(PROMPT, image=condition, num_inference_steps=2).images[0].size == (64, 64)
    # The output's files, as the run's README.txt says.
    readme = (run / "output" / "README.txt").read_text()
    assert "ControlNetModel.from_pretrained" in readme and pipeline_class.__name__ in readme


def test_generating_with_a_control_picture_follows_the_conditioning_scale(tmp_path):
    found = run_artifacts(trained_run("controlnet_sd1"))
    condition = canny(Image.open(EXAMPLE_DATASET / "robot_01.png").convert("RGB").resize((32, 32)))
    condition.save(tmp_path / "edges.png")
    engine = GenerationEngine("cpu", torch.float32)
    options = GenerationOptions(prompt=PROMPT, control_image=str(tmp_path / "edges.png"), **FAST)
    steered = np.asarray(engine.generate(found.base_model, found.artifacts, options).images[0], np.float32)
    off = np.asarray(engine.generate(found.base_model, found.artifacts,
                                     options.replace(conditioning_scale=0.0)).images[0], np.float32)
    plain = np.asarray(engine.generate(found.base_model, [], GenerationOptions(prompt=PROMPT, **FAST)).images[0],
                       np.float32)
    assert np.abs(steered - off).mean() > 1           # the ControlNet changes the picture
    assert np.abs(off - plain).max() < 2              # at scale 0 it is the base model's picture
    with pytest.raises(Exception, match="needs a control picture"):
        engine.generate(found.base_model, found.artifacts, GenerationOptions(prompt=PROMPT, **FAST))


def test_generate_cli_with_a_control_picture_and_with_a_mask(tmp_path, capsys):
    run = trained_run("controlnet_sd1")
    Image.open(EXAMPLE_DATASET / "robot_01.png").convert("RGB").resize((32, 32)).save(tmp_path / "control.png")
    fast = ["--steps", "2", "--width", "32", "--height", "32"]
    assert main(["generate", "--run", str(run), "--control-image", str(tmp_path / "control.png"),
                 "--prompt", PROMPT, "--out", str(tmp_path / "a"), *fast]) == 0
    assert (tmp_path / "a" / "seed-0.png").exists()
    mask = Image.new("L", (32, 32), 0)
    mask.paste(255, (8, 8, 24, 24))
    mask.save(tmp_path / "mask.png")
    assert main(["generate", "--model", "tiny-sd1-inpaint", "--init-image", str(tmp_path / "control.png"),
                 "--mask", str(tmp_path / "mask.png"), "--strength", "0.9", "--prompt", PROMPT,
                 "--out", str(tmp_path / "b"), "--steps", "2"]) == 0
    out = np.asarray(Image.open(tmp_path / "b" / "seed-0.png"), np.int16)
    original = np.asarray(Image.open(tmp_path / "control.png"), np.int16)
    assert np.abs(out - original)[np.asarray(mask) == 0].max() == 0
    assert main(["generate", "--model", "tiny-sd1", "--mask", str(tmp_path / "mask.png"), "--prompt", PROMPT,
                 "--out", str(tmp_path / "c")]) == 2
    assert "both a picture and a mask" in capsys.readouterr().err


def test_fine_tuning_an_existing_controlnet_starts_from_it(tmp_path):
    from diffusers import ControlNetModel

    data = tmp_path / "data"
    shutil.copytree(EXAMPLE_DATASET, data)
    write_conditions(data, "canny")
    config = TrainConfig(model="tiny-sd1", method="controlnet", controlnet_model="tiny-controlnet-sd1",
                         data=str(data), resolution=32, max_train_steps=1, learning_rate=1e-9, adam_weight_decay=0.0,
                         checkpointing_steps=0, validation_steps=0)
    assert train(config, tmp_path / "run") == "completed"
    tuned = ControlNetModel.from_pretrained(tmp_path / "run" / "output").state_dict()
    start = ControlNetModel.from_pretrained(resolve_model("tiny-controlnet-sd1")).state_dict()
    assert tuned.keys() == start.keys()
    assert max(float((tuned[k] - start[k]).abs().max()) for k in start) < 1e-6


def test_controlnet_settings_are_checked():
    errors = {}
    from sdtune_ui.methods import method_named

    method_named("controlnet").check_settings(TrainConfig(method="controlnet", with_prior_preservation=True,
                                                          class_prompt="a dog", train_text_encoder=True), errors)
    assert set(errors) == {"with_prior_preservation", "train_text_encoder"}


@pytest.mark.slow
def test_a_trained_controlnet_follows_its_condition(tmp_path):
    """Eight pictures (a coloured shape on a coloured ground), each with its blurred copy as the condition (a
    "tile"/blur ControlNet) and one caption for all, so only the condition tells them apart. 300 CPU steps on the
    v-prediction tiny model. Measured: the x0 error at high noise (t = 700, 850, 999) with the right condition vs
    another picture's condition, for the trained and an untrained (fresh from the UNet) ControlNet."""
    from diffusers import ControlNetModel, DDPMScheduler

    from sdtune_ui.models.tiny import controlnet_from_unet

    data = tmp_path / "pairs"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        picture = Image.new("RGB", (64, 64), tuple(int(v) for v in rng.integers(0, 255, 3)))
        x, y = (int(v) for v in rng.integers(4, 30, 2))
        shape = ImageDraw.Draw(picture).ellipse if i % 2 else ImageDraw.Draw(picture).rectangle
        shape((x, y, x + 28, y + 28), fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
        picture.save(data / f"s{i}.png")
        (data / f"s{i}.txt").write_text("a photo")
        picture.filter(ImageFilter.GaussianBlur(3)).save(data / f"s{i}-condlabel.png")
    config = TrainConfig(model="tiny-sd2-v", method="controlnet", data=str(data), resolution=32, max_train_steps=300,
                         train_batch_size=2, learning_rate=3e-3, caption_dropout=0.0, checkpointing_steps=0,
                         validation_steps=0, log_every=50)
    assert train(config, tmp_path / "run") == "completed"

    pipe = load_pipeline("tiny-sd2-v")
    trained = ControlNetModel.from_pretrained(tmp_path / "run" / "output")
    torch.manual_seed(0)
    untrained = controlnet_from_unet(pipe.unet, pipe.vae_scale_factor)
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)

    def load(path: Path, unit: bool) -> torch.Tensor:
        array = np.asarray(Image.open(path).convert("RGB").resize((32, 32)), np.float32)
        return torch.from_numpy(array / 255 if unit else array / 127.5 - 1).permute(2, 0, 1)[None]

    with torch.no_grad():
        ids = pipe.tokenizer(["a photo"], padding="max_length", max_length=77, return_tensors="pt").input_ids
        hidden = pipe.text_encoder(ids)[0]
        latents = [pipe.vae.encode(load(data / f"s{i}.png", False)).latent_dist.mode() * pipe.vae.config.scaling_factor
                   for i in range(8)]
    conditions = [load(data / f"s{i}-condlabel.png", True) for i in range(8)]
    timesteps = torch.tensor([700, 850, 999] * 4)
    alphas = scheduler.alphas_cumprod[timesteps].view(-1, 1, 1, 1)

    @torch.no_grad()
    def x0_error(controlnet, picture: int, condition: int) -> float:
        x0 = latents[picture].expand(len(timesteps), -1, -1, -1)
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1234))
        noisy = scheduler.add_noise(x0, noise, timesteps)
        h = hidden.expand(len(timesteps), -1, -1)
        cond = conditions[condition].expand(len(timesteps), -1, -1, -1)
        down, mid = controlnet(noisy, timesteps, h, controlnet_cond=cond, return_dict=False)
        v = pipe.unet(noisy, timesteps, h, down_block_additional_residuals=down,
                      mid_block_additional_residual=mid).sample
        predicted = alphas.sqrt() * noisy - (1 - alphas).sqrt() * v
        return float(((predicted - x0) ** 2).mean())

    def errors(controlnet) -> tuple[float, float]:
        right = np.mean([x0_error(controlnet, i, i) for i in range(8)])
        swapped = np.mean([x0_error(controlnet, i, (i + 1) % 8) for i in range(8)])
        return right, swapped

    fresh_right, fresh_swapped = errors(untrained)
    right, swapped = errors(trained)
    assert fresh_right == pytest.approx(fresh_swapped)   # zero convolutions: the condition does nothing yet
    assert right < 0.6 * fresh_right                     # measured 0.70 vs 1.79
    assert right < 0.92 * swapped                        # measured 0.70 vs 0.85: it follows the condition


def test_the_train_form_settles_a_controlnet_run_on_the_datasets_conditions(tmp_path):
    import dataclasses

    from sdtune_ui.app.form_rules import dataset_hints, settle
    from sdtune_ui.app.ops import widget_values
    from sdtune_ui.presets import preset

    data = tmp_path / "data"
    shutil.copytree(EXAMPLE_DATASET, data)
    values = widget_values(dataclasses.asdict(preset("controlnet", data=str(data))))
    settled = settle(values, dataset_hints(str(data)), previous_method="lora")
    assert settled.values["conditioning"] == "canny" and not settled.errors
    assert any("8 of 8 image(s) have no condition picture" in note for note in settled.notes)
    write_conditions(data, "canny")
    again = settle(values, dataset_hints(str(data)), previous_method="lora", filled=settled.filled, refill=True)
    assert again.values["conditioning"] == "dataset"


def test_a_public_app_takes_controlnets_and_depth_models_from_the_hub_only(tmp_path):
    from sdtune_ui.app.public_rules import check_public_config
    from sdtune_ui.errors import ConfigError

    def refused(**fields) -> list[str]:
        config = TrainConfig(method="controlnet", data=str(tmp_path / "data"), **fields)
        try:
            check_public_config(config, tmp_path, limits=False)
        except ConfigError as err:
            return sorted(err.field_errors)
        return []

    assert refused(controlnet_model="tiny-controlnet-sd1", depth_model="tiny-depth") == []
    assert refused(controlnet_model="someone/sd-controlnet-canny") == []
    assert refused(controlnet_model=str(tmp_path), depth_model="/root/dpt") == ["controlnet_model", "depth_model"]
    assert refused(controlnet_model="../../etc") == ["controlnet_model"]
