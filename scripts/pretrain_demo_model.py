"""Pre-train the offline demo model `demo-sd1` on the toy scenes of sdtune_ui/models/demo/scenes.py.

A small Stable Diffusion 1.x pipeline (AutoencoderKL, UNet2DConditionModel, CLIPTextModel, a CLIP tokenizer
with a hand-written vocabulary, DDIM scheduler) that really draws: "a photo of a blue robot on a beach" gives
a blue robot on a beach, at 64x64 pixels. It is small so that the demo and the tests fine-tune it on a CPU
in about a minute. Three stages, each seeded:

1. draw the picture set (scenes.sample(seed) for seed in range(--images), a pool of processes);
2. train the VAE to reconstruct random 32-pixel crops of the pictures (L1 + MSE, a small KL term; it is
   convolutional, so crops teach it the whole pictures at a quarter of the cost), then set its
   scaling_factor so latents have unit variance, as SD's 0.18215 does for its VAE;
3. encode every picture once, then train the UNet and the text encoder together to predict the noise
   (epsilon, Min-SNR weighting) under a caption drawn afresh each step (with or without colour and place,
   10% empty so classifier-free guidance works), keeping an EMA of both, which is what is saved.

    python scripts/pretrain_demo_model.py --out sdtune_ui/models/demo/demo-sd1 --preview preview.png

Shipped weights: see SHIPPED below (command, device, time).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import multiprocessing
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from sdtune_ui.models.demo import scenes  # noqa: E402
from sdtune_ui.models.tiny import _clip_tokenizer  # noqa: E402

SHIPPED = ("the script's defaults on a CPU (demo-sd1/training_args.json: 20,000 pictures, VAE 1,200 steps, UNet "
           "5,000 steps of 32); the time it took was not recorded")

# Whole-word tokens: every caption word, the words of common prompts, and rare tokens for fine-tuning.
WORDS = sorted(set(
    "a an the of in on at with and photo picture painting style dog person man woman toy sks zwx ohwx".split()
    + [w for phrase in scenes.CAPTION_STARTS + scenes.BACKGROUNDS for w in phrase.split()]
    + list(scenes.COLOURS) + list(scenes.OBJECTS)
))
PREVIEW_PROMPTS = ("a photo of a robot", "a photo of a cat", "a photo of a house", "a photo of a car",
                   "a photo of a tree", "a photo of a blue robot on a beach", "a photo of a red car in the snow",
                   "a photo of a green house in a forest", "a photo of sks robot")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# ---------------------------------------------------------------- the pipeline

def build_pipeline(args: argparse.Namespace):
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(args.seed)
    tokenizer = CLIPTokenizer.from_pretrained(args.tokenizer) if args.tokenizer else _clip_tokenizer(WORDS)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=args.text_width, intermediate_size=2 * args.text_width,
        num_hidden_layers=args.text_layers, num_attention_heads=4, max_position_embeddings=77,
        bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_act="gelu", projection_dim=args.text_width))
    vae_levels = int(math.log2(args.size // args.latent_size)) + 1
    vae = AutoencoderKL(
        block_out_channels=tuple(args.vae_channels[:vae_levels]), in_channels=3, out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * vae_levels, up_block_types=("UpDecoderBlock2D",) * vae_levels,
        latent_channels=4, norm_num_groups=8, sample_size=args.size, layers_per_block=1,
        force_upcast=False)  # like SD1's VAE: half precision is fine (True would keep it float32 in bf16 runs)
    levels = len(args.unet_channels)
    down = ("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (levels - 1)
    up = ("CrossAttnUpBlock2D",) * (levels - 1) + ("UpBlock2D",)
    unet = UNet2DConditionModel(
        sample_size=args.latent_size, in_channels=4, out_channels=4, layers_per_block=args.unet_layers,
        block_out_channels=tuple(args.unet_channels), down_block_types=down, up_block_types=up,
        cross_attention_dim=args.text_width, attention_head_dim=4, norm_num_groups=16)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              num_train_timesteps=1000, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


# ---------------------------------------------------------------- the picture set

def _draw(args: tuple[int, int]) -> tuple[bytes, tuple[int, int, int]]:
    seed, size = args
    rng = random.Random(seed)
    scene = scenes.random_scene(rng)
    attributes = (scenes.OBJECTS.index(scene.obj), list(scenes.COLOURS).index(scene.colour),
                  scenes.BACKGROUNDS.index(scene.background))
    return scenes.draw_scene(scene, size).tobytes(), attributes


def picture_set(count: int, size: int, workers: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 pictures [N, 3, H, W] and their (object, colour, background) indices [N, 3]."""
    jobs = [(seed, size) for seed in range(count)]
    if workers > 1:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            drawn = pool.map(_draw, jobs, chunksize=256)
    else:
        drawn = [_draw(job) for job in jobs]
    pixels = np.frombuffer(b"".join(d[0] for d in drawn), dtype=np.uint8).reshape(count, size, size, 3)
    return torch.from_numpy(pixels.copy()).permute(0, 3, 1, 2).contiguous(), torch.tensor([d[1] for d in drawn])


