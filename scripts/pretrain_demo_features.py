"""Pre-train the offline feature model `demo-dino` on the toy scenes of sdtune_ui/models/demo/scenes.py.

A small DINOv2 (transformers' `Dinov2Model`, 64 px, patch 8, with the `BitImageProcessor` of tiny-dino) whose
pooled CLS feature sees what a scene shows, so the metrics' DINO numbers on the demo model (demo-sd1) mean
something: which object (robot, cat, house, car, tree), its colour, the background, and whether the robot is
the example subject "sks robot" (red, round head, visor, antenna) or an ordinary one. The random `tiny-dino`
only follows pixels: it scored an over-trained run's class images, which draw the red subject, as further
from the subject than the base's.

Objective: supervised. Linear heads on the pooled output predict the four facts (cross-entropy each; the heads
are thrown away). The scenes come with exact labels, so teaching the factors directly takes minutes on one CPU
thread; a self-supervised objective (DINO's self-distillation, or contrastive views) at this size would need
long training and augmentations that must not erase colour, which is what the demo's subject differs by most.
The subject is labelled a robot (object head) in red (colour head) and the subject head tells it apart, so it
lies near red robots and further from other robots, as for a real DINO a particular robot lies near robots.

The metrics feed it what demo-sd1 draws, which is softer than the drawn scenes and has its VAE's texture. So a
share of the pictures (--decoded-share) goes once through demo-sd1's VAE (encode, decode) before training, and
every picture is blurred, noised and flipped at random while training; the labels are smoothed (0.1), so
a half-drawn subject lands between the subject and an ordinary red robot instead of snapping to either.

    python scripts/pretrain_demo_features.py --out sdtune_ui/models/demo/demo-dino

Shipped weights: see SHIPPED below.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from sdtune_ui.evaluate.tiny import IMAGENET_MEAN, IMAGENET_STD, TINY_IMAGE_SIZE  # noqa: E402
from sdtune_ui.models.demo import scenes  # noqa: E402

SHIPPED = ("the script's defaults on a 2-core CPU shared with other work, one torch thread: 411 s in all, 327 s of "
           "them training; demo-dino/training_args.json records the arguments, held-out accuracies and times")
HEADS = {"object": len(scenes.OBJECTS), "colour": len(scenes.COLOURS), "background": len(scenes.BACKGROUNDS),
         "subject": 2}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def build_model(args: argparse.Namespace):
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    config = Dinov2Config(hidden_size=args.width, num_hidden_layers=args.layers, num_attention_heads=4,
                          mlp_ratio=2, image_size=TINY_IMAGE_SIZE, patch_size=8)
    processor = BitImageProcessor(
        do_resize=True, size={"shortest_edge": TINY_IMAGE_SIZE}, do_center_crop=True,
        crop_size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE}, do_normalize=True,
        image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD, do_convert_rgb=True)
    return Dinov2Model(config), processor


# ---------------------------------------------------------------- the picture set

def labelled_scene(seed: int, subject_share: float) -> tuple[scenes.Scene, bool]:
    """Scene number `seed`: a pre-training scene, or (a `subject_share` of them) the example subject."""
    rng = random.Random(seed)
    scene = scenes.random_scene(rng)
    if rng.random() < subject_share:
        return replace(scene, obj="robot", colour="red", scale=rng.uniform(0.5, 0.8)), True
    return scene, False


def picture_set(first_seed: int, count: int, subject_share: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """uint8 pictures [N, 3, 64, 64] and their labels, one tensor per head."""
    pixels, labels = [], {name: [] for name in HEADS}
    for seed in range(first_seed, first_seed + count):
        scene, subject = labelled_scene(seed, subject_share)
        pixels.append(np.asarray(scenes.draw_scene(scene, TINY_IMAGE_SIZE, subject=subject)))
        labels["object"].append(scenes.OBJECTS.index(scene.obj))
        labels["colour"].append(list(scenes.COLOURS).index(scene.colour))
        labels["background"].append(scenes.BACKGROUNDS.index(scene.background))
        labels["subject"].append(int(subject))
    images = torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2).contiguous()
    return images, {name: torch.tensor(values) for name, values in labels.items()}


@torch.no_grad()
def through_vae(pixels: torch.Tensor, folder: Path, batch: int = 64) -> torch.Tensor:
    """The pictures as the demo model's VAE gives them back (encoded, then decoded): its texture and softness."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", torch_dtype=torch.float32).eval()
    decoded = [vae.decode(vae.encode(pixels[i:i + batch].float() / 127.5 - 1).latent_dist.mode()).sample
               for i in range(0, len(pixels), batch)]
    return ((torch.cat(decoded).clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def normalise(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> the processor's input (rescale, ImageNet mean and std)."""
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (pixels.float() / 255 - mean) / std


def augment(pixels: torch.Tensor, generator: torch.Generator, max_blur: float, max_noise: float) -> torch.Tensor:
    """Random horizontal flip, Gaussian blur (sigma up to `max_blur` px) and noise, on [0, 255] floats."""
    n = len(pixels)
    images = pixels.float()
    flip = torch.rand(n, generator=generator) < 0.5
    images[flip] = images[flip].flip(-1)
    sigma = torch.rand(n, generator=generator) * max_blur
    offsets = torch.arange(-2, 3, dtype=torch.float32)
    kernel = torch.exp(-offsets[None] ** 2 / (2 * sigma[:, None].clamp(min=1e-3) ** 2))
    kernel = kernel / kernel.sum(dim=1, keepdim=True)                   # [N, 5], one 1-d kernel per picture
    channels = images.reshape(1, n * 3, *images.shape[-2:])
    per_channel = kernel.repeat_interleave(3, dim=0)
    channels = F.conv2d(F.pad(channels, (2, 2, 0, 0), mode="replicate"), per_channel.view(n * 3, 1, 1, 5),
                        groups=n * 3)
    channels = F.conv2d(F.pad(channels, (0, 0, 2, 2), mode="replicate"), per_channel.view(n * 3, 1, 5, 1),
                        groups=n * 3)
    images = channels.view_as(images)
    noise = torch.randn(images.shape, generator=generator) * (torch.rand(n, generator=generator) * max_noise * 255
                                                              ).view(n, 1, 1, 1)
    return (images + noise).clamp(0, 255)


# ---------------------------------------------------------------- training

def schedule(step: int, steps: int, warmup: int = 100) -> float:
    return min(1.0, step / warmup) * (0.05 + 0.475 * (1 + math.cos(math.pi * step / steps)))


def accuracies(model, heads, pixels: torch.Tensor, labels: dict[str, torch.Tensor]) -> dict[str, float]:
    with torch.no_grad():
        pooled = torch.cat([model(pixel_values=normalise(pixels[i:i + 256])).pooler_output
                            for i in range(0, len(pixels), 256)])
    found = {name: float((heads[name](pooled).argmax(-1) == labels[name]).float().mean()) for name in HEADS}
    subjects = labels["subject"] == 1
    found["subject_recall"] = float((heads["subject"](pooled[subjects]).argmax(-1) == 1).float().mean())
    return found


def train(model, pixels: torch.Tensor, labels: dict[str, torch.Tensor], args: argparse.Namespace):
    heads = torch.nn.ModuleDict({name: torch.nn.Linear(args.width, classes) for name, classes in HEADS.items()})
    params = list(model.parameters()) + list(heads.parameters())
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
    generator = torch.Generator().manual_seed(args.seed + 1)
    model.train()
    started = time.monotonic()
    for step in range(1, args.steps + 1):
        for group in optimizer.param_groups:
            group["lr"] = args.lr * schedule(step, args.steps)
        index = torch.randint(len(pixels), (args.batch,), generator=generator)
        batch = augment(pixels[index], generator, args.max_blur, args.max_noise)
        pooled = model(pixel_values=normalise(batch)).pooler_output
        losses = {name: F.cross_entropy(heads[name](pooled), labels[name][index], label_smoothing=args.smoothing)
                  for name in HEADS}
        loss = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        if step % args.log_every == 0:
            parts = " ".join(f"{name} {value.item():.3f}" for name, value in losses.items())
            log(f"step {step}/{args.steps} {parts} ({(time.monotonic() - started) / step:.3f} s/step)")
    model.eval()
    return heads, time.monotonic() - started


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add = parser.add_argument
    add("--out", type=Path, default=REPO / "sdtune_ui" / "models" / "demo" / "demo-dino")
    add("--seed", type=int, default=0)
    add("--images", type=int, default=8000, help="pictures in the training set")
    add("--held-out", type=int, default=1000, help="further pictures, to report accuracies on")
    add("--subject-share", type=float, default=0.15, help="share of the pictures that show the example subject")
    add("--width", type=int, default=64)
    add("--layers", type=int, default=4)
    add("--steps", type=int, default=1500)
    add("--batch", type=int, default=64)
    add("--lr", type=float, default=1e-3)
    add("--weight-decay", type=float, default=0.05)
    add("--smoothing", type=float, default=0.1, help="label smoothing of the heads' cross-entropy")
    add("--decoded-share", type=float, default=0.25, help="share of the pictures passed through --vae's VAE")
    add("--vae", type=Path, default=REPO / "sdtune_ui" / "models" / "demo" / "demo-sd1",
        help="the diffusers pipeline folder whose VAE re-draws --decoded-share of the pictures")
    add("--max-blur", type=float, default=1.5, help="largest Gaussian blur sigma of the augmentation, in pixels")
    add("--max-noise", type=float, default=0.06, help="largest noise std of the augmentation (pixel range 1)")
    add("--threads", type=int, default=1, help="torch CPU threads (0: torch's default; results depend on it)")
    add("--log-every", type=int, default=100)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.monotonic()
    torch.manual_seed(args.seed)
    model, processor = build_model(args)
    log(f"parameters: {sum(p.numel() for p in model.parameters()) / 1e6:.3f}M")
    pixels, labels = picture_set(0, args.images, args.subject_share)
    held_pixels, held_labels = picture_set(10_000_000, args.held_out, args.subject_share)
    log(f"drew {len(pixels)} + {len(held_pixels)} pictures ({int(labels['subject'].sum())} of the subject)")
    decoded = int(args.decoded_share * len(pixels))   # the pictures are in random order: the first ones will do
    if decoded:
        pixels[:decoded] = through_vae(pixels[:decoded], args.vae)
        log(f"{decoded} pictures re-drawn by the VAE of {args.vae.name}")
    heads, seconds = train(model, pixels, labels, args)
    found = accuracies(model, heads, held_pixels, held_labels)
    log(f"held-out accuracy: {', '.join(f'{k} {v:.3f}' for k, v in found.items())}")
    model.save_pretrained(args.out, safe_serialization=True)
    processor.save_pretrained(args.out)
    record = {k: _portable(v) for k, v in vars(args).items() if k != "out"}
    record.update(held_out_accuracy={k: round(v, 4) for k, v in found.items()}, train_seconds=round(seconds),
                  total_seconds=round(time.monotonic() - started))
    (args.out / "training_args.json").write_text(json.dumps(record, indent=1) + "\n")
    log(f"saved to {args.out} after {record['total_seconds']} s")


def _portable(value: object) -> object:
    """Paths inside the repository as relative ones (the record reads the same on every machine)."""
    if isinstance(value, Path):
        return str(value.relative_to(REPO)) if value.is_relative_to(REPO) else str(value)
    return value


if __name__ == "__main__":
    main()
