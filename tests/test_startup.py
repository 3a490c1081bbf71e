"""What a training run spends before its first step (issue 12): imports it does not need there, and Hub look-ups
that wait for a network that is not there.

Imports are checked in a fresh interpreter (the test process has imported everything long ago), by module name,
not by timing: the machine running the tests may be busy.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sdtune_ui.examples import EXAMPLE_DATASET
from tests.conftest import REPO

# Modules that have no business in a LoRA run before its first step: the app, evaluation and its metrics, exports
# and the Hub upload, captioners and dataset ingest, the generation engine, optional heavy libraries (OpenCV only
# computes ControlNet's canny conditions), and inductor's compiler (imported when a UNet is compiled, never for an
# eager or CUDA-graphed run).
NOT_BEFORE_THE_FIRST_STEP = (
    "gradio", "torchmetrics", "torch_fidelity", "datasets", "cv2", "bitsandbytes", "torch._inductor.compile_fx",
    "sdtune_ui.ui", "sdtune_ui.app.live", "sdtune_ui.app.jobs", "sdtune_ui.evaluate", "sdtune_ui.export",
    "sdtune_ui.hub", "sdtune_ui.caption", "sdtune_ui.data.ingest", "sdtune_ui.generate.engine",
    "sdtune_ui.generate.artifacts", "sdtune_ui.generate.grid",
)

# The CLI's `train` up to the trainer, in a fresh interpreter: the real command line, config, checks and memory
# line; `train()` itself is replaced by one that imports what the real one imports next (except diffusers, which
# would make this test take many seconds) and prints the modules loaded by then.
CLI_UP_TO_THE_TRAINER = """
import json, sys
import sdtune_ui.train

def modules_at_train(config, run_dir, events=None):
    import sdtune_ui.train.resume, sdtune_ui.train.tensorboard, sdtune_ui.train.trainer  # noqa: F401
    print("MODULES " + json.dumps(sorted(sys.modules)))
    raise SystemExit(0)

sdtune_ui.train.train = modules_at_train
from sdtune_ui.cli.main import main
main(sys.argv[1:])
"""

# A whole tiny run that prints the modules loaded when the first step's event is written.
MODULES_AT_THE_FIRST_STEP = """
import json, sys
from sdtune_ui import runs

emit = runs.EventLog.emit

def emit_and_report(self, kind, **fields):
    if kind == "step" and fields.get("step") == 1:
        print("MODULES " + json.dumps(sorted(sys.modules)), flush=True)
    return emit(self, kind, **fields)

runs.EventLog.emit = emit_and_report
from sdtune_ui.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def loaded_modules(script: str, argv: list[str]) -> set[str]:
    result = subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True, cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=600)
    line = next((line for line in result.stdout.splitlines() if line.startswith("MODULES ")), None)
    assert line, f"no module list (exit {result.returncode}):\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return set(json.loads(line.removeprefix("MODULES ")))


def unexpected(modules: set[str]) -> list[str]:
    return sorted(m for m in modules
                  if any(m == name or m.startswith(name + ".") for name in NOT_BEFORE_THE_FIRST_STEP))


def train_argv(tmp_path: Path, *flags: str) -> list[str]:
    return ["train", "--model", "tiny-sd1", "--data", str(EXAMPLE_DATASET), "--steps", "2",
            "--output", str(tmp_path / "run"), *flags]


def test_the_train_command_reaches_the_trainer_without_the_other_commands_modules(tmp_path):
    modules = loaded_modules(CLI_UP_TO_THE_TRAINER, train_argv(tmp_path))
    assert {"sdtune_ui.cli.train", "sdtune_ui.train.trainer", "sdtune_ui.train.setup", "torch"} <= modules
    assert not unexpected(modules)
    # train() imports diffusers after it starts the CUDA context on a thread, so that the two overlap on a GPU.
    assert "diffusers" not in modules


@pytest.mark.slow
def test_a_run_has_imported_nothing_it_does_not_need_when_its_first_step_ends(tmp_path):
    modules = loaded_modules(MODULES_AT_THE_FIRST_STEP, train_argv(tmp_path, "--quiet"))
    assert {"diffusers.training_utils", "peft", "sdtune_ui.train.trainer"} <= modules
    assert not unexpected(modules)