class Captions:
    """Token ids of every caption a scene can have, so a step's captions are a table lookup."""

    def __init__(self, tokenizer):
        self.starts = scenes.CAPTION_STARTS
        colours, objects, places = list(scenes.COLOURS), list(scenes.OBJECTS), list(scenes.BACKGROUNDS)
        texts = [""]  # index 0: the empty caption (classifier-free guidance)
        for start, colour, obj, place in itertools.product(self.starts, [None] + colours, objects, [None] + places):
            scene = scenes.Scene(obj, colour or "red", place or "on a beach", 0, 0, 0)
            texts.append(scene.caption(start, with_colour=colour is not None, with_background=place is not None))
        self.texts = texts
        self.ids = tokenizer(texts, padding="max_length", max_length=77, truncation=True,
                             return_tensors="pt").input_ids
        self.shape = (len(self.starts), len(colours) + 1, len(objects), len(places) + 1)

    def draw(self, attributes: torch.Tensor, generator: torch.Generator, dropout: float) -> torch.Tensor:
        """Caption indices for a batch: random phrasing, colour kept 75%, place kept 60%, empty `dropout`."""
        n = len(attributes)
        start = torch.randint(len(self.starts), (n,), generator=generator)
        colour = torch.where(torch.rand(n, generator=generator) < 0.75, attributes[:, 1] + 1, 0)
        place = torch.where(torch.rand(n, generator=generator) < 0.6, attributes[:, 2] + 1, 0)
        _, colours, objects, places = self.shape
        index = 1 + ((start * colours + colour) * objects + attributes[:, 0]) * places + place
        return torch.where(torch.rand(n, generator=generator) < dropout, 0, index)


# ---------------------------------------------------------------- training

def to_unit(pixels: torch.Tensor) -> torch.Tensor:
    return pixels.float() / 127.5 - 1


def schedule(step: int, steps: int, started: float, budget_s: float, warmup: int = 200) -> float:
    """Learning-rate factor: linear warm-up, then cosine down to 10% by the last step or the time budget."""
    progress = min(1.0, max(step / steps, (time.monotonic() - started) / budget_s))
    return min(1.0, step / warmup) * (0.1 + 0.45 * (1 + math.cos(math.pi * progress)))


def out_of_budget(step: int, steps: int, started: float, budget_s: float) -> bool:
    return step >= steps or time.monotonic() - started >= budget_s


