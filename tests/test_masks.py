"""Masks (issue 14): synthetic inpainting masks, the user's masks and a PNG's alpha, and the masked loss.

The masked loss is held by gradients: what lies outside a picture's mask contributes exactly nothing to the loss or
its gradient, in the loss function and in the trainer's real step on the tiny UNet.
"""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from generate_helpers import one_torch_thread  # noqa: F401 - autouse fixture (one torch thread)
from PIL import Image

from sdtune_ui.config import TrainConfig
from sdtune_ui.data.datasets import load_folder
from sdtune_ui.data.masks import MASK_KINDS, alpha_mask, coverage, read_mask, synthetic_mask
from sdtune_ui.examples import EXAMPLE_DATASET
from sdtune_ui.runs import RunDir
from sdtune_ui.train.conditioning import masked_mean


def test_synthetic_masks_are_seeded_and_cover_a_quarter_on_average():
    assert np.array_equal(synthetic_mask(64, 48, 7), synthetic_mask(64, 48, 7))
    masks = [synthetic_mask(64, 48, seed) for seed in range(400)]
    assert all(m.shape == (48, 64) and set(np.unique(m)) <= {0.0, 1.0} for m in masks)
    whole = [m for m in masks if m.all()]
    partial = [coverage(m) for m in masks if not m.all()]
    assert 0.18 < len(whole) / len(masks) < 0.32          # whole_share 0.25 (RunwayML)
    assert 0.22 < np.mean(partial) < 0.29                  # ~25% of the picture
    assert min(partial) > 0.05 and max(partial) < 0.5
    assert sum(not m.any() for m in masks) == 0
    assert all(not synthetic_mask(64, 64, seed, whole_share=0.0).all() for seed in range(50))


def test_the_three_kinds_of_synthetic_masks_all_occur():
    """Rectangles fill their bounding box, ellipses ~79% of it, brush strokes much less."""
    kinds = Counter()
    for seed in range(120):
        mask = synthetic_mask(96, 96, seed, whole_share=0.0)
        ys, xs = np.nonzero(mask)
        fill = mask.sum() / ((ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1))
        kinds["rectangle" if fill > 0.97 else "ellipse" if fill > 0.7 else "strokes"] += 1
    assert set(kinds) == set(MASK_KINDS) and min(kinds.values()) > 20


def test_user_masks_and_alpha_channels(tmp_path):
    painted = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    painted.paste((255, 255, 255, 255), (0, 0, 4, 8))        # a painted layer: transparent = black
    assert np.asarray(read_mask_of(painted, tmp_path)).tolist()[0] == [255] * 4 + [0] * 4
    opaque = tmp_path / "opaque.png"
    Image.new("RGBA", (8, 8), (10, 20, 30, 255)).save(opaque)
    assert alpha_mask(opaque) is None
    cutout = tmp_path / "cutout.png"
    image = Image.new("RGBA", (8, 8), (10, 20, 30, 0))
    image.paste((200, 0, 0, 255), (2, 2, 6, 6))
    image.save(cutout)
    assert np.asarray(alpha_mask(cutout)).sum() == 16 * 255


def read_mask_of(image: Image.Image, folder: Path) -> Image.Image:
    path = folder / "layer.png"
    image.save(path)
    return read_mask(path)


def test_the_loader_pairs_pictures_with_masks_alpha_and_conditions(tmp_path):
    data = masked_dataset(tmp_path)
    Image.new("RGB", (64, 64)).save(data / "robot_01-condlabel.png")
    examples = {ex.name: ex for ex in load_folder(data).examples}
    assert examples["robot_00.png"].mask_path.endswith("robot_00-masklabel.png")
    assert examples["robot_01.png"].condition_path.endswith("robot_01-condlabel.png")
    assert examples["robot_02.png"].alpha is not None and examples["robot_02.png"].mask_path is None
    assert examples["robot_03.png"].alpha is None and examples["robot_03.png"].mask_path is None


