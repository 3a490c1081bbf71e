"""Metrics on synthetic images behave as specified: identical sets score the most similar, changed sets less;
FID/KID ~0 for a set against itself and for two samples of one distribution, large for another distribution;
class drift is positive when the class prompt draws the subject; held-out loss is deterministic for every
family; the best-checkpoint rule and its reasons; the heatmap."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from generate_helpers import one_torch_thread  # noqa: F401 - autouse fixture (one torch thread)
from PIL import Image, ImageDraw

from sdtune_ui.errors import SdtuneError
from sdtune_ui.evaluate import metrics as m
from sdtune_ui.evaluate.features import feature_models
from sdtune_ui.evaluate.heatmap import MISSING, heatmap
from sdtune_ui.evaluate.selection import best_checkpoint


def scenes(count: int, seed: int, body=(200, 30, 30), sky=(120, 180, 230)) -> list[Image.Image]:
    """A distribution of toy pictures: a robot-like block at a random place and size on a jittered sky."""
    rng = random.Random(seed)
    images = []
    for _ in range(count):
        image = Image.new("RGB", (64, 64), tuple(min(255, max(0, c + rng.randint(-20, 20))) for c in sky))
        draw = ImageDraw.Draw(image)
        x, y, w, h = rng.randint(8, 30), rng.randint(10, 28), rng.randint(14, 22), rng.randint(16, 26)
        draw.rectangle((x, y, x + w, y + h), fill=body)
        draw.rectangle((x + 3, y - 6, x + w - 3, y), fill=(240, 220, 40))
        images.append(image)
    return images


def recoloured(images: list[Image.Image]) -> list[Image.Image]:
    """The same pictures with red and blue swapped: same layout, different subject colour."""
    return [Image.fromarray(np.asarray(image)[:, :, [2, 1, 0]]) for image in images]


@pytest.fixture(scope="module", params=[("dino", "tiny-dino"), ("clip", "tiny-clip")], ids=["dino", "clip"])
def extractor(request):
    return feature_models().get(*request.param)


def test_identical_sets_score_the_maximum_and_changed_sets_score_lower(extractor):
    robots = scenes(8, seed=1)
    assert m.class_preservation(extractor, robots, robots) == pytest.approx(1.0, abs=1e-5)
    same = m.subject_fidelity(extractor, robots, robots)
    other_robots = m.subject_fidelity(extractor, scenes(8, seed=2), robots)
    blue = m.subject_fidelity(extractor, recoloured(robots), robots)
    noise = m.subject_fidelity(extractor, [Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3),
                                                                                             dtype=np.uint8))
                                           for _ in range(8)], robots)
    # The set against itself is the most similar; other draws of the subject come next; a recoloured
    # subject and noise are clearly further (margins measured: ~0.1-0.5 apart on the tiny models).
    assert same > other_robots > max(blue, noise) + 0.1
    assert m.class_preservation(extractor, recoloured(robots), robots) < 0.9


def test_features_can_be_passed_instead_of_images(extractor):
    robots, others = scenes(4, seed=1), scenes(4, seed=3)
    from_images = m.subject_fidelity(extractor, others, robots)
    from_features = m.subject_fidelity(extractor, extractor.image_features(others), extractor.image_features(robots))
    assert from_features == pytest.approx(from_images, abs=1e-6)


def test_class_drift_is_positive_when_class_images_turn_into_the_subject():
    dino = feature_models().get("dino", "tiny-dino")
    training = scenes(8, seed=1)
    base_class = scenes(8, seed=5, body=(30, 60, 200), sky=(200, 120, 60))   # "a robot": another colour
    assert m.class_drift(dino, base_class, base_class, training) == pytest.approx(0.0, abs=1e-6)
    drifted = scenes(8, seed=6)                                                 # the class now draws the subject
    assert m.class_drift(dino, drifted, base_class, training) > 0.2
    assert m.class_preservation(dino, drifted, base_class) < m.class_preservation(dino, base_class, base_class) - 0.2


def test_prompt_fidelity_pairs_each_image_with_its_prompt():
    clip = feature_models().get("clip", "tiny-clip")
    images = scenes(2, seed=1)
    score = m.prompt_fidelity(clip, images, ["a photo of a robot", "a red robot"])
    swapped = m.prompt_fidelity(clip, images[::-1], ["a red robot", "a photo of a robot"])
    assert -1.0 <= score <= 1.0 and swapped == pytest.approx(score, abs=1e-6)
    with pytest.raises(ValueError):
        m.prompt_fidelity(clip, images, ["only one prompt"])
    with pytest.raises(SdtuneError, match="CLIP"):
        feature_models().get("dino", "tiny-dino").text_features(["a robot"])


def test_fid_and_kid_are_near_zero_for_one_distribution_and_large_for_another():
    dino = feature_models().get("dino", "tiny-dino")
    first, second = scenes(24, seed=1), scenes(24, seed=2)
    other = scenes(24, seed=3, body=(30, 60, 200), sky=(200, 120, 60))
    itself = m.distribution_distance(first, first, dino)
    same = m.distribution_distance(first, second, dino)
    different = m.distribution_distance(first, other, dino)
    assert abs(itself.fid) < 1e-3
    assert same.fid < 0.2 * different.fid
    # KID's unbiased estimator assumes independent sets; a set against itself is slightly negative at this size.
    assert abs(itself.kid) < 0.05 * different.kid and abs(same.kid) < 0.05 * different.kid
    assert different.kid_subset_size == 24 and different.real == different.generated == 24
    assert "24 generated with 24 training images" in different.caveat
    again = m.distribution_distance(first, other, dino)
    assert (again.fid, again.kid) == pytest.approx((different.fid, different.kid))   # KID's subsets are seeded


def test_kid_subset_size_follows_the_smaller_set():
    dino = feature_models().get("dino", "tiny-dino")
    result = m.distribution_distance(scenes(8, seed=1), scenes(3, seed=2), dino, which=["kid"])
    assert result.kid_subset_size == 3 and result.fid is None and result.kid is not None


def test_inception_features_without_torch_fidelity_explain_what_to_do(monkeypatch):
    import torchmetrics.image.fid as fid_module

    monkeypatch.setattr(fid_module, "_TORCH_FIDELITY_AVAILABLE", False)
    with pytest.raises(SdtuneError, match="torch-fidelity"):
        m.distribution_distance(scenes(2, seed=1), scenes(2, seed=2), "inception")


# ---------------------------------------------------------------------------------------------- held-out loss
@pytest.mark.parametrize("model", ["tiny-sd1", "tiny-sd2-v", "tiny-sdxl"])
def test_heldout_loss_is_deterministic_and_tracks_the_weights(model):
    from sdtune_ui.evaluate.heldout import build_heldout_set, encode_pixels, heldout_loss
    from sdtune_ui.models import load_pipeline, model_parts

    parts = model_parts(load_pipeline(model))
    pixels = torch.stack([torch.from_numpy(np.asarray(im, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)
                          for im in scenes(3, seed=1)])
    latents = encode_pixels(parts.vae, pixels)
    held = build_heldout_set(latents, ["a photo of sks robot"] * 2 + ["a photo of a robot"], [False, False, True],
                             num_train_timesteps=1000, pixel_size=(64, 64), seed=0)
    first = heldout_loss(parts, held)
    assert set(first) == {"loss", "loss_class"}
    assert heldout_loss(parts, held) == first                       # same weights, same set: same numbers
    reseeded = build_heldout_set(latents, held.prompts, held.is_class, num_train_timesteps=1000,
                                 pixel_size=(64, 64), seed=1)
    assert heldout_loss(parts, reseeded)["loss"] != first["loss"]   # the noise is part of the set
    with torch.no_grad():
        parts.unet.conv_out.weight.mul_(0.0)                        # the UNet now predicts (almost) nothing
    assert abs(heldout_loss(parts, held)["loss"] - first["loss"]) > 1e-3


# ---------------------------------------------------------------------------------------------- selection
def record(step: int, source: str = "checkpoint", **metrics) -> dict:
    return {"step": step, "source": source, "metrics": metrics}


def test_best_checkpoint_is_the_highest_fidelity_that_keeps_the_class():
    records = [record(0, "base", dino=0.30, class_drift=0.0), record(100, dino=0.50, class_drift=0.01),
               record(200, dino=0.70, class_drift=0.03), record(300, dino=0.80, class_drift=0.12),
               record(400, "output", dino=0.82, class_drift=0.20)]
    best = best_checkpoint(records, "dino", max_drift=0.05)
    assert (best.step, best.source, best.value) == (200, "checkpoint", 0.70)
    assert best.reason == "highest subject fidelity (DINO 0.700) with class drift under 0.05 (2 of 4 drifted more)"


def test_best_checkpoint_when_all_drift_or_none_beats_the_base():
    drifted = [record(100, dino=0.5, class_drift=0.2), record(200, dino=0.6, class_drift=0.1)]
    best = best_checkpoint(drifted, "dino", max_drift=0.05)
    assert best.step == 200 and "every checkpoint drifted" in best.reason and "step 200 drifted least" in best.reason
    unlearned = [record(0, "base", dino=0.6), record(100, dino=0.5), record(200, dino=0.5)]
    best = best_checkpoint(unlearned, "dino")
    assert best.step == 100                                             # ties go to the earlier step
    assert "class drift not measured" in best.reason and "no better than the base model" in best.reason


def test_lower_is_better_metrics_pick_the_lowest():
    records = [record(100, loss=0.30, fid=40.0), record(200, loss=0.25, fid=45.0)]
    assert best_checkpoint(records, "loss").step == 200
    assert best_checkpoint(records, "fid").step == 100
    assert best_checkpoint(records, "clip-t") is None
    with pytest.raises(SdtuneError, match="Unknown metric"):
        best_checkpoint(records, "sharpness")


def test_heatmap_colours_cells_and_outlines_the_best():
    image = heatmap([[0.1, 0.5, None], [0.2, 0.9, 0.3]], row_labels=["lr 1e-4", "lr 2e-4"],
                    col_labels=["100", "200", "300"], title="dino", best=(1, 1), notes=[["", "", "failed"],
                                                                                        ["", "", ""]])
    from sdtune_ui.evaluate import heatmap as hm

    assert image.size[0] >= hm.LABEL_W + 3 * hm.CELL_W
    cell = lambda r, c: image.getpixel((hm.LABEL_W + c * hm.CELL_W + 60, hm.HEADER_H + r * hm.CELL_H + 6))  # noqa: E731
    assert cell(0, 2) == MISSING
    assert sum(cell(0, 0)) < sum(cell(1, 1))                           # worst dark, best bright
    border = image.getpixel((hm.LABEL_W + hm.CELL_W + 1, hm.HEADER_H + hm.CELL_H + 20))
    assert border == (220, 20, 60)


def test_feature_models_load_from_folders_and_refuse_the_wrong_kind(tmp_path):
    from sdtune_ui.errors import ModelLoadError
    from sdtune_ui.evaluate.features import DinoFeatures, load_extractor
    from sdtune_ui.evaluate.tiny import tiny_feature_model_path

    folder = tiny_feature_model_path("tiny-dino")            # a saved model, as a downloaded one would be
    assert isinstance(load_extractor("dino", str(folder), "cpu"), DinoFeatures)
    with pytest.raises(ModelLoadError, match="not DINOv2"):
        load_extractor("dino", str(tiny_feature_model_path("tiny-clip")), "cpu")
    with pytest.raises(ModelLoadError, match="tiny-clip / tiny-dino"):
        load_extractor("clip", "nobody/no-such-clip", "cpu")
