"""The flow-matching families: detection from configs and keys, and the objective they own (noise levels, the noisy
input, the target, loss weights, the model call), checked against diffusers' own helpers and pipelines."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import FluxPipeline
from diffusers.training_utils import compute_loss_weighting_for_sd3, compute_snr

from sdtune_ui.config import TrainConfig
from sdtune_ui.families import detect_family, family_named, family_of_model, model_parts
from sdtune_ui.families.base import family_for_checkpoint_keys
from sdtune_ui.models import load_pipeline
from tests.flow_helpers import one_torch_thread

__all__ = ["one_torch_thread"]


@pytest.fixture(scope="module")
def sd3():
    return load_pipeline("tiny-sd3")


@pytest.fixture(scope="module")
def flux():
    return load_pipeline("tiny-flux")


def test_families_are_detected_from_configs_and_checkpoint_keys(sd3, flux):
    assert family_of_model("tiny-sd3").name == "sd3" and family_of_model("tiny-flux").name == "flux"
    assert detect_family(sd3).name == "sd3" and detect_family(sd3).native_resolution == 64
    assert detect_family(flux).name == "flux" and detect_family(flux).native_resolution == 256
    assert family_for_checkpoint_keys({"model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight"}).name == "sd3"
    assert family_for_checkpoint_keys({"double_blocks.0.img_attn.qkv.weight"}).name == "flux"
    parts = model_parts(flux)
    assert parts.unet is flux.transformer and parts.text_encoder_names == ["text_encoder", "text_encoder_2"]
    assert parts.tunable_text_encoders == [flux.text_encoder]   # CLIP-L; T5 stays frozen
    assert len(model_parts(sd3).tunable_text_encoders) == 2


def family_for(pipe, **settings):
    family = detect_family(pipe)
    family.apply_training_settings(TrainConfig(data="x", **settings))
    return family, model_parts(pipe).noise_scheduler


def draw(family, scheduler, size=(16, 16), count=4000, seed=0):
    return family.sample_timesteps(scheduler, count, torch.Generator().manual_seed(seed), "cpu", size) / 1000


def test_noise_levels_follow_the_sampler_and_the_models_shift(sd3):
    family, scheduler = family_for(sd3)
    shifted = draw(family, scheduler)                       # logit-normal, SD3's shift 3 from its scheduler
    assert torch.equal(shifted, draw(family, scheduler))     # the trainer's generator decides everything
    unshifted = draw(*family_for(sd3, flow_shift=1.0))
    assert 0.45 < unshifted.mean() < 0.55 < shifted.mean()   # the shift pushes noise levels toward noise
    uniform = draw(*family_for(sd3, timestep_sampling="uniform", flow_shift=1.0))
    assert 0.0 <= uniform.min() and uniform.max() <= 1.0 and abs(uniform.std() - 1 / math.sqrt(12)) < 0.01
    assert unshifted.std() < uniform.std()                   # logit-normal: fewer extremes than uniform


def test_flux_shift_grows_with_the_image_as_in_its_sampler(flux):
    family, scheduler = family_for(flux)
    assert family.sigma_shift(scheduler, (128, 128)) == pytest.approx(math.exp(1.15))   # 1024 px: 4096 tokens
    assert family.sigma_shift(scheduler, (16, 16)) < family.sigma_shift(scheduler, (64, 64))
    assert draw(family, scheduler, (128, 128)).mean() > draw(family, scheduler, (16, 16)).mean()


def test_noisy_input_target_and_loss_weights_are_rectified_flow(sd3):
    family, scheduler = family_for(sd3, flow_loss_weighting="cosmap")
    latents, noise = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    timesteps = torch.tensor([0.0, 250.0, 1000.0])
    noisy = family.noisy_latents(scheduler, latents, noise, timesteps)
    torch.testing.assert_close(noisy[0], latents[0])
    torch.testing.assert_close(noisy[1], 0.75 * latents[1] + 0.25 * noise[1])
    torch.testing.assert_close(noisy[2], noise[2])
    torch.testing.assert_close(family.target(scheduler, latents, noise, timesteps), noise - latents)
    torch.testing.assert_close(family.loss_weights(scheduler, timesteps, None),
                               compute_loss_weighting_for_sd3("cosmap", timesteps / 1000))
    assert family_for(sd3)[0].loss_weights(scheduler, timesteps, None) is None   # "none": unweighted


def test_flux_model_call_packs_latents_as_its_pipeline(flux):
    family, _ = family_for(flux, train_guidance_scale=2.0)
    noisy, hidden, pooled = torch.randn(2, 4, 8, 8), torch.randn(2, 7, 64), torch.randn(2, 32)
    timesteps = torch.tensor([300.0, 700.0])
    with torch.no_grad():
        ours = family.predict(flux.transformer, noisy, timesteps, hidden, pooled, None)
        packed = FluxPipeline._pack_latents(noisy, 2, 4, 8, 8)
        ids = FluxPipeline._prepare_latent_image_ids(2, 4, 4, "cpu", noisy.dtype)
        theirs = flux.transformer(hidden_states=packed, timestep=timesteps / 1000, guidance=torch.full((2,), 2.0),
                                  pooled_projections=pooled, encoder_hidden_states=hidden,
                                  txt_ids=torch.zeros(7, 3), img_ids=ids, return_dict=False)[0]
        theirs = FluxPipeline._unpack_latents(theirs, 16, 16, 2)   # 8 latent rows at vae scale 2
    torch.testing.assert_close(ours, theirs)


def test_prompt_encoding_matches_the_pipelines(sd3, flux):
    for pipe in (sd3, flux):
        parts = model_parts(pipe)
        ids = parts.family.tokenize(parts.tokenizers, ["a photo of sks robot"])
        with torch.no_grad():
            hidden, pooled = parts.family.encode(parts.text_encoders, ids)
            extra = {"prompt_3": None} if pipe is sd3 else {}
            expected = pipe.encode_prompt("a photo of sks robot", prompt_2=None, do_classifier_free_guidance=False,
                                          **extra) if pipe is sd3 else pipe.encode_prompt("a photo of sks robot",
                                                                                          prompt_2=None)
        torch.testing.assert_close(hidden, expected[0])
        torch.testing.assert_close(pooled, expected[2] if pipe is sd3 else expected[1])


def test_unet_families_keep_their_noise_prediction_objective():
    sd1 = family_named("sd1")()
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(num_train_timesteps=1000)
    timesteps = sd1.sample_timesteps(scheduler, 8, torch.Generator().manual_seed(0), "cpu", (8, 8))
    assert timesteps.dtype == torch.long and timesteps.max() < 1000
    config = TrainConfig(data="x", snr_gamma=5.0)
    snr = compute_snr(scheduler, timesteps)
    torch.testing.assert_close(sd1.loss_weights(scheduler, timesteps, config), torch.clamp(snr, max=5.0) / snr)
    assert sd1.loss_weights(scheduler, timesteps, TrainConfig(data="x")) is None


def test_schnell_shaped_flux_trains_without_a_guidance_embedding(flux):
    from diffusers import FluxTransformer2DModel

    config = {k: v for k, v in flux.transformer.config.items() if not k.startswith("_")}
    schnell = FluxTransformer2DModel(**{**config, "guidance_embeds": False})
    pipe = FluxPipeline(**{**flux.components, "transformer": schnell})
    family = detect_family(pipe)
    assert family.name == "flux" and not family.guidance_embeds
    with torch.no_grad():
        out = family.predict(schnell, torch.randn(1, 4, 8, 8), torch.tensor([500.0]), torch.randn(1, 5, 64),
                             torch.randn(1, 32), None)
    assert out.shape == (1, 4, 8, 8)
    assert not any("Guidance embedding" in note for note in family.training_notes(TrainConfig(data="x")))
