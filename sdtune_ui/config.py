"""TrainConfig: the one typed, validated description of a training run.

CLI flags, the app's widgets, presets and each run's saved `config.json` all come from this dataclass.
Adding a hyperparameter means adding one field here (with its help text) plus, for the app, a widget.
Validation happens before any model is loaded and reports every bad field at once.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdtune_ui import methods
from sdtune_ui.data.conditions import DEFAULT_DEPTH_MODEL, DETECTORS
from sdtune_ui.errors import ConfigError
from sdtune_ui.methods import ADAPTER, CONTROL, DEFAULT_METHOD, TOKENS, UNET_WEIGHTS, adapters

LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")
OPTIMIZERS = ("adamw", "adamw8bit", "prodigy", "adafactor")
# Optimizers from optional packages: (module, the extra that installs it: pip install sdtune_ui[extra]).
OPTIONAL_OPTIMIZERS = {"adamw8bit": ("bitsandbytes", "8bit"), "prodigy": ("prodigyopt", "prodigy")}
MIXED_PRECISION = ("auto", "no", "fp16", "bf16")
CUDA_GRAPH = ("auto", "off")
LORA_TARGETS = ("attention", "attention_ff", "all")
TI_PROPERTIES = ("object", "style", "captions")
SAMPLING_CHOICES = ("auto", "repeats", "balanced")
MAX_SEED = 2**32 - 1  # seeds are 32-bit everywhere (numpy, most tools); image i of a batch uses seed + i
TIMESTEP_SAMPLING = ("logit_normal", "mode", "uniform")
FLOW_LOSS_WEIGHTING = ("none", "sigma_sqrt", "cosmap")
QUANTIZE_BASE = ("none", "nf4", "int8")
CONDITIONING = ("dataset", *DETECTORS)


def _field(default: Any, help: str, *, choices: tuple | None = None, advanced: bool = False,
           needs: tuple[str, ...] = (), factory: Any = None, limits: tuple = ()) -> Any:
    """A dataclass field carrying the help text, allowed values and the method traits it needs to apply
    (methods/base.py: a LoRA rank needs a method that trains adapters).

    `limits`: (minimum, maximum) of a number (of a list: its length), and optionally the maximum a public app
    (share link, Space) accepts: settings nobody's GPU can honour are refused before they are queued.
    """
    minimum, maximum, public_maximum = (*limits, None, None, None)[:3]
    metadata = {"help": help, "choices": choices, "advanced": advanced, "needs": needs, "minimum": minimum,
                "maximum": maximum, "public_maximum": public_maximum}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class TrainConfig:
    # What to train
    model: str = _field("demo-sd1", "Base model: a Hub id, a local diffusers folder, a .safetensors file, "
                        "or a built-in offline model (demo-sd1 draws toy scenes; tiny-sd1, tiny-sd2-v, "
                        "tiny-sdxl, tiny-sd3, tiny-flux are random).")
    method: str = _field(DEFAULT_METHOD, "Training method.", choices=methods.method_names())
    allow_pickle: bool = _field(False, "Allow loading pickle checkpoints (.ckpt/.bin), which can run code.",
                                advanced=True)

    # Data
    data: str = _field("", "Dataset: a folder (sidecar .txt, metadata.jsonl/.csv or DreamBooth) or a Hub "
                       "dataset id.")
    image_column: str = _field("image", "Image column of a Hub dataset.", advanced=True)
    caption_column: str = _field("", "Caption column (auto-detected among text/caption/prompt when empty).",
                                 advanced=True)
    instance_prompt: str = _field("", "DreamBooth-style prompt used for every image, e.g. 'a photo of sks dog'. "
                                  "Empty: use the dataset's captions.")
    resolution: int = _field(0, "Training resolution in pixels (multiple of 8); 0 = the model's native size.",
                             limits=(0, 4096, 1024))
    center_crop: bool = _field(True, "Center-crop (else random crop; random crop turns latent caching off).",
                               advanced=True)
    random_flip: bool = _field(False, "Randomly mirror images horizontally (not for text or asymmetric subjects).")
    bucketing: bool = _field(False, "Aspect-ratio bucketing for datasets of mixed sizes.", advanced=True)
    caption_dropout: float = _field(0.1, "Fraction of steps trained with an empty prompt, so classifier-free "
                                    "guidance keeps working after fine-tuning.", limits=(0, 1))
    sampling: str = _field("auto", "How an epoch visits several concepts: 'repeats' (each image its repeats "
                           "times, kohya's rule), 'balanced' (every concept the same share, however many images "
                           "it has), or 'auto' (repeats when the dataset names any, else balanced).",
                           choices=SAMPLING_CHOICES, advanced=True)
    init_from: str = _field("", "Start from an earlier run's output, to teach subjects one after another: a run "
                            "folder, RUN@step-N, or a LoRA / embedding file or a pipeline folder. LoRA weights "
                            "continue in this run's adapter (same rank, alpha and targets), embeddings start the "
                            "tokens of the same name, a fine-tuned pipeline becomes the base of full fine-tuning.",
                            advanced=True)

    # DreamBooth prior preservation
    with_prior_preservation: bool = _field(False, "Also train on class images so the class is not forgotten.")
    class_prompt: str = _field("", "Prompt for the class, e.g. 'a photo of a dog'.")
    class_data: str = _field("", "Folder of class images; missing ones are generated by the base model "
                             "(empty: a cache folder per model and prompt).", advanced=True)
    num_class_images: int = _field(100, "How many class images to use (generated when fewer exist).",
                                   limits=(0, 10_000, 500))
    prior_loss_weight: float = _field(1.0, "Weight of the class (prior) loss.", advanced=True, limits=(0, 100))

    # Textual inversion / pivotal tuning
    placeholder_token: str = _field("<sks>", "New token that stands for the concept.", needs=(TOKENS,))
    initializer_token: str = _field("dog", "Word whose embedding starts the new token (e.g. its class).",
                                    needs=(TOKENS,))
    num_vectors: int = _field(1, "Number of embedding vectors for the new token.", needs=(TOKENS,),
                              limits=(1, 64, 16))
    concept_tokens: list[str] = _field(None, "With several concepts: one new token per concept, in the dataset's "
                                       "order, as TOKEN or TOKEN=INITIALIZER. Empty: each concept's token from the "
                                       "dataset (or <concept name>), started from its class word.",
                                       advanced=True, needs=(TOKENS,), factory=list,
                                       limits=(0, 100, 16))
    learnable_property: str = _field("object", "Prompt templates: object, style, or the dataset's captions.",
                                     choices=TI_PROPERTIES, needs=(TOKENS,))
    ti_learning_rate: float = _field(0.0, "Learning rate of the token embeddings in pivotal tuning "
                                     "(0 = same as learning_rate).", advanced=True, needs=(TOKENS, ADAPTER),
                                     limits=(0, 10))

    # LoRA and its variants (the adapter types: methods/adapters)
    adapter: str = _field(adapters.DEFAULT_ADAPTER, "Adapter type. " + "; ".join(
                          cls.help for cls in adapters.adapter_classes()) + ".",
                          choices=adapters.adapter_names(), needs=(ADAPTER,))
    rank: int = _field(4, "LoRA rank (for every adapter type; LoKr: the rank of its low-rank factors).",
                       needs=(ADAPTER,), limits=(1, 1024, 128))
    lora_alpha: float = _field(0.0, "LoRA alpha (0 = same as rank, i.e. scale 1); the scale is alpha / rank for "
                               "every adapter type.", needs=(ADAPTER,), limits=(0, 10_000))
    lora_dropout: float = _field(0.0, "Dropout on the LoRA layers (LoKr/LoHa: rank dropout).", advanced=True,
                                 needs=(ADAPTER,), limits=(0, 1))
    lora_targets: str = _field("attention", "UNet layers that get LoRA: attention projections, plus "
                               "feed-forward, or all linear/conv layers of the transformer blocks and resnets.",
                               choices=LORA_TARGETS, advanced=True, needs=(ADAPTER,))
    lokr_factor: int = _field(-1, "LoKr only: size of the small Kronecker factor of each layer (4-16; smaller "
                              "learns more detail, larger makes smaller files), -1 = near-square (the smallest).",
                              advanced=True, needs=(ADAPTER,), limits=(-1, 1024))
    decompose_both: bool = _field(False, "LoKr only: also make the small Kronecker factor low-rank (fewer weights).",
                                  advanced=True, needs=(ADAPTER,))
    train_text_encoder: bool = _field(False, "Also train the text encoder(s) (LoRA on them for LoRA methods).")

    # Masks and inpainting
    masked_loss: bool = _field(False, "Count the loss only inside each picture's mask, so backgrounds are not "
                               "learned: its a-masklabel.png beside a.png (white = learn), or the opaque part of a "
                               "transparent PNG; pictures without one learn from the whole picture. On an inpainting "
                               "model: only inside the inpainting mask.")
    unmasked_weight: float = _field(0.0, "With masked loss: the weight of what lies outside the mask (0 = ignored, "
                                    "1 = as if there were no mask).", advanced=True, limits=(0, 1))
    whole_mask_share: float = _field(0.25, "Inpainting models: the share of synthetic masks that cover the whole "
                                     "picture (RunwayML used 25%), so the model still draws from a prompt alone. "
                                     "Pictures with their own mask (a-masklabel.png) always use it.", advanced=True,
                                     limits=(0, 1))
    mask_variants: int = _field(8, "Inpainting models: synthetic masks per picture (rectangles, ellipses, brush "
                                "strokes; ~25% of the picture on average); each step picks one. Their masked "
                                "pictures are encoded once with the latents.", advanced=True,
                                limits=(1, 64, 16))  # each one is a VAE encoding per picture, cached

    # ControlNet
    controlnet_model: str = _field("", "ControlNet to fine-tune: a Hub id or a diffusers folder (tiny-controlnet-sd1 "
                                   "offline); empty: a new ControlNet made from the base model's UNet.",
                                   needs=(CONTROL,))
    conditioning: str = _field("dataset", "Condition pictures: the dataset's own (a-condlabel.png beside a.png; "
                               "`dataset conditions` computes them), or computed from each picture at the start of "
                               "the run where one is missing: Canny edges or depth.", choices=CONDITIONING,
                               needs=(CONTROL,))
    depth_model: str = _field(DEFAULT_DEPTH_MODEL, "Depth model for conditioning 'depth': any transformers "
                              "depth-estimation model (Depth Anything, DPT), or tiny-depth offline.", advanced=True,
                              needs=(CONTROL,))

    # Optimisation
    train_batch_size: int = _field(1, "Images per step per GPU.", limits=(1, 1024, 32))
    gradient_accumulation_steps: int = _field(1, "Steps accumulated before each optimizer update.",
                                              advanced=True, limits=(1, 1024, 64))
    gradient_checkpointing: bool = _field(False, "Trade compute for memory.", advanced=True)
    max_train_steps: int = _field(400, "Optimizer steps to train (0 = use num_train_epochs).",
                                  limits=(0, 1_000_000, 10_000))
    num_train_epochs: int = _field(0, "Epochs to train when max_train_steps is 0.", advanced=True,
                                   limits=(0, 100_000, 100))
    learning_rate: float = _field(1e-4, "Learning rate.", limits=(0, 10))
    scale_lr: bool = _field(False, "Multiply the learning rate by batch size x accumulation x GPUs.",
                            advanced=True)
    lr_scheduler: str = _field("constant", "Learning-rate schedule.", choices=LR_SCHEDULERS, advanced=True)
    lr_warmup_steps: int = _field(0, "Warm-up steps of the schedule.", advanced=True, limits=(0, 1_000_000))
    lr_num_cycles: int = _field(1, "Restarts of cosine_with_restarts.", advanced=True, limits=(1, 1000))
    lr_power: float = _field(1.0, "Power of the polynomial schedule.", advanced=True, limits=(0, 100))
    optimizer: str = _field("adamw", "Optimizer: adamw; adamw8bit (needs bitsandbytes: pip install sdtune_ui[8bit]); "
                            "prodigy (needs prodigyopt: sdtune_ui[prodigy]); adafactor (little optimizer memory, "
                            "uses the learning rate as given).", choices=OPTIMIZERS, advanced=True)
    adam_beta1: float = _field(0.9, "AdamW beta1.", advanced=True, limits=(0, 1))
    adam_beta2: float = _field(0.999, "AdamW beta2.", advanced=True, limits=(0, 1))
    adam_weight_decay: float = _field(1e-2, "AdamW weight decay.", advanced=True, limits=(0, 10))
    adam_epsilon: float = _field(1e-8, "AdamW epsilon.", advanced=True, limits=(0, 1))
    max_grad_norm: float = _field(1.0, "Gradient clipping norm (0 = off).", advanced=True, limits=(0, 1_000_000))
    mixed_precision: str = _field("auto", "Mixed precision: 'auto' is bf16 on GPUs that support it, fp16 on older "
                                  "GPUs and full precision ('no') on the CPU.", choices=MIXED_PRECISION)
    use_ema: bool = _field(False, "Keep an exponential moving average of the trained weights (the UNet's, or the "
                           "adapters' for LoRA-like methods) and save the average as the result.", advanced=True,
                           needs=(UNET_WEIGHTS,))
    ema_decay: float = _field(0.9999, "EMA decay: 0.9999 for long full fine-tunes, 0.999 or lower for runs of a "
                              "few thousand steps or less (the LoRA presets use 0.999; a decay the run is too short "
                              "to reach acts like the warm-up curve (1+t)/(10+t)).", advanced=True,
                              needs=(UNET_WEIGHTS,), limits=(0, 1))
    seed: int = _field(0, "Random seed.", limits=(0, MAX_SEED))
    snr_gamma: float = _field(0.0, "Min-SNR loss weighting gamma (5 is typical; 0 = off).", advanced=True,
                              limits=(0, 1000))
    noise_offset: float = _field(0.0, "Noise offset (helps very dark/bright images; 0.05-0.1).", advanced=True,
                                 limits=(0, 1))

    # Flow-matching models (SD3.5, Flux.1): how noise levels are drawn and weighted (UNet models ignore these)
    timestep_sampling: str = _field("logit_normal", "SD3 / Flux only: how noise levels are drawn: logit_normal (the "
                                    "SD3 paper's choice: mostly mid-range), mode (shaped by mode_scale) or uniform.",
                                    choices=TIMESTEP_SAMPLING, advanced=True)
    logit_mean: float = _field(0.0, "SD3 / Flux only: mean of logit_normal sampling.", advanced=True, limits=(-5, 5))
    logit_std: float = _field(1.0, "SD3 / Flux only: spread of logit_normal sampling.", advanced=True,
                              limits=(0, 10))
    mode_scale: float = _field(1.29, "SD3 / Flux only: shape of mode sampling.", advanced=True, limits=(-5, 5))
    flow_shift: float = _field(0.0, "SD3 / Flux only: push noise levels toward noise by this shift (SD3.5's sampler "
                               "uses 3.0); 0 = the model's own (Flux's grows with the image size, as in its sampler).",
                               advanced=True, limits=(0, 100))
    flow_loss_weighting: str = _field("none", "SD3 / Flux only: weight each image's loss by its noise level: none, "
                                      "sigma_sqrt or cosmap (the SD3 paper's).", choices=FLOW_LOSS_WEIGHTING,
                                      advanced=True)
    train_guidance_scale: float = _field(3.5, "Flux.1-dev only: the value its guidance embedding sees in training "
                                         "(3.5, as the reference trainers use).", advanced=True, limits=(0, 100))
    quantize_base: str = _field("none", "SD3 / Flux LoRA only: keep the frozen transformer quantised to save memory: "
                                "nf4 (4-bit) or int8 through bitsandbytes (pip install sdtune_ui[quantize], CUDA); "
                                "none = half precision.", choices=QUANTIZE_BASE, advanced=True, needs=(ADAPTER,))

    # Speed switches (each on by default where it helps)
    cache_latents: bool = _field(True, "Encode images with the VAE once, not every step.", advanced=True)
    cache_text_embeddings: bool = _field(True, "Encode prompts once when the text encoders are frozen.",
                                         advanced=True)
    offload_frozen_encoders: bool = _field(True, "Once their outputs are cached, keep the frozen text encoders "
                                           "and VAE in CPU memory (back on the GPU only for sample images). "
                                           "Saves ~1.7 GB of GPU memory on SDXL.", advanced=True)
    cuda_graph: str = _field("auto", "Capture the whole training step (forward, backward, clipping, AdamW) as one "
                             "CUDA graph after two warm-up steps and replay it: seconds to capture, then no Python or "
                             "launch overhead per step. 'auto' captures single-GPU runs where it is safe (it stays "
                             "eager with a logged reason otherwise); 'off' never captures.",
                             choices=CUDA_GRAPH, advanced=True)
    cudnn_attention: str = _field("auto", "Let attention use cuDNN's kernels in training. They are ~7% faster per "
                                  "step but are built the first time a machine meets each shape (~7 s for SD1.5 "
                                  "on an H200, kept by the driver's kernel cache afterwards), so 'auto' uses them "
                                  "only in runs long enough to win that back (4,500 images per GPU and more; "
                                  "measured on SD1.5, bigger models and aspect buckets build more) and flash / "
                                  "memory-efficient attention otherwise; 'on' and 'off' decide for every run.",
                                  choices=("auto", "on", "off"), advanced=True)
    channels_last: bool = _field(False, "Keep the UNet's activations in channels-last layout (cuDNN's native one).",
                                 advanced=True)
    compile_unet: str = _field("auto", "torch.compile the UNet on CUDA: 'reduce-overhead' (fused kernels and CUDA "
                               "graphs), 'default' (fused kernels; inside the captured step when cuda_graph "
                               "applies), 'none', or 'auto': compile only when this machine's measurements say it "
                               "pays: a compile cache exists or the measured compile time is won back by the "
                               "measured faster steps (compiles are cached in the data folder, so only the first "
                               "run of a model pays the full compile).",
                               choices=("auto", "none", "default", "reduce-overhead", "max-autotune-no-cudagraphs"),
                               advanced=True)
    compile_scope: str = _field("auto", "What compile_unet compiles: the 'whole' UNet, or each repeated "
                                "transformer block once ('blocks': compiles faster, resnets stay eager); 'auto' "
                                "picks blocks for SDXL and whole for SD1.x/2.x (measured fastest).",
                                choices=("auto", "whole", "blocks"), advanced=True)

    # Checkpoints, logging, validation, output
    checkpointing_steps: int = _field(500, "Save a resumable checkpoint every N steps (0 = only at the end).",
                                      limits=(0, 1_000_000))
    checkpoints_total_limit: int = _field(0, "Keep at most this many checkpoints (0 = keep all).",
                                          advanced=True, limits=(0, 10_000))
    log_every: int = _field(10, "Read the loss back from the GPU every N steps (each step is still logged).",
                            advanced=True, limits=(1, 1_000_000))
    validation_prompts: list[str] = _field(None, "Prompts for sample images during training.",
                                           factory=list, limits=(0, 100, 8))
    validation_steps: int = _field(100, "Make sample images every N steps (0 = only at the end).",
                                   limits=(0, 1_000_000))
    num_validation_images: int = _field(1, "Sample images per prompt.", advanced=True, limits=(1, 64, 4))
    validation_guidance_scale: float = _field(7.5, "Guidance scale of the sample images.", advanced=True,
                                              limits=(0, 30))
    validation_inference_steps: int = _field(25, "Denoising steps of the sample images.", advanced=True,
                                             limits=(1, 150, 50))
    validation_seed: int = _field(0, "Seed of the sample images (same seed every time, to compare).",
                                  advanced=True, limits=(0, MAX_SEED))
    eval_steps: int = _field(0, "Every N steps, the held-out denoising loss (the training loss on fixed noise and "
                             "timesteps, for the training and class images) as a metric event; cheap, no images "
                             "(0 = off). Image metrics: `evaluate` after the run.", advanced=True,
                             limits=(0, 1_000_000))
    tool_files: bool = _field(True, "Also write into output/ the files AUTOMATIC1111 and ComfyUI load (a kohya-format "
                              "LoRA, an embedding named by its trigger word) and README.txt saying which file is for "
                              "which tool.", advanced=True)
    tensorboard: bool = _field(True, "Also write TensorBoard logs (loss, learning rate, samples) to <run>/tb when "
                               "tensorboard is installed (`tensorboard --logdir <data>/runs`).", advanced=True)

    # ------------------------------------------------------------------ derived values
    @property
    def method_class(self) -> type[methods.Method]:
        return methods.method_named(self.method)

    def has(self, trait: str) -> bool:
        """Whether the run's method has a trait (methods/base.py), e.g. `config.has(TOKENS)`."""
        return self.method in methods.method_names() and self.method_class.has(trait)

    def applies(self, name: str) -> bool:
        """Whether the setting `name` means anything for this run's method (and adapter type)."""
        return setting_applies(name, self.method, self.adapter)

    @property
    def adapter_class(self) -> type[adapters.Adapter]:
        return adapters.adapter_named(self.adapter)

    @property
    def effective_lora_alpha(self) -> float:
        return self.lora_alpha or float(self.rank)

    def placeholder_tokens(self) -> list[str]:
        """The tokens actually added: `<sks>`, then `<sks>_1` ... for multi-vector embeddings."""
        return [self.placeholder_token] + [f"{self.placeholder_token}_{i}" for i in range(1, self.num_vectors)]

    # ------------------------------------------------------------------ validation
    def validate(self) -> TrainConfig:
        """Check every field; raise ConfigError naming each bad one. Returns self for chaining."""
        errors: dict[str, str] = {}
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                errors[f.name] = f"{getattr(self, f.name)!r} is not one of {', '.join(choices)}."
        if not self.model.strip():
            errors["model"] = "Choose a base model (a Hub id, a folder, a .safetensors file or demo-sd1)."
        if not self.data.strip():
            errors["data"] = "Choose a dataset folder (or a Hub dataset id)."
        if self.resolution < 0 or self.resolution % 8:
            errors["resolution"] = f"{self.resolution} is not a multiple of 8 (try 512, 768 or 1024)."
        if self.learning_rate <= 0:
            errors["learning_rate"] = "The learning rate must be greater than 0 (e.g. 1e-4 for LoRA)."
        if self.ti_learning_rate < 0:
            errors["ti_learning_rate"] = "Must be 0 (same as learning_rate) or greater."
        if not 0 <= self.caption_dropout < 1:
            errors["caption_dropout"] = "Must be between 0 and 1 (0.1 keeps guidance working)."
        if self.train_batch_size < 1:
            errors["train_batch_size"] = "Must be at least 1."
        if self.gradient_accumulation_steps < 1:
            errors["gradient_accumulation_steps"] = "Must be at least 1."
        if self.max_train_steps < 0 or self.num_train_epochs < 0:
            errors["max_train_steps"] = "Steps and epochs cannot be negative."
        elif self.max_train_steps == 0 and self.num_train_epochs == 0:
            errors["max_train_steps"] = "Set max_train_steps (e.g. 400) or num_train_epochs."
        if self.has(ADAPTER) and self.rank < 1:
            errors["rank"] = "The LoRA rank must be at least 1 (4-32 is typical)."
        if not 0 <= self.lora_dropout < 1:
            errors["lora_dropout"] = "Must be between 0 and 1."
        if self.with_prior_preservation:
            if not self.class_prompt.strip() and not self.concepts_give("class_prompt"):
                errors["class_prompt"] = "Prior preservation needs a class prompt, e.g. 'a photo of a dog'."
            if self.num_class_images < 1:
                errors["num_class_images"] = "Prior preservation needs at least 1 class image."
        if self.logit_std <= 0:
            errors["logit_std"] = "Must be greater than 0 (1 is typical)."
        if self.flow_shift < 0:
            errors["flow_shift"] = "Must be 0 (the model's own) or positive (3.0 is SD3.5's)."
        if self.snr_gamma < 0:
            errors["snr_gamma"] = "Must be 0 (off) or positive (5 is typical)."
        if self.checkpointing_steps < 0 or self.validation_steps < 0 or self.eval_steps < 0 or self.log_every < 1:
            errors["checkpointing_steps"] = "Step intervals cannot be negative (log_every at least 1)."
        if not 0 <= self.unmasked_weight <= 1:
            errors["unmasked_weight"] = "Must be between 0 (ignore what is outside the mask) and 1."
        if not 0 <= self.whole_mask_share <= 1:
            errors["whole_mask_share"] = "Must be between 0 and 1 (0.25 is RunwayML's share)."
        if self.mask_variants < 1:
            errors["mask_variants"] = "At least 1 mask per picture (8 is a good start)."
        if not 0 < self.ema_decay < 1:
            errors["ema_decay"] = "Must be between 0 and 1 (0.9999 for full fine-tuning, 0.999 for LoRA)."
        if self.init_from.strip():
            from sdtune_ui.train.init_from import missing_source

            problem = missing_source(self.init_from)
            if problem:
                errors["init_from"] = problem
        for name, message in limit_errors(self).items():
            errors.setdefault(name, message)  # a field's own message (above) says more than its range
        if self.method in methods.method_names():
            self._check_switches_apply(errors)
            self.method_class.check_settings(self, errors)
            if self.has(ADAPTER) and self.adapter in adapters.adapter_names():
                self.adapter_class.check_settings(self, errors)
        if errors:
            raise ConfigError(errors)
        return self

    def concepts_give(self, setting: str) -> bool:
        """Whether the dataset has several concepts and each names this prompt itself (`instance_prompt`,
        `class_prompt`), so the run-wide setting is only a fallback (the dataset's layout is read, no image)."""
        from sdtune_ui.train.data import several_concepts

        scan = several_concepts(self.data, self.caption_column) if self.data.strip() else None
        return scan is not None and all(getattr(concept, setting).strip() for concept in scan.concepts)

    def _check_switches_apply(self, errors: dict[str, str]) -> None:
        """A switch turned on that the method ignores is a mistake worth saying (e.g. EMA for textual inversion)."""
        for f in dataclasses.fields(self):
            if f.metadata["needs"] and getattr(self, f.name) is True and not self.applies(f.name):
                if not field_applies(f.metadata, self.method):
                    users = ", ".join(methods.method_named(m).label for m in methods.method_names()
                                      if field_applies(f.metadata, m))
                    needs = " and ".join(methods.TRAIT_TEXT[trait] for trait in f.metadata["needs"])
                    errors[f.name] = f"{f.name} applies to {needs} only ({users})."
                else:  # an adapter type's own switch
                    owners = " and ".join(adapters.adapter_named(a).label for a in adapters.setting_owners()[f.name])
                    errors[f.name] = f"{f.name} applies to the {owners} adapter only (adapter is {self.adapter})."

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError({name: "Unknown setting (check its spelling)." for name in unknown})
        return cls(**values)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        try:
            values = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ConfigError({"config": f"Cannot read {path}: {err}"}) from err
        return cls.from_dict(values)


