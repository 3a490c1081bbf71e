"""Built-in offline feature models: `tiny-clip` and `tiny-dino`, the real architectures at toy width.

Like the tiny diffusion models (sdtune_ui/models/tiny.py) they are built once from configs with a fixed seed,
saved with `save_pretrained` into the cache and from then on loaded through the same `from_pretrained` path
a Hub model takes. Their weights are random: they give the tests and the offline demo real numbers that
are deterministic functions of the pixels (identical images score 1, different ones less), not judgements
a trained CLIP or DINOv2 would make. Initialised wider than transformers' default (0.02), the CLS feature
follows the picture rather than the fixed CLS/position embeddings: on the example dataset at the default
width, pure noise scored closer to the robots (0.95) than the robots to each other (0.92); now 0.32 vs 0.55.

`demo-dino` is the trained one: a DINOv2 of the same size class whose weights were trained on the demo model's
scenes (scripts/pretrain_demo_features.py) and ship with the package (sdtune_ui/models/demo/demo-dino). Its
features see object, colour, background and the example subject, so on demo-sd1's pictures its numbers are
judgements of what the pictures show, like a real DINO's; on any other pictures they mean little.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from sdtune_ui.models.demo import DEMO_FEATURE_MODELS
from sdtune_ui.paths import cache_dir

TINY_FEATURE_MODELS = ("tiny-clip", "tiny-dino")
OFFLINE_FEATURE_MODELS = (*TINY_FEATURE_MODELS, *DEMO_FEATURE_MODELS)   # loadable by name, no network
TINY_IMAGE_SIZE = 64
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def _tiny_clip() -> tuple[torch.nn.Module, object]:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from sdtune_ui.models.tiny import _clip_tokenizer  # the tiny SD models' tokenizer: same words, same ids

    tokenizer = _clip_tokenizer()
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=77, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=TINY_IMAGE_SIZE, patch_size=8, initializer_factor=5.0),
        projection_dim=32,
        initializer_factor=5.0,
    )
    image_processor = CLIPImageProcessor(
        do_resize=True, size={"shortest_edge": TINY_IMAGE_SIZE}, do_center_crop=True,
        crop_size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE}, do_normalize=True,
        image_mean=CLIP_MEAN, image_std=CLIP_STD)
    return CLIPModel(config), CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)


def _tiny_dino() -> tuple[torch.nn.Module, object]:
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    config = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, mlp_ratio=2,
                          image_size=TINY_IMAGE_SIZE, patch_size=8, initializer_range=0.3)
    processor = BitImageProcessor(
        do_resize=True, size={"shortest_edge": TINY_IMAGE_SIZE}, do_center_crop=True,
        crop_size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE}, do_normalize=True,
        image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD, do_convert_rgb=True)
    return Dinov2Model(config), processor


def offline_feature_model_path(name: str) -> Path:
    """The folder of a built-in feature model: demo-dino's shipped one, or a tiny model's (built on first use)."""
    if name in DEMO_FEATURE_MODELS:
        return DEMO_FEATURE_MODELS[name]
    return tiny_feature_model_path(name)


def tiny_feature_model_path(name: str) -> Path:
    """The saved folder of `tiny-clip` or `tiny-dino` (model + processor), built on first use."""
    builders = {"tiny-clip": _tiny_clip, "tiny-dino": _tiny_dino}
    if name not in builders:
        raise ValueError(f"unknown tiny feature model {name!r}; choose one of {', '.join(TINY_FEATURE_MODELS)}")
    target = cache_dir("models") / name
    if (target / "config.json").exists():
        return target
    with torch.random.fork_rng(devices=[]):  # building seeds torch; leave the caller's random stream alone
        torch.manual_seed(0)
        model, processor = builders[name]()
    # Written under a temporary name and renamed: another process sees the folder complete or not at all.
    partial = target.with_name(f"{name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial, safe_serialization=True)
    processor.save_pretrained(partial)
    if (target / "config.json").exists():  # built meanwhile by another process
        shutil.rmtree(partial, ignore_errors=True)
    else:
        shutil.rmtree(target, ignore_errors=True)
        partial.rename(target)
    return target
