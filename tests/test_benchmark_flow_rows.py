"""The GPU acceptance rows of SD3.5 Medium and Flux.1-dev (benchmarks/side_by_side.py) build the commands they
should, on a CPU: the peer's own scripts at 1024 px batch 1 in bf16, ours with the same settings, the smallest-memory
row ours alone; and the full-size models are the architectures the memory estimate counts."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from sdtune_ui.families import family_named

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def load(name: str):
    sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("model", "script"), [("sd35m", "train_dreambooth_lora_sd3.py"),
                                               ("flux", "train_dreambooth_lora_flux.py")])
def test_peer_and_our_commands_train_the_same_lora(model, script, tmp_path):
    sbs = load("side_by_side")
    peer = sbs.peer_command(tmp_path, model, "lora", 100, tmp_path / "w", tmp_path / "i", tmp_path / "o")
    assert peer[peer.index(str(tmp_path / script)) - 1] == "no"   # accelerate launch ... --dynamo_backend no
    ours = sbs.our_command(model, "lora", 100, tmp_path / "w", tmp_path / "i", tmp_path / "o", [])
    for command in (peer, ours):
        text = " ".join(command)
        assert "--resolution 1024" in text and "1e-4" in text and "--rank 4" in text and str(tmp_path / "w") in text
    assert peer[peer.index("--train_batch_size") + 1] == "1" and ours[ours.index("--batch-size") + 1] == "1"
    assert "bf16" in peer


def test_the_smallest_memory_row_runs_ours_alone_with_the_memory_savers(tmp_path, monkeypatch):
    sbs = load("side_by_side")
    ran: list[list[str]] = []

    def fake_run(command, out, log, timeout, env):
        ran.append(command)
        Path(log).write_text("")
        return {"returncode": 0, "wall_s": 1.0, "process_s": 1.0, "peak_mib": 1}

    monkeypatch.setattr(sbs, "run_process", fake_run)
    args = argparse.Namespace(work=str(tmp_path), weights=str(tmp_path / "w"), deadline=0, ours_only=False,
                              peer_scripts=str(tmp_path), ours_extra="", peer_pythonpath="")
    result = sbs.measure_row("flux:lora:100:small", args, {}, {})
    assert len(ran) == 1 and ran[0][1:3] == ["-m", "sdtune_ui"] and "--gradient-checkpointing" in ran[0]
    assert result["run"] == "smallest memory"
    sbs.measure_row("sd35m:lora:100", args, {}, {})
    assert any("train_dreambooth_lora_sd3.py" in " ".join(c) for c in ran[1:])   # peer and ours


@pytest.mark.parametrize(("model", "family"), [("sd35m", "sd3"), ("flux", "flux")])
def test_full_size_models_are_the_ones_the_memory_estimate_counts(model, family):
    full_size = load("full_size")
    with torch.device("meta"):
        pipe = full_size.BUILDERS[model]()
    profile = family_named(family).memory
    assert sum(p.numel() for p in pipe.transformer.parameters()) == profile.unet_params
    encoders = [pipe.text_encoder, pipe.text_encoder_2] + ([pipe.text_encoder_3] if family == "sd3" else [])
    assert tuple(sum(p.numel() for p in e.parameters()) for e in encoders) == profile.text_encoder_params


def test_a_calls_results_are_summarised_in_a_line_per_row_with_a_failed_runs_log(tmp_path):
    sbs = load("side_by_side")
    rows = [{"model": "flux", "method": "lora", "steps": 50, "run": "first", "e2e_ratio": 1.99,
             "ours": {"wall_s": 50.9, "steady_it_s": 1.79, "peak_mib": 48887, "returncode": 0,
                      "phases_s": {"caches": 2.4}, "allocated_peak_gib_by_phase_end": {"caches": 9.6}},
             "peer": {"wall_s": 101.3, "returncode": 1, "log_tail": "illegal memory access"}}]
    results = tmp_path / "e2e.jsonl"
    results.write_text("".join(json.dumps(row) + "\n" for row in rows))
    lines = sbs.summary_lines(results)
    assert lines[0].startswith("flux lora 50 first: ratio 1.99 | ours 50.9 s 1.79 it/s 48887 MiB rc 0 | peer 101.3 s")
    assert "'caches': 9.6" in lines[1] and lines[2] == "peer log tail: illegal memory access"
