"""`python -m sdtune_ui generate|grid|export|push`: files written, settings remembered, token never printed."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from generate_helpers import (
    one_torch_thread,  # noqa: F401 - autouse fixture (one torch thread)
    trained_run,
)
from PIL import Image

from sdtune_ui import hub
from sdtune_ui.cli.main import main

TOKEN = "hf_CLItokenABCDEFGH12345678"
FAST = ["--steps", "2", "--width", "32", "--height", "32"]


def test_generate_with_a_lora_file_and_scale(tmp_path, capsys):
    lora = trained_run("lora") / "output" / "pytorch_lora_weights.safetensors"
    code = main(["generate", "--model", "tiny-sd1", "--lora", f"{lora}:0.8", "--prompt", "a photo of sks robot",
                 "--seed", "5", "--num-images", "2", "--out", str(tmp_path), *FAST])
    assert code == 0
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["seed-5.png", "seed-6.png"]
    settings = json.loads(Image.open(tmp_path / "seed-6.png").text["parameters"])
    assert settings["seed"] == 6 and settings["prompt"] == "a photo of sks robot" and settings["steps"] == 2
    assert "seed 6" in capsys.readouterr().out


def test_generate_from_a_run_checkpoint_and_compare(tmp_path, capsys):
    run = trained_run("pivotal")
    assert main(["generate", "--run", f"{run}@step-3", "--prompt", "a photo of <sks>", "--compare",
                 "--out", str(tmp_path), *FAST]) == 0
    out = capsys.readouterr().out
    assert "trigger words: <sks>" in out
    assert (tmp_path / "compare.png").exists() and (tmp_path / "base-seed-0.png").exists()
    base = np.asarray(Image.open(tmp_path / "base-seed-0.png"), dtype=np.float32)
    tuned = np.asarray(Image.open(tmp_path / "seed-0.png"), dtype=np.float32)
    assert np.abs(base - tuned).max() > 1


def test_generate_refuses_pickle_unless_allowed(tmp_path, capsys):
    import torch

    evil = tmp_path / "lora.bin"
    torch.save({"lora_unet_x.lora_down.weight": torch.zeros(1)}, evil)
    code = main(["generate", "--model", "tiny-sd1", "--lora", str(evil), "--prompt", "x", "--out", str(tmp_path)])
    assert code == 2 and "pickle" in capsys.readouterr().err
    assert main(["generate", "--prompt", "x", "--out", str(tmp_path)]) == 2
    assert "--model" in capsys.readouterr().err


def test_grid_command(tmp_path, capsys):
    out = tmp_path / "grid.png"
    assert main(["grid", str(trained_run("lora")), "--steps", "3", "final", "--inference-steps", "2",
                 "--size", "32", "--out", str(out)]) == 0
    assert Image.open(out).size[0] > 4 * 128 and "Wrote" in capsys.readouterr().out


def test_export_command(tmp_path, capsys):
    run = trained_run("lora")
    assert main(["export", str(run), "--format", "kohya", "--out", str(tmp_path)]) == 0
    assert (tmp_path / f"{run.name}.safetensors").exists() and (tmp_path / "README.md").exists()
    assert main(["export", str(run), "--format", "single-file", "--out", str(tmp_path / "x")]) == 2
    with pytest.raises(SystemExit):
        main(["export", str(run), "--format", "ckpt", "--out", str(tmp_path)])


def test_push_command_reads_the_token_from_the_environment(monkeypatch, capsys, caplog):
    caplog.set_level(logging.DEBUG)
    calls = []

    class Api:
        def __init__(self, token):
            calls.append(("token", token))

        def create_repo(self, **kwargs):
            calls.append(("create_repo", kwargs))

        def upload_folder(self, **kwargs):
            calls.append(("upload_folder", sorted(p.name for p in Path(kwargs["folder_path"]).iterdir())))

    monkeypatch.setattr(hub, "default_api", Api)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    run = trained_run("lora")
    assert main(["push", str(run), "--repo-id", "me/cli-lora"]) == 0
    assert calls[0] == ("token", TOKEN)
    assert calls[1][1]["private"] is True
    assert "pytorch_lora_weights.safetensors" in calls[2][1] and "README.md" in calls[2][1]
    captured = capsys.readouterr()
    assert TOKEN not in captured.out + captured.err
    assert all(TOKEN not in record.getMessage() for record in caplog.records)
    monkeypatch.delenv("HF_TOKEN")
    assert main(["push", str(run), "--repo-id", "me/cli-lora"]) == 2
    assert "HF_TOKEN" in capsys.readouterr().err
