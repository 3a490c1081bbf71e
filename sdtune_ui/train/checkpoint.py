"""Resumable checkpoints: trainable weights, optimizer, LR schedule and RNG states, written atomically.

A checkpoint folder is written as `step-N.partial` and renamed to `step-N` only when complete, so a
crash or kill never leaves half a checkpoint that resume would pick up.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file


def save_checkpoint(folder: Path, *, step: int, trainable: dict[str, torch.Tensor], optimizer_state: dict,
                    lr_scheduler: Any, rng: dict[str, torch.Tensor], config: dict,
                    ema_state: dict | None = None) -> Path:
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in trainable.items()}, str(partial / "trainable.safetensors"))
    torch.save(optimizer_state, partial / "optimizer.pt")
    torch.save(lr_scheduler.state_dict(), partial / "scheduler.pt")
    torch.save(rng, partial / "rng.pt")
    if ema_state is not None:
        torch.save(ema_state, partial / "ema.pt")
    (partial / "state.json").write_text(json.dumps({
        "step": step,
        "python_random": random.getstate()[1][:625],
        "numpy_random": np.random.get_state()[1].tolist(),
    }))
    # Hyperparameters beside every checkpoint, so it can be understood (and resumed) on its own.
    (partial / "config.json").write_text(json.dumps(config, indent=2))
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)
    return folder


def load_checkpoint(folder: Path, *, lr_scheduler: Any) -> dict[str, Any]:
    """Load the schedule state in place; return step, trainable tensors, optimizer, RNG and EMA states."""
    # Our own files, loaded as plain tensors and numbers only (weights_only refuses arbitrary objects).
    lr_scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=True))
    state = json.loads((folder / "state.json").read_text())
    random.setstate((3, tuple(state["python_random"]), None))
    np_state = np.random.get_state()
    np.random.set_state((np_state[0], np.array(state["numpy_random"], dtype=np.uint32), *np_state[2:]))
    ema_path = folder / "ema.pt"
    return {
        "step": state["step"],
        "trainable": load_file(str(folder / "trainable.safetensors")),
        # On the CPU: every process loads it, and GPU tensors would all land on the GPU they were saved from.
        "optimizer": torch.load(folder / "optimizer.pt", weights_only=True, mmap=True, map_location="cpu"),
        "rng": torch.load(folder / "rng.pt", weights_only=True),
        "ema": torch.load(ema_path, weights_only=True) if ema_path.exists() else None,
    }


def prune_checkpoints(checkpoints: list[Path], keep: int) -> None:
    """Delete the oldest complete checkpoints beyond `keep` (0 keeps all)."""
    if keep <= 0:
        return
    for old in checkpoints[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