def masked_dataset(tmp_path: Path) -> Path:
    """Four robots: robot_00 with a mask of its left half, robot_02 transparent outside its middle."""
    data = tmp_path / "masked"
    data.mkdir()
    for i in range(4):
        shutil.copy(EXAMPLE_DATASET / f"robot_0{i}.png", data)
        shutil.copy(EXAMPLE_DATASET / f"robot_0{i}.txt", data)
    left = Image.new("L", (128, 128), 0)
    left.paste(255, (0, 0, 64, 128))
    left.save(data / "robot_00-masklabel.png")
    cutout = Image.open(data / "robot_02.png").convert("RGBA")
    alpha = Image.new("L", cutout.size, 0)
    alpha.paste(255, (32, 32, 96, 96))
    cutout.putalpha(alpha)
    cutout.save(data / "robot_02.png")
    return data


def test_masked_mean_gives_no_gradient_outside_the_mask():
    torch.manual_seed(0)
    prediction = torch.randn(2, 4, 8, 8, requires_grad=True)
    target = torch.randn(2, 4, 8, 8, requires_grad=True)
    mask = torch.zeros(2, 1, 8, 8)
    mask[:, :, 2:6, 1:5] = 1
    loss = masked_mean((prediction - target) ** 2, mask).mean()
    loss.backward()
    outside = (mask == 0).expand_as(prediction)
    assert prediction.grad[outside].abs().max() == 0 and target.grad[outside].abs().max() == 0
    assert prediction.grad[~outside].abs().min() > 0
    # Normalised per picture: the loss is the mean error inside the mask, whatever the mask's size.
    inside = ((prediction - target) ** 2).detach()[~outside].view(2, 4, 4, 4)
    assert torch.allclose(loss, inside.mean())
    # unmasked_weight 1 is the plain mean; 0.5 counts the outside half as much.
    errors = ((prediction - target) ** 2).detach()
    assert torch.allclose(masked_mean(errors, mask, 1.0), errors.mean(dim=(1, 2, 3)))
    half = masked_mean(errors, mask, 0.5)
    assert torch.all(half != masked_mean(errors, mask)) and torch.all(half != errors.mean(dim=(1, 2, 3)))


def test_the_trainers_masked_loss_ignores_what_lies_outside_the_mask(tmp_path):
    """The real step on the tiny UNet: the loss's gradient with respect to the UNet's prediction (and so any
    contribution of the target) is exactly zero at every latent pixel outside robot_00's mask (its left half)."""
    from sdtune_ui.train.trainer import Trainer

    data = masked_dataset(tmp_path)
    config = TrainConfig(model="tiny-sd1", method="lora", data=str(data), resolution=32, masked_loss=True,
                         max_train_steps=1, validation_steps=0, checkpointing_steps=0, random_flip=False)
    trainer = Trainer(config, RunDir(tmp_path / "run").create())
    trainer.setup()
    item = next(it for it in trainer.data.items if it.name == "robot_00.png")
    batch = trainer._assemble([item], [0], [item.caption], torch.randn(1, 4, 16, 16), torch.tensor([500]), 0)
    assert batch.loss_mask[0, 0, :, :8].min() == 1 and batch.loss_mask[0, 0, :, 8:].max() == 0

    captured = {}

    def keep(module, args, output):
        output[0].retain_grad()
        captured["prediction"] = output[0]

    handle = trainer.parts.unet.register_forward_hook(keep)
    loss = trainer.compute_loss(batch)
    loss.backward()
    handle.remove()
    grad = captured["prediction"].grad
    assert grad[..., 8:].abs().max() == 0                       # right half: outside the mask
    assert (grad[..., :8].abs() > 0).float().mean() > 0.99        # left half: every latent pixel counts


def test_pictures_without_a_mask_learn_everywhere_and_alpha_counts_as_a_mask(tmp_path):
    from sdtune_ui.train.trainer import Trainer

    data = masked_dataset(tmp_path)
    config = TrainConfig(model="tiny-sd1", method="lora", data=str(data), resolution=32, masked_loss=True,
                         max_train_steps=1, validation_steps=0, checkpointing_steps=0)
    trainer = Trainer(config, RunDir(tmp_path / "run").create())
    trainer.setup()
    items = {it.name: it for it in trainer.data.items}
    def batch_of(name: str):
        return trainer._assemble([items[name]], [0], [items[name].caption], torch.randn(1, 4, 16, 16),
                                 torch.tensor([1]), 0)

    plain = batch_of("robot_03.png")
    assert plain.loss_mask.min() == 1
    cut = batch_of("robot_02.png")
    assert cut.loss_mask[0, 0, 8, 8] == 1 and cut.loss_mask[0, 0, 0, 0] == 0   # opaque middle, transparent edge