def random_crops(pictures: torch.Tensor, size: int, generator: torch.Generator, align: int = 4) -> torch.Tensor:
    """A `size`-pixel square from each picture, at a random place on an `align`-pixel grid (the VAE's stride)."""
    if size >= pictures.shape[-1]:
        return pictures
    places = torch.randint((pictures.shape[-1] - size) // align + 1, (len(pictures), 2), generator=generator) * align
    return torch.stack([p[:, y:y + size, x:x + size] for p, (y, x) in zip(pictures, places.tolist())])


def train_vae(vae, pictures: torch.Tensor, args: argparse.Namespace, device: torch.device) -> None:
    vae.to(device).train()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(args.seed + 1)
    started, step = time.monotonic(), 0
    while not out_of_budget(step, args.vae_steps, started, args.vae_time_budget_s):
        step += 1
        for group in optimizer.param_groups:
            group["lr"] = args.vae_lr * schedule(step, args.vae_steps, started, args.vae_time_budget_s, 100)
        index = torch.randint(len(pictures), (args.vae_batch,), generator=generator)
        batch = to_unit(random_crops(pictures[index], args.vae_crop, generator)).to(device)
        posterior = vae.encode(batch).latent_dist
        decoded = vae.decode(posterior.sample()).sample
        recon = F.l1_loss(decoded, batch) + F.mse_loss(decoded, batch)
        loss = recon + args.kl_weight * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        if step % args.log_every == 0:
            log(f"vae step {step}/{args.vae_steps} l1+mse {recon.item():.4f} "
                f"({(time.monotonic() - started) / step:.3f} s/step)")
    log(f"vae: {step} steps in {time.monotonic() - started:.0f} s")
    vae.eval().requires_grad_(False)


@torch.no_grad()
def encode_all(vae, pictures: torch.Tensor, device: torch.device, batch: int = 512) -> torch.Tensor:
    latents = [vae.encode(to_unit(pictures[i:i + batch]).to(device)).latent_dist.mode().cpu()
               for i in range(0, len(pictures), batch)]
    return torch.cat(latents)


def train_denoiser(pipe, latents: torch.Tensor, attributes: torch.Tensor, captions: Captions,
                   args: argparse.Namespace, device: torch.device) -> None:
    """Train the UNet (and, with --text-lr-scale > 0, the text encoder) to predict the noise.

    The text encoder trains at a fraction of the UNet's learning rate: left frozen at its random
    initialisation, the same budget drew muddled classes and colours (its hidden states do not separate the
    words well enough). A trained encoder reads the never-seen "sks" in "sks robot" much like "a robot", so
    the demo's LoRA also trains the text encoder (--train-text-encoder), as DreamBooth does.
    """
    from diffusers import DDPMScheduler
    from diffusers.training_utils import EMAModel, compute_snr

    unet, text_encoder = pipe.unet.to(device).train(), pipe.text_encoder.to(device)
    train_text = args.text_lr_scale > 0
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    groups = [{"params": list(unet.parameters()), "lr": args.lr}]
    if train_text:
        groups.append({"params": list(text_encoder.train().parameters()), "lr": args.lr * args.text_lr_scale})
    else:
        text_encoder.eval().requires_grad_(False)
    params = [p for group in groups for p in group["params"]]
    optimizer = torch.optim.AdamW(groups, weight_decay=1e-2)
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    ema = EMAModel(params, decay=args.ema_decay, use_ema_warmup=True, power=0.75, foreach=True)
    ids = captions.ids.to(device)
    with torch.no_grad():
        frozen_hidden = None if train_text else torch.cat([text_encoder(ids[i:i + 256])[0] for i in
                                                           range(0, len(ids), 256)])
    latents = latents.to(device) * pipe.vae.config.scaling_factor
    generator = torch.Generator().manual_seed(args.seed + 2)
    device_generator = torch.Generator(device).manual_seed(args.seed + 3)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    started, step = time.monotonic(), 0
    while not out_of_budget(step, args.steps, started, args.time_budget_s):
        step += 1
        factor = schedule(step, args.steps, started, args.time_budget_s)
        for group, base_lr in zip(optimizer.param_groups, base_lrs):
            group["lr"] = base_lr * factor
        index = torch.randint(len(latents), (args.batch,), generator=generator)
        caption_index = captions.draw(attributes[index], generator, args.caption_dropout).to(device)
        clean = latents[index.to(device)]
        noise = torch.randn(clean.shape, generator=device_generator, device=device)
        timesteps = torch.randint(0, 1000, (args.batch,), generator=device_generator, device=device)
        noisy = noise_scheduler.add_noise(clean, noise, timesteps)
        with autocast:
            hidden = text_encoder(ids[caption_index])[0] if train_text else frozen_hidden[caption_index]
            prediction = unet(noisy, timesteps, hidden).sample
        per_sample = F.mse_loss(prediction.float(), noise, reduction="none").mean(dim=(1, 2, 3))
        snr = compute_snr(noise_scheduler, timesteps)
        loss = (per_sample * torch.clamp(snr, max=args.snr_gamma) / snr).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        ema.step(params)
        if step % args.log_every == 0:
            log(f"unet step {step}/{args.steps} mse {per_sample.mean().item():.4f} "
                f"({(time.monotonic() - started) / step:.3f} s/step)")
    log(f"unet: {step} steps of {args.batch} in {time.monotonic() - started:.0f} s")
    ema.copy_to(params)
    unet.eval().requires_grad_(False)
    text_encoder.eval().requires_grad_(False)


@torch.no_grad()
def save_preview(pipe, path: Path, seeds: int = 4, steps: int = 25, guidance: float = 5.0) -> None:
    pipe.set_progress_bar_config(disable=True)
    from PIL import Image

    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    grid = Image.new("RGB", (size * seeds, size * len(PREVIEW_PROMPTS)))
    for row, prompt in enumerate(PREVIEW_PROMPTS):
        for seed in range(seeds):
            image = pipe(prompt, num_inference_steps=steps, guidance_scale=guidance,
                         generator=torch.Generator(pipe.device).manual_seed(seed)).images[0]
            grid.paste(image, (seed * size, row * size))
    grid.save(path)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add = parser.add_argument
    add("--out", type=Path, default=REPO / "sdtune_ui" / "models" / "demo" / "demo-sd1")
    add("--preview", type=Path, default=None, help="also save a grid of sample images here")
    add("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    add("--seed", type=int, default=0)
    add("--tokenizer", default="", help="a saved tokenizer folder to use instead of building one")
    add("--save-dtype", default="float16", choices=("float16", "float32"),
        help="dtype of the saved weights (float16 halves the package size; loading upcasts)")
    add("--images", type=int, default=20_000, help="pictures in the training set")
    add("--workers", type=int, default=max(1, multiprocessing.cpu_count()))
    add("--size", type=int, default=64)
    add("--latent-size", type=int, default=16)
    add("--vae-channels", type=int, nargs="+", default=[16, 32, 64, 64])
    add("--unet-channels", type=int, nargs="+", default=[32, 64, 64])
    add("--unet-layers", type=int, default=1)
    add("--text-width", type=int, default=64)
    add("--text-layers", type=int, default=2)
    add("--vae-from", default="", help="a saved demo pipeline whose VAE to reuse (skips the VAE stage; that stage "
        "is seeded, so the OUT of a run stopped after it gives the same model)")
    add("--vae-steps", type=int, default=1200)
    add("--vae-batch", type=int, default=64)
    add("--vae-crop", type=int, default=32, help="train the VAE on random crops of this size (it is convolutional: "
        "what it learns on crops holds for whole pictures, at a quarter of the cost)")
    add("--vae-lr", type=float, default=1e-3)
    add("--kl-weight", type=float, default=1e-6)
    add("--steps", type=int, default=5000)
    add("--batch", type=int, default=32)
    add("--lr", type=float, default=1e-3)
    add("--text-lr-scale", type=float, default=0.3, help="text encoder lr / UNet lr (0: keep it frozen)")
    add("--ema-decay", type=float, default=0.999)
    add("--snr-gamma", type=float, default=5.0)
    add("--caption-dropout", type=float, default=0.1)
    add("--vae-time-budget-s", type=float, default=float("inf"), help="end the VAE stage after this long")
    add("--time-budget-s", type=float, default=float("inf"), help="end the UNet stage after this long")
    add("--threads", type=int, default=1, help="torch CPU threads (0: torch's default; results depend on it)")
    add("--log-every", type=int, default=100)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    started = time.monotonic()
    pipe = build_pipeline(args)
    sizes = {name: sum(p.numel() for p in getattr(pipe, name).parameters()) for name in ("vae", "unet", "text_encoder")}
    log(f"parameters: {', '.join(f'{k} {v / 1e6:.2f}M' for k, v in sizes.items())}; device {device}")
    pictures, attributes = picture_set(args.images, args.size, args.workers)
    log(f"drew {len(pictures)} pictures")
    if args.vae_from:  # reuse a trained VAE (same architecture), e.g. to re-train only the UNet
        from diffusers import AutoencoderKL

        pipe.vae = AutoencoderKL.from_pretrained(args.vae_from, subfolder="vae").requires_grad_(False).to(device)
    else:
        train_vae(pipe.vae, pictures, args, device)
        # Saved at once (float32, as trained): a run stopped in the long UNet stage goes on with --vae-from OUT.
        pipe.vae.save_pretrained(args.out / "vae", safe_serialization=True)
    latents = encode_all(pipe.vae, pictures, device)
    pipe.vae.register_to_config(scaling_factor=round(1.0 / latents.std().item(), 5))
    log(f"latents {tuple(latents.shape[1:])}, scaling_factor {pipe.vae.config.scaling_factor}")
    train_denoiser(pipe, latents, attributes, Captions(pipe.tokenizer), args, device)
    pipe.to("cpu", getattr(torch, args.save_dtype))
    pipe.save_pretrained(args.out, safe_serialization=True)
    pipe.to(torch.float32)
    (args.out / "training_args.json").write_text(json.dumps(
        {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k not in ("out", "preview")},
        indent=1) + "\n")
    log(f"saved to {args.out} after {time.monotonic() - started:.0f} s")
    if args.preview:
        save_preview(pipe.to(device), args.preview)
        log(f"preview: {args.preview}")


if __name__ == "__main__":
    main()
