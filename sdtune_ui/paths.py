"""Where the project keeps its own files (model cache, datasets, runs)."""

from __future__ import annotations

import os
from pathlib import Path


def home_dir() -> Path:
    """Root of everything sdtune_ui writes by default; `SDTUNE_HOME` overrides it."""
    root = os.environ.get("SDTUNE_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "sdtune_ui")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_dir(kind: str) -> Path:
    """A sub-folder of the cache, e.g. `cache_dir("models")` for the built-in tiny models."""
    path = home_dir() / kind
    path.mkdir(parents=True, exist_ok=True)
    return path