def commands_of(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def test_a_command_s_parser_is_the_same_whether_built_alone_or_with_every_command():
    from sdtune_ui.cli.main import build_parser, command_in

    full = commands_of(build_parser())
    assert {"train", "runs", "dataset", "caption", "generate", "export", "evaluate", "sweep"} <= set(full)
    assert command_in(["-v", "train", "--steps", "3"]) == "train" and command_in(["--help"]) is None
    for command, parser in full.items():
        assert commands_of(build_parser(command))[command].format_help() == parser.format_help()
    assert set(commands_of(build_parser("train"))) == {"train", "runs", "presets"}  # only the train group


# Just enough of a denoiser's config for family detection to tell the families apart.
SDXL_UNET = {"_class_name": "UNet2DConditionModel", "addition_embed_type": "text_time"}
SD3_TRANSFORMER = {"_class_name": "SD3Transformer2DModel"}


def fake_hub_cache(root: Path, repo_id: str, files: dict[str, dict]) -> Path:
    """A Hugging Face cache holding `files` of `repo_id` at its main revision, laid out as huggingface_hub does."""
    repo = root / ("models--" + repo_id.replace("/", "--"))
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    for name, content in files.items():
        path = repo / "snapshots" / commit / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(content))
    return root


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """huggingface_hub with its cache in tmp_path/hub and the Hub switched on (as for a user without
    HF_HUB_OFFLINE); each test replaces hf_hub_download, so nothing can reach the network."""
    import huggingface_hub
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return huggingface_hub


def test_a_cached_hub_model_s_family_is_read_from_the_cache_without_the_network(tmp_path, hub, monkeypatch):
    from sdtune_ui.families import family_of_model

    fake_hub_cache(tmp_path / "hub", "someone/an-sdxl-model", {"unet/config.json": SDXL_UNET})
    fake_hub_cache(tmp_path / "hub", "someone/an-sd3-model", {"transformer/config.json": SD3_TRANSFORMER})

    def no_network(repo_id, filename, **kwargs):
        raise AssertionError(f"the network was asked for {repo_id} {filename}")  # offline it waits ~25 s here

    monkeypatch.setattr(hub, "hf_hub_download", no_network)
    assert family_of_model("someone/an-sdxl-model").name == "sdxl"
    assert family_of_model("someone/an-sd3-model").name == "sd3"


def test_without_a_network_a_hub_model_s_family_is_asked_for_once_then_falls_back(hub, monkeypatch):
    from huggingface_hub.errors import LocalEntryNotFoundError

    from sdtune_ui.families import family_classes, family_of_model

    asked = []

    def offline(repo_id, filename, **kwargs):
        asked.append(filename)  # the real call waits through its retries first (~25 s)
        raise LocalEntryNotFoundError("no connection, and the file is not in the cache")

    monkeypatch.setattr(hub, "hf_hub_download", offline)
    assert family_of_model("someone/not-downloaded") is family_classes()[-1]
    assert asked == ["unet/config.json"]


def test_an_uncached_hub_model_without_a_unet_is_read_from_its_transformer_config(tmp_path, hub, monkeypatch):
    from huggingface_hub.errors import EntryNotFoundError

    from sdtune_ui.families import family_of_model

    downloaded = tmp_path / "transformer-config.json"
    downloaded.write_text(json.dumps(SD3_TRANSFORMER))
    asked = []

    def download(repo_id, filename, **kwargs):
        asked.append(filename)
        if filename == "transformer/config.json":
            return str(downloaded)
        raise EntryNotFoundError(f"{repo_id} has no {filename}")

    monkeypatch.setattr(hub, "hf_hub_download", download)
    assert family_of_model("someone/an-sd3-model").name == "sd3"
    assert asked == ["unet/config.json", "transformer/config.json"]


def test_the_run_log_says_how_long_the_process_took_to_start(toy_dataset, tmp_path):
    from train_helpers import quick_config, run_training

    run = run_training(quick_config(toy_dataset, max_train_steps=2), tmp_path / "run")
    logs = {e.get("phase"): e for e in run.read_events() if e["kind"] == "log"}
    start = logs["start"]
    assert 0 < start["before_trainer_s"] < start["seconds"] and start["imports_s"] >= 0
    assert "Started in" in start["message"]
