"""Resuming a run folder: which settings may change on resume, restoring the last checkpoint (the trainer's
`Resumes` mixin), and carrying the new settings into the restored state.

A checkpoint holds the trainable tensors (their shapes and meaning follow the model, the method, the
adapter's rank/alpha/targets, the text-encoder switch and the new tokens), the optimizer's state, the
schedule's position and the random states. Settings that shape those tensors cannot change on resume; the
rest may (`MAY_CHANGE`). Anything not listed there counts as fixed, so a setting added later is safe until
someone decides it may change.
"""

from __future__ import annotations

import json
from typing import Any

import torch

from sdtune_ui.config import TrainConfig
from sdtune_ui.errors import ConfigError
from sdtune_ui.runs import RunDir
from sdtune_ui.train import checkpoint as ckpt
from sdtune_ui.train import sharding

MAY_CHANGE = frozenset({
    # data and prompts (the checkpoint holds no data)
    "data", "image_column", "caption_column", "instance_prompt", "resolution", "center_crop", "random_flip",
    "bucketing", "caption_dropout", "with_prior_preservation", "class_prompt", "class_data", "num_class_images",
    "prior_loss_weight", "learnable_property", "allow_pickle",
    # optimisation (an optimizer change starts its state afresh)
    "train_batch_size", "gradient_accumulation_steps", "gradient_checkpointing", "max_train_steps",
    "num_train_epochs", "learning_rate", "ti_learning_rate", "scale_lr", "lr_scheduler", "lr_warmup_steps",
    "lr_num_cycles", "lr_power", "optimizer", "adam_beta1", "adam_beta2", "adam_weight_decay", "adam_epsilon",
    "max_grad_norm", "mixed_precision", "ema_decay", "seed", "snr_gamma", "noise_offset", "lora_dropout",
    # speed switches, and copies for other tools
    "cache_latents", "cache_text_embeddings", "offload_frozen_encoders", "compile_unet", "compile_scope",
    "cuda_graph", "cudnn_attention", "channels_last", "tool_files",
    # checkpoints, logging, validation
    "checkpointing_steps", "checkpoints_total_limit", "log_every", "validation_prompts", "validation_steps",
    "num_validation_images", "validation_guidance_scale", "validation_inference_steps", "validation_seed",
    "eval_steps", "tensorboard",
})
MAY_CHANGE_TEXT = ("steps and epochs, learning rate and schedule, optimizer (its state then starts afresh), batch "
                   "size and accumulation, gradient checkpointing, precision, resolution, data and prompts, "
                   "validation, checkpoint and log cadence, speed switches")
# Hyperparameters of the optimizer's param groups that follow the new config on resume (the loaded state
# would otherwise bring back the old ones).
GROUP_SETTINGS = ("betas", "eps", "weight_decay", "initial_lr")


class ResumeRefused(ConfigError):
    """A resume with settings the run's checkpoints cannot continue with; nothing in the folder was changed."""

    def __init__(self, run: RunDir, fixed: dict[str, tuple[Any, Any]]):
        self.field_errors = {name: f"{old!r} in the run, {new!r} now" for name, (old, new) in fixed.items()}
        lines = "\n".join(f"- {name}: {text}" for name, text in self.field_errors.items())
        Exception.__init__(self, (
            f"Cannot resume {run.path.name} with these settings: its checkpoints were trained with other ones, "
            f"which a resume cannot change:\n{lines}\nA resume may change: {MAY_CHANGE_TEXT}. Nothing in the run "
            "folder was changed; to train with the new settings, start a new run (another --output)."))


def saved_settings(run: RunDir) -> dict | None:
    """The settings the run's checkpoints were trained with: its config.json, else its latest checkpoint's."""
    for path in (run.config_path, *(c / "config.json" for c in reversed(run.checkpoints()))):
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
    return None


def resume_changes(run: RunDir, config: TrainConfig) -> dict[str, tuple[Any, Any]]:
    """The settings `config` changes against a run folder that has checkpoints: {name: (old, new)}.

    Raises ResumeRefused, before anything is written, when a setting the checkpoints depend on differs.
    A folder without checkpoints starts afresh: anything may change.
    """
    if not run.checkpoints():
        return {}
    saved = saved_settings(run)
    if saved is None:
        return {}
    defaults = TrainConfig().to_dict()
    changed = {}
    for name, value in config.to_dict().items():
        old = saved.get(name, defaults.get(name))
        if old != value:
            changed[name] = (old, value)
    method_changed = "method" in changed
    fixed = {name: change for name, change in changed.items()
             if name not in MAY_CHANGE and (method_changed or config.applies(name))}
    if fixed:
        raise ResumeRefused(run, fixed)
    return changed


