"""An installed wheel works on its own: `pip install .`, then from another folder the CLI trains the packaged
demo model demo-sd1 on the packaged example dataset, the metrics load the packaged demo-dino and the app's "Load
the example" finds it (package data, not the repository)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from tests.conftest import REPO


@pytest.mark.slow
def test_pip_installed_package_trains_on_its_packaged_example_from_another_folder(tmp_path):
    # A venv that sees this machine's torch/diffusers (no downloads) but gets sdtune_ui only from the install.
    env_dir = tmp_path / "venv"
    venv.create(env_dir, system_site_packages=True, with_pip=False)   # the machine's setuptools builds it
    python = str(env_dir / "bin" / "python")
    build = tmp_path / "build"   # a copy of the source, so the build leaves nothing in the repository
    top_level_only = {".git", "tests", "benchmarks", "data", "runs", "test-artifacts", "wheels", ".devcarry"}
    shutil.copytree(REPO, build, ignore=lambda folder, names: [
        n for n in names
        if (Path(folder) == REPO and n in top_level_only) or n == "__pycache__" or n.endswith(".egg-info")])
    install = subprocess.run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps",
                              "--no-build-isolation", "-q", str(build)],
                             capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr[-2000:]

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    probe = subprocess.run(
        [python, "-c", "import json, pathlib, sdtune_ui; from sdtune_ui.examples import EXAMPLE_DATASET; "
         "from sdtune_ui.app.ops import load_example; "
         "print(json.dumps([sdtune_ui.__file__, str(EXAMPLE_DATASET), str(load_example(pathlib.Path('ds')))]))"],
        capture_output=True, text=True, cwd=elsewhere, env=env, timeout=120)
    assert probe.returncode == 0, probe.stderr[-2000:]
    package_file, example, loaded = json.loads(probe.stdout.strip().splitlines()[-1])
    assert str(env_dir) in package_file and str(env_dir) in example   # not the repository's copy
    assert len(list((elsewhere / loaded).glob("*.png"))) >= 4            # "Load the example" copied the images

    # The pre-trained demo model ships in the wheel (package data) and loads from there by its name.
    where = "from sdtune_ui.models import resolve_model; print(resolve_model('demo-sd1'))"
    probe = subprocess.run([python, "-c", where], capture_output=True, text=True, cwd=elsewhere, env=env, timeout=120)
    demo = Path(probe.stdout.strip().splitlines()[-1])
    assert str(env_dir) in str(demo) and (demo / "unet" / "diffusion_pytorch_model.safetensors").exists()
    # So does its feature model demo-dino, which the metrics load by name.
    where = ("from sdtune_ui.evaluate.features import feature_models; "
             "print(feature_models().get('dino', 'demo-dino').model.name_or_path)")
    probe = subprocess.run([python, "-c", where], capture_output=True, text=True, cwd=elsewhere, env=env, timeout=120)
    assert probe.returncode == 0, probe.stderr[-2000:]
    demo_dino = Path(probe.stdout.strip().splitlines()[-1])
    assert str(env_dir) in str(demo_dino) and (demo_dino / "model.safetensors").exists()
    result = subprocess.run(
        [python, "-m", "sdtune_ui", "train", "--model", "demo-sd1", "--data", example, "--steps", "2",
         "--checkpointing-steps", "0", "--validation-steps", "0", "--output", str(tmp_path / "run")],
        capture_output=True, text=True, cwd=elsewhere, env=env, timeout=300)
    assert result.returncode == 0, result.stdout[-1000:] + result.stderr[-2000:]
    assert (tmp_path / "run" / "output" / "pytorch_lora_weights.safetensors").exists()