def field_info() -> list[dataclasses.Field]:
    """The config's fields with their metadata (help, choices, advanced, needs), for UIs and CLIs."""
    return list(dataclasses.fields(TrainConfig))


_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def limit_errors(config: TrainConfig, *, public: bool = False) -> dict[str, str]:
    """Numbers outside their field's limits (lists: too many items), for the settings that apply to the run's
    method; `public`: also above what a public app accepts. Field -> a message for a person."""
    errors: dict[str, str] = {}
    known_method = config.method in methods.method_names()
    for f in dataclasses.fields(config):
        meta = f.metadata
        if meta.get("maximum") is None or (known_method and not config.applies(f.name)):
            continue
        message = bound_message(getattr(config, f.name), meta["minimum"], meta["maximum"],
                                meta["public_maximum"] if public else None)
        if message:
            errors[f.name] = message
    return errors


def bound_message(value: Any, minimum: float, maximum: float, public_maximum: float | None = None) -> str:
    """Why `value` is out of bounds ("" when it is not); a list is judged by its length."""
    items = isinstance(value, list)
    number = len(value) if items else value
    if isinstance(number, float) and not math.isfinite(number):
        return f"Give a number (got {number})."
    if not minimum <= number <= maximum:
        if items:
            return f"At most {_number(maximum)} lines (got {_number(number)})."
        return f"Must be between {_number(minimum)} and {_number(maximum)} (got {_number(number)})."
    if public_maximum is not None and number > public_maximum:
        unit = " lines" if items else ""
        return (f"This public app takes at most {_number(public_maximum)}{unit} (got {_number(number)}); run the "
                "app on your own GPU for more.")
    return ""


