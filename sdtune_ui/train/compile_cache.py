"""Compiled UNets cached in the data folder, and what this machine measured about compiling.

torch.compile spends minutes on a full-size UNet (~3 minutes for SD1.5 on an H200). Its results (inductor's
kernels, AOTAutograd's graphs) are saved after the first compiled steps with `torch.compiler.save_cache_artifacts`
under `<home>/compile/<key>.bin` and loaded before the next compile of the same thing, so only the first run
of a model on a machine pays the whole compile. The key covers everything the compiled code depends on: the
UNet's config and adapters, the batch shape and dtype, the compile mode, the GPU and the library versions.

`measured.json` beside them keeps, per run shape on this machine, the step time of each way of running
(eager, graph, compiled, compiled+graph) and the compile time (cold and with a cache), which is what
`compile_unet=auto` decides from (speed.compile_plan).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import torch

from sdtune_ui.paths import cache_dir


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"torch": torch.__version__}
    for name in ("diffusers", "peft", "transformers", "triton"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = ""
    return found


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} sm{''.join(map(str, torch.cuda.get_device_capability(device)))}"
    return device.type


def run_shape_key(unet: torch.nn.Module, *, method: str, adapter: dict[str, Any], batch_shape: tuple[int, ...],
                  dtype: torch.dtype, device: torch.device) -> str:
    """What a step's speed and compiled code depend on, apart from how it is run (eager, graph, compiled)."""
    described = {"unet": dict(getattr(unet, "config", {})), "method": method, "adapter": adapter,
                 "batch_shape": list(batch_shape), "dtype": str(dtype), "device": device_name(device),
                 "versions": _versions()}
    return hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()[:20]


class CompileCache:
    """The saved compile artifacts of one compiled run shape (its key, the compile mode and scope)."""

    def __init__(self, shape_key: str, mode: str, scope: str, folder: Path | None = None):
        self.folder = folder or cache_dir("compile")
        self.shape_key = shape_key
        self.path = self.folder / f"{shape_key}-{mode}-{scope}.bin"

    def exists(self) -> bool:
        return self.path.is_file()

    def load(self) -> bool:
        """Hand the saved artifacts to torch's caches; True when there were any."""
        if not self.exists():
            return False
        return torch.compiler.load_cache_artifacts(self.path.read_bytes()) is not None

    def save(self) -> int:
        """Save what this process compiled so far (written under a temporary name, then renamed)."""
        artifacts = torch.compiler.save_cache_artifacts()
        if artifacts is None:
            return 0
        data = artifacts[0]
        partial = self.path.with_suffix(f".{os.getpid()}.partial")
        partial.write_bytes(data)
        partial.replace(self.path)
        return len(data)


# ---------------------------------------------------------------------------------------------- measurements
def _measured_path(folder: Path | None) -> Path:
    return (folder or cache_dir("compile")) / "measured.json"


def _read_all(folder: Path | None) -> dict[str, dict[str, float]]:
    try:
        return json.loads(_measured_path(folder).read_text())
    except (OSError, ValueError):
        return {}


def measured(shape_key: str, folder: Path | None = None) -> dict[str, float]:
    """This machine's measurements of a run shape: `<way>_step_s` per way of running (eager, graph, compiled,
    compiled+graph), `compile_cold_s` and `compile_warm_s` (with a cache)."""
    return _read_all(folder).get(shape_key, {})


def record(shape_key: str, folder: Path | None = None, **values: float) -> None:
    everything = _read_all(folder)
    entry = everything.setdefault(shape_key, {})
    entry.update({name: round(float(value), 4) for name, value in values.items()})
    entry["updated"] = round(time.time())
    path = _measured_path(folder)
    partial = path.with_suffix(f".{os.getpid()}.partial")
    partial.write_text(json.dumps(everything, indent=1, sort_keys=True))
    partial.replace(path)
