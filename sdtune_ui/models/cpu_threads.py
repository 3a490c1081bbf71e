"""CPU threads for the built-in offline models.

A model of a few MB gains nothing from torch's intra-op threads: its matrices are too small to split. With
another process busy on the same cores (a shared 2-core machine, the app generating while a run trains) those
threads wait for each other: the README's demo LoRA ran at 0.3 steps/s with torch's default 2 threads and at
7 steps/s with one, on the same loaded machine. So work on an offline demo model (`demo-sd1`, `tiny-*`) on
the CPU runs with one thread; real models keep torch's default.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


def wants_one_thread(model: str, device: str | torch.device | None = None) -> bool:
    """Whether `model` is a built-in offline model that would run on the CPU (`device`, else no CUDA here)."""
    from sdtune_ui.models import OFFLINE_MODELS

    if (model or "").strip() not in OFFLINE_MODELS:
        return False
    return torch.device(device).type == "cpu" if device is not None else not torch.cuda.is_available()


@contextlib.contextmanager
def offline_model_threads(model: str, device: str | torch.device | None = None) -> Iterator[None]:
    """One intra-op thread in this block when `model` is an offline demo model on the CPU (restored after)."""
    if not wants_one_thread(model, device):
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