def _number(value: float) -> str:
    """1,000,000 and 0.0001 as people write them."""
    if isinstance(value, int) or float(value).is_integer() and abs(value) < 1e15:
        return f"{int(value):,}"
    return f"{value:g}"


def field_applies(metadata: Mapping[str, Any], method: str) -> bool:
    """Whether a setting (given by its field metadata) means anything for `method`: the method has every
    trait the setting needs."""
    needs = metadata.get("needs") or ()
    return all(methods.method_named(method).has(trait) for trait in needs)


def setting_applies(name: str, method: str, adapter: str | None = None) -> bool:
    """Whether the setting `name` means anything for `method` and, for an adapter type's own setting (e.g. LoKr's
    factor), for `adapter` (None: any adapter type)."""
    if not field_applies(_FIELDS[name].metadata, method):
        return False
    owners = adapters.setting_owners().get(name)
    return owners is None or adapter is None or adapter in owners


def optimizer_available(name: str) -> bool:
    """Whether the optimizer's package is installed (adamw and adafactor need none beyond torch/transformers)."""
    module = OPTIONAL_OPTIMIZERS.get(name, (None,))[0]
    return module is None or importlib.util.find_spec(module) is not None


def installed_optimizer(name: str) -> tuple[str, str]:
    """(an optimizer that is installed, why it differs from `name` or ""): presets never pick a missing one."""
    if optimizer_available(name):
        return name, ""
    module, extra = OPTIONAL_OPTIMIZERS[name]
    substitute = "adafactor" if name == "adamw8bit" else "adamw"  # the memory-light choice stays memory-light
    return substitute, (f"{name} needs {module}, which is not installed: using {substitute} instead "
                        f"(pip install sdtune_ui[{extra}] to use {name}).")
