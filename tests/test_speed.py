"""When the trainer compiles the UNet (sdtune_ui.train.speed): only where the compile time is won back."""

from __future__ import annotations

import pytest
import torch

from sdtune_ui.config import TrainConfig
from sdtune_ui.train.speed import AUTO_COMPILE_MIN_STEPS, compile_plan, compile_scope, eager


def plan(compile_unet="auto", device_type="cuda", total_steps=2000, bucket_count=1, sharded=False, processes=1):
    config = TrainConfig(compile_unet=compile_unet)
    return compile_plan(config, device_type=device_type, total_steps=total_steps, bucket_count=bucket_count,
                        sharded=sharded, processes=processes)


def test_auto_compiles_long_single_shape_runs_on_cuda_with_cuda_graphs():
    assert TrainConfig().compile_unet == "auto"
    assert plan()[0] == "reduce-overhead"


@pytest.mark.parametrize("situation, expected_reason", [
    (dict(total_steps=AUTO_COMPILE_MIN_STEPS - 1), "would not win back"),
    (dict(bucket_count=3), "3 aspect buckets"),
    (dict(device_type="cpu"), "needs CUDA"),
    (dict(sharded=True), "FSDP"),
    (dict(processes=2), "DDP"),
])
def test_auto_stays_eager_where_compiling_would_not_pay(situation, expected_reason):
    mode, reason = plan(**situation)
    assert mode == "none" and expected_reason in reason


def test_an_explicit_mode_is_obeyed_on_cuda_and_none_means_none():
    assert plan("default", total_steps=10, bucket_count=4)[0] == "default"
    assert plan("none")[0] == "none"
    assert plan("reduce-overhead", device_type="cpu")[0] == "none"


def test_auto_scope_compiles_sdxl_block_by_block_and_smaller_unets_whole():
    assert compile_scope(TrainConfig(), "sdxl") == "blocks"
    assert compile_scope(TrainConfig(), "sd1") == "whole"
    assert compile_scope(TrainConfig(compile_scope="whole"), "sdxl") == "whole"


def test_sample_images_run_compiled_modules_eagerly():
    compilations = []

    def counting_backend(graph, example_inputs):
        compilations.append(graph)
        return graph.forward

    model = torch.compile(torch.nn.Linear(2, 2), backend=counting_backend)
    with eager():
        model(torch.ones(1, 2))
    assert compilations == []
    model(torch.ones(1, 2))
    assert len(compilations) == 1