def describe_changes(changes: dict[str, tuple[Any, Any]]) -> str:
    return "; ".join(f"{name} {old!r} -> {new!r}" for name, (old, new) in changes.items())


def follow_new_settings(optimizer: Any, lr_scheduler: Any, fresh_groups: list[dict]) -> None:
    """After loading a checkpoint's optimizer and schedule state, put back the new config's hyperparameters.

    `fresh_groups`: the param-group settings as built from the new config, taken before loading. The
    learning rate is recomputed at the restored step from the new schedule; unchanged settings give the
    same numbers the loaded state held.
    """
    for group, fresh in zip(optimizer.param_groups, fresh_groups):
        group.update({key: fresh[key] for key in GROUP_SETTINGS if key in fresh and key in group})
    if hasattr(lr_scheduler, "lr_lambdas") and all("initial_lr" in fresh for fresh in fresh_groups):
        lr_scheduler.base_lrs = [fresh["initial_lr"] for fresh in fresh_groups]
        rates = [base * factor(lr_scheduler.last_epoch)
                 for factor, base in zip(lr_scheduler.lr_lambdas, lr_scheduler.base_lrs)]
        for group, rate in zip(optimizer.param_groups, rates):
            group["lr"] = rate
        lr_scheduler._last_lr = rates  # what get_last_lr() reports until the next step


class Resumes:
    """The trainer's resume from its folder's last checkpoint (a mixin of train/trainer.py's Trainer)."""

    def _resume_if_possible(self) -> None:
        latest = self.run.latest_checkpoint()
        if latest is None:
            return
        fresh_groups = group_settings(self.optimizer)  # the new config's hyperparameters
        saved = ckpt.load_checkpoint(latest, lr_scheduler=self.lr_scheduler)
        trained_with = ckpt.checkpoint_settings(latest).get("optimizer", self.config.optimizer)
        same_optimizer = trained_with == self.config.optimizer
        try:
            if self.sharded:  # each process copies its slices out of the whole tensors
                weights = {name.removeprefix("unet."): value for name, value in saved["trainable"].items()}
                sharding.load_model_state(self.unet, weights)
                if same_optimizer:
                    sharding.load_optimizer_state(self.unet, self.optimizer, saved["optimizer"])
            else:
                self.method.load_trainable_state(self.parts, saved["trainable"])
                if same_optimizer:
                    self.optimizer.load_state_dict(saved["optimizer"])
            if self.ema is not None and saved["ema"] is not None:
                check_ema_state(saved["ema"], self.ema_params)
                self.ema.load_state_dict(saved["ema"])
                self.ema.to(self.accelerator.device)   # the averages load where they were saved from
        except (torch.OutOfMemoryError, getattr(torch.distributed, "DistError", torch.OutOfMemoryError)):
            raise  # not a mismatch: the run's own out-of-memory advice / the process group's error apply
        except (KeyError, ValueError, RuntimeError) as err:  # missing tensors, size mismatches
            raise ConfigError({"method": f"Checkpoint {latest} does not match these settings ({err})."}) from err
        if not same_optimizer:
            self.log(f"The optimizer changed from {trained_with} to {self.config.optimizer}: its state (moments) "
                     f"starts afresh from {latest.name}.")
        follow_new_settings(self.optimizer, self.lr_scheduler, fresh_groups)
        self.data_generator.set_state(saved["rng"]["data"])
        self.noise_generator.set_state(saved["rng"]["noise"])
        torch.set_rng_state(saved["rng"]["torch"])
        self.step = saved["step"]
        self.log(f"Resumed from {latest.name} at step {self.step}")


def check_ema_state(state: dict, params: list[torch.nn.Parameter]) -> None:
    """A checkpoint's EMA averages must pair one to one with this run's averaged weights (EMAModel pairs by
    position, silently, while shapes agree)."""
    shadows = state.get("shadow_params") or []
    if len(shadows) != len(params) or any(s.shape != p.shape for s, p in zip(shadows, params)):
        raise ValueError(f"its EMA holds {len(shadows)} tensors for {len(params)} averaged weights")


def group_settings(optimizer: Any) -> list[dict]:
    return [{key: group[key] for key in GROUP_SETTINGS if key in group} for group in optimizer.param_groups]
