"""Resumable checkpoints: trainable weights, optimizer, LR schedule and RNG states, written atomically.

A checkpoint folder is written as `step-N.partial` and renamed to `step-N` only when complete, so a
crash, a kill or a full disk never leaves half a checkpoint that resume would pick up. The trainer saves
only weights it checked (finite and of sane size); `state.json` records that, so after a bad update the
last sound checkpoint can be named without loading every one.
"""

from __future__ import annotations

import json
import math
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from sdtune_ui.errors import DiskFull, UnreadableFile, is_disk_full

# Trainable weights beyond this size are not a model any more (SD's largest weights are in the tens): a
# checkpoint holding them is not "good" even while every value is finite (e.g. 1e30 after a bad update).
MAX_SANE_WEIGHT = 1e4


def save_checkpoint(folder: Path, *, step: int, trainable: dict[str, torch.Tensor], optimizer_state: dict,
                    lr_scheduler: Any, rng: dict[str, torch.Tensor], config: dict,
                    ema_state: dict | None = None) -> Path:
    """Write a complete checkpoint atomically; a full disk raises DiskFull and leaves the older ones intact."""
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        partial.mkdir(parents=True)
        save_file({k: v.detach().contiguous().cpu() for k, v in trainable.items()},
                  str(partial / "trainable.safetensors"))
        _save(optimizer_state, partial / "optimizer.pt")
        _save(lr_scheduler.state_dict(), partial / "scheduler.pt")
        _save(rng, partial / "rng.pt")
        if ema_state is not None:
            _save(ema_state, partial / "ema.pt")
        (partial / "state.json").write_text(json.dumps({
            "step": step,
            "weights_checked": True,   # the trainer saves only finite weights of sane size
            "python_random": random.getstate()[1][:625],
            "numpy_random": np.random.get_state()[1].tolist(),
        }))
        # Hyperparameters beside every checkpoint, so it can be understood (and resumed) on its own.
        (partial / "config.json").write_text(json.dumps(config, indent=2))
    except Exception as err:
        shutil.rmtree(partial, ignore_errors=True)  # frees the space; older checkpoints are untouched
        if is_disk_full(err):
            raise DiskFull(folder.parent, f"saving checkpoint {folder.name}") from None
        raise
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)
    return folder


def _save(obj: Any, path: Path) -> None:
    # Through a Python file, so a full disk raises OSError(ENOSPC) instead of torch's "file write failed".
    with open(path, "wb") as handle:
        torch.save(obj, handle)


def load_checkpoint(folder: Path, *, lr_scheduler: Any) -> dict[str, Any]:
    """Load the schedule state in place; return step, trainable tensors, optimizer, RNG and EMA states.

    A damaged file raises UnreadableFile naming it (and saying that deleting the folder resumes from the one
    before)."""
    try:
        return _load_checkpoint(folder, lr_scheduler)
    except Exception as err:  # noqa: BLE001 - our own files: any failure to read them means a damaged file
        raise UnreadableFile(folder, err, f"Delete {folder} to resume from the checkpoint before it.") from err


def _load_checkpoint(folder: Path, lr_scheduler: Any) -> dict[str, Any]:
    # Our own files, loaded as plain tensors and numbers only (weights_only refuses arbitrary objects).
    state = json.loads((folder / "state.json").read_text())
    trainable = load_file(str(folder / "trainable.safetensors"))
    # On the CPU: every process loads it, and GPU tensors would all land on the GPU they were saved from.
    optimizer = torch.load(folder / "optimizer.pt", weights_only=True, mmap=True, map_location="cpu")
    rng = torch.load(folder / "rng.pt", weights_only=True)
    ema_path = folder / "ema.pt"
    ema = torch.load(ema_path, weights_only=True) if ema_path.exists() else None
    lr_scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=True))
    random.setstate((3, tuple(state["python_random"]), None))
    np_state = np.random.get_state()
    np.random.set_state((np_state[0], np.array(state["numpy_random"], dtype=np.uint32), *np_state[2:]))
    return {"step": state["step"], "trainable": trainable, "optimizer": optimizer, "rng": rng, "ema": ema}


def is_sane(largest: float) -> bool:
    return math.isfinite(largest) and largest <= MAX_SANE_WEIGHT


def largest_weight(tensors: list[torch.Tensor], accelerator: Any = None) -> float:
    """The largest absolute value over tensors (NaN if any is NaN), with one host sync; with several processes,
    over all of them (under FSDP each holds a slice), so every process reaches the same verdict."""
    local = [t.to_local() if hasattr(t, "to_local") else t for t in tensors]
    local = [t.detach() for t in local if t.numel()]
    largest = (torch.stack([t.abs().max().float() for t in local]).max() if local
               else torch.zeros((), device=accelerator.device if accelerator else "cpu"))
    if accelerator is not None and accelerator.num_processes > 1:
        largest = accelerator.gather(largest.reshape(1)).max()
    return largest.item()


def last_sound_checkpoint(checkpoints: list[Path]) -> Path | None:
    """The newest checkpoint whose weights are finite and sane (checked when saved, or loaded and checked now
    for checkpoints written before that was recorded); None when there is none."""
    for folder in reversed(checkpoints):
        try:
            if json.loads((folder / "state.json").read_text()).get("weights_checked"):
                return folder
            tensors = list(load_file(str(folder / "trainable.safetensors")).values())
        except Exception:  # noqa: BLE001 - an unreadable checkpoint is not a sound one
            continue
        if is_sane(largest_weight(tensors)):
            return folder
    return None


def last_good_text(run: Any) -> str:
    """The sentence naming the last checkpoint with sound weights, for messages about a run that went bad."""
    last = last_sound_checkpoint(run.checkpoints())
    return (f"The last good checkpoint (finite weights) is {last.name}: resume from it with a lower learning "
            "rate. " if last else "No checkpoint has sound weights yet. ")


def prune_checkpoints(checkpoints: list[Path], keep: int) -> None:
    """Delete the oldest complete checkpoints beyond `keep` (0 keeps all)."""
    if keep <= 0:
        return
    for old in checkpoints[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def checkpoint_settings(folder: Path) -> dict:
    """The settings a checkpoint was saved with (its config.json; empty when unreadable)."""
    try:
        return json.loads((folder / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}
