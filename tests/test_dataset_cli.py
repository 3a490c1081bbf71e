"""Specification of the dataset CLI: `dataset ingest|doctor|captions|push` and `caption`."""

from __future__ import annotations

import argparse
import json
import zipfile

import numpy as np
import pytest
from PIL import Image

from sdtune_ui.cli.dataset import add_dataset_commands
from sdtune_ui.data.formats import read_captions, read_dataset_info


def run(argv: list[str]) -> int:
    """Parse with a throwaway parser holding only our commands, then call the handler like cli.main does."""
    parser = argparse.ArgumentParser(prog="sdtune_ui")
    add_dataset_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.handler(args)


@pytest.fixture(autouse=True)
def _home(tmp_path_factory, monkeypatch):
    # One home for the module: tiny-blip is built once.
    monkeypatch.setenv("SDTUNE_HOME", str(tmp_path_factory.getbasetemp() / "cli-home"))


def photos(folder, count=3, size=(48, 48)):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        pixels = np.random.default_rng(i).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"photo{i}.png")
    return folder


def test_dataset_ingest_prints_the_report_and_exit_code(tmp_path, capsys):
    archive = tmp_path / "up.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("a.png", (photos(tmp_path / "src", 1) / "photo0.png").read_bytes())
        zf.writestr("a.txt", "a noisy square")
        zf.writestr("../evil.txt", "x")
    assert run(["dataset", "ingest", str(archive), "--out", str(tmp_path / "ds")]) == 0
    out = capsys.readouterr().out
    assert "Added 1 image(s)" in out and "../evil.txt" in out
    assert read_captions(tmp_path / "ds") == {"a.png": "a noisy square"}
    assert run(["dataset", "ingest", str(tmp_path / "missing.zip"), "--out", str(tmp_path / "ds2")]) == 1


def test_dataset_ingest_json_output(tmp_path, capsys):
    photos(tmp_path / "src", 2)
    assert run(["dataset", "ingest", str(tmp_path / "src"), "--out", str(tmp_path / "ds"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and [k["file"] for k in report["kept"]] == ["photo0.png", "photo1.png"]


def test_dataset_doctor_text_json_and_exit_codes(tmp_path, capsys):
    ds = photos(tmp_path / "ds", 2)
    assert run(["dataset", "doctor", str(ds), "--resolution", "32"]) == 1  # no captions at all: an error
    assert "have no caption" in capsys.readouterr().out
    (ds / "photo0.txt").write_text("sks thing")
    (ds / "photo1.txt").write_text("thing")
    assert run(["dataset", "doctor", str(ds), "--trigger", "sks", "--resolution", "32", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [f["files"] for f in report["findings"] if f["code"] == "missing_trigger"] == [["photo1.png"]]
    assert run(["dataset", "doctor", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_dataset_captions_edits_and_writes_dreambooth_info(tmp_path, capsys):
    ds = photos(tmp_path / "ds", 1)
    (ds / "photo0.txt").write_text("a cat")
    assert run(["dataset", "captions", str(ds), "--find", "cat", "--replace", "dog", "--trigger", "sks",
                "--instance-prompt", "a photo of sks dog", "--class-prompt", "a photo of dog"]) == 0
    assert read_captions(ds) == {"photo0.png": "sks, a dog"}
    assert read_dataset_info(ds)["instance_prompt"] == "a photo of sks dog"
    assert run(["dataset", "captions", str(ds)]) == 2
    assert "Nothing to do" in capsys.readouterr().err


def test_dataset_push_needs_a_token_from_the_environment(tmp_path, monkeypatch, capsys):
    import huggingface_hub

    ds = photos(tmp_path / "ds", 1)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    assert run(["dataset", "push", str(ds), "--repo-id", "me/x"]) == 2
    assert "No Hub token" in capsys.readouterr().err


def test_caption_command_with_tiny_blip_prefixes_the_trigger(tmp_path, capsys):
    ds = photos(tmp_path / "ds", 2)
    assert run(["caption", str(ds), "--captioner", "tiny-blip", "--trigger", "sks", "--device", "cpu"]) == 0
    assert "Captioned 2 image(s)" in capsys.readouterr().out
    captions = read_captions(ds)
    assert len(captions) == 2 and all(c.startswith("sks, ") for c in captions.values())


def test_unknown_captioner_is_exit_code_2(tmp_path, capsys):
    ds = photos(tmp_path / "ds", 1)
    assert run(["caption", str(ds), "--captioner", str(tmp_path / "no-model")]) == 2
    assert "Unknown captioner" in capsys.readouterr().err


def test_ingest_caption_doctor_then_the_training_core_trains_on_the_result(tmp_path, capsys):
    """The acceptance path, through the real `python -m sdtune_ui` entry point."""
    from sdtune_ui.cli.main import main

    src = photos(tmp_path / "src", 3)
    ds = tmp_path / "ds"
    assert main(["dataset", "ingest", str(src), "--out", str(ds), "--resolution", "32"]) == 0
    assert main(["caption", str(ds), "--captioner", "tiny-blip", "--trigger", "sks", "--device", "cpu"]) == 0
    assert main(["dataset", "doctor", str(ds), "--trigger", "sks", "--resolution", "32"]) == 0
    run_dir = tmp_path / "run"
    code = main(["train", "--model", "tiny-sd1", "--data", str(ds), "--steps", "2", "--resolution", "32",
                 "--output", str(run_dir)])
    assert code == 0, capsys.readouterr()
    assert (run_dir / "output" / "pytorch_lora_weights.safetensors").is_file()
