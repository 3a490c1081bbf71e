"""FSDP checkpoints (sdtune_ui.train.sharding): gathered from shards, they equal an unsharded run's, and
a sharded run resumes from an unsharded checkpoint. Two CPU processes with gloo and torch's FSDP2
(accelerate itself only shards on GPUs; the trainer's FSDP path is measured on the GPU machine)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sdtune_ui.errors import ConfigError
from sdtune_ui.train import sharding
from tests.apphelpers import free_port
from tests.train_helpers import quick_config

ROOT = Path(__file__).resolve().parent.parent
# Adam moves every weight by about the learning rate (1e-3) per step; reduction order between processes
# changes the last digits of the gradients, so "the same" means well under a third of one step.
SAME = 3e-4


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    path = tmp_path_factory.mktemp("fsdp") / "report.json"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               "--master_port", str(free_port()), str(ROOT / "tests" / "fsdp_worker.py"), str(path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(path.read_text())


def test_gathered_weights_and_optimizer_state_equal_an_unsharded_run(report):
    assert report["gathered_weights_vs_reference"] < SAME
    assert report["same_optimizer_layout"]
    assert report["exp_avg_vs_reference"] < 1e-6


def test_the_final_model_is_saved_as_a_plain_unet(report):
    assert report["whole_copy_class"] == "UNet2DConditionModel"
    assert report["saved_vs_reference"] < SAME


def test_a_sharded_run_resumes_from_an_unsharded_checkpoint(report):
    assert report["resumed_step_vs_reference"] < SAME


def test_index_and_name_keyed_optimizer_states_convert_both_ways():
    names = ["a.weight", "b.weight"]
    by_index = {"state": {0: {"step": 1}, 1: {"step": 1}}, "param_groups": [{"lr": 0.1, "params": [0, 1]}]}
    by_name = sharding.indices_to_names(by_index, names)
    assert by_name["state"].keys() == {"a.weight", "b.weight"}
    assert sharding.names_to_indices(by_name, names) == by_index
    with pytest.raises(ConfigError, match="does not match"):
        sharding.indices_to_names(by_index, names[:1])


@pytest.mark.parametrize("change", [dict(method="lora"), dict(method="full", train_text_encoder=True),
                                    dict(method="full", use_ema=True), dict(method="full", optimizer="prodigy")])
def test_fsdp_refuses_what_it_cannot_shard_with_a_way_out(toy_dataset, change):
    with pytest.raises(ConfigError) as raised:
        sharding.check_supported(quick_config(toy_dataset, **change))
    assert "DDP" in str(raised.value) or "turn" in str(raised.value)


@pytest.mark.parametrize("name", ["ddp", "fsdp"])
def test_the_shipped_accelerate_configs_load_and_name_real_unet_blocks(name):
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DistributedType

    from sdtune_ui.app.jobs import accelerate_config
    from sdtune_ui.models.tiny import build_tiny_pipeline

    config = load_config_from_file(str(accelerate_config(name)))
    if name == "ddp":
        assert config.distributed_type == DistributedType.MULTI_GPU
        return
    assert config.distributed_type == DistributedType.FSDP and config.fsdp_config["fsdp_version"] == 2
    # The wrap policy finds its classes by name: they must exist in an SDXL-shaped UNet.
    wrapped = set(config.fsdp_config["fsdp_transformer_layer_cls_to_wrap"].split(","))
    present = {type(module).__name__ for module in build_tiny_pipeline("tiny-sdxl").unet.modules()}
    assert wrapped <= present


def test_the_app_refuses_fsdp_without_gpus_or_for_lora(toy_dataset, tmp_path, monkeypatch):
    from sdtune_ui.app import ops as app_ops
    from sdtune_ui.app.jobs import JobQueue
    from sdtune_ui.ui.context import AppContext

    jobs = JobQueue(lambda config, run_dir, cancel=None: "completed")  # nothing may reach it: every start is refused
    ctx = AppContext(data_dir=tmp_path, jobs=jobs)
    try:
        full = quick_config(toy_dataset, method="full").to_dict()
        monkeypatch.setattr(app_ops, "gpu_count", lambda: 0)
        with pytest.raises(ConfigError, match="needs 2"):
            app_ops.start_training(ctx, full, public=False, num_processes=2, multi_gpu_mode="fsdp")
        monkeypatch.setattr(app_ops, "gpu_count", lambda: 2)
        lora = quick_config(toy_dataset, method="lora").to_dict()
        with pytest.raises(ConfigError, match="DDP config"):
            app_ops.start_training(ctx, lora, public=False, num_processes=2, multi_gpu_mode="fsdp")
        for bad in (99, "two"):
            with pytest.raises(ConfigError, match="num_processes"):
                app_ops.start_training(ctx, full, public=False, num_processes=bad)
        with pytest.raises(ConfigError, match="multi_gpu_mode"):
            app_ops.start_training(ctx, full, public=False, num_processes=2, multi_gpu_mode="zero9")
    finally:
        jobs.close()


def test_a_checkpoint_missing_trainable_weights_is_refused_with_a_message():
    model = torch.nn.Linear(2, 2)
    with pytest.raises(ConfigError, match="lacks 1 trainable"):
        sharding.load_model_state(model, {"weight": torch.zeros(2, 2)})
