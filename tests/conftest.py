"""Shared test set-up: an isolated SDTUNE_HOME (tiny models are built once per session) and the example data."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from sdtune_ui.examples import EXAMPLE_DATASET

REPO = Path(__file__).resolve().parent.parent

# Offline by construction: any accidental Hub access fails fast instead of hanging.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session", autouse=True)
def sdtune_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """All tests share one cache of the built-in tiny models, in a temporary home."""
    home = Path(os.environ.get("SDTUNE_TEST_HOME") or tmp_path_factory.mktemp("sdtune_home"))
    os.environ["SDTUNE_HOME"] = str(home)
    return home


@pytest.fixture
def toy_dataset(tmp_path: Path) -> Path:
    """A private copy of the example dataset (tests may edit it)."""
    target = tmp_path / "toy_robot"
    shutil.copytree(EXAMPLE_DATASET, target)
    return target
