"""When the trainer compiles the UNet (sdtune_ui.train.speed): only where the compile time is won back."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from sdtune_ui.config import TrainConfig
from sdtune_ui.families import family_named
from sdtune_ui.train.speed import (
    CUDNN_ATTENTION_PAYS_FROM_IMAGES,
    compile_plan,
    compile_scope,
    cudnn_attention_plan,
    eager,
    images_per_process,
)

SD1, SDXL = family_named("sd1")(), family_named("sdxl")()


def plan(compile_unet="auto", family=SD1, device_type="cuda", total_steps=2000, bucket_count=1, sharded=False,
         processes=1, **measurements):
    config = TrainConfig(compile_unet=compile_unet)
    return compile_plan(config, family=family, device_type=device_type, total_steps=total_steps,
                        bucket_count=bucket_count, sharded=sharded, processes=processes, **measurements)


def test_auto_compiles_long_single_shape_runs_on_cuda_with_cuda_graphs():
    assert TrainConfig().compile_unet == "auto"
    assert plan()[0] == "reduce-overhead"
    # SDXL's eager step is slower, so a shorter run already wins the compile time back.
    assert plan(family=SDXL, total_steps=SDXL.auto_compile_min_steps)[0] == "reduce-overhead"
    assert SDXL.auto_compile_min_steps < SD1.auto_compile_min_steps


@pytest.mark.parametrize("situation, expected_reason", [
    (dict(total_steps=SD1.auto_compile_min_steps - 1), "would not win back"),
    (dict(family=SDXL, total_steps=SDXL.auto_compile_min_steps - 1), "would not win back"),
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
    assert compile_scope(TrainConfig(), SDXL) == "blocks"
    assert compile_scope(TrainConfig(), SD1) == "whole"
    assert compile_scope(TrainConfig(compile_scope="whole"), SDXL) == "whole"


class CopyCounter(TorchDispatchMode):
    """Counts dtype-conversion copies (aten._to_copy) run inside it."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += func.__name__.startswith("_to_copy")
        return func(*args, **(kwargs or {}))


def test_lora_without_its_input_cast_computes_the_same_under_autocast():
    """The adapter's fp32 input copy is pure overhead under autocast: outputs and gradients are identical."""
    from peft import LoraConfig, get_peft_model

    from sdtune_ui.train.speed import skip_adapter_input_casts

    def run(skip: bool):
        torch.manual_seed(0)
        base = torch.nn.Sequential(torch.nn.Linear(16, 16)).to(torch.bfloat16)
        model = get_peft_model(base, LoraConfig(r=4, target_modules=["0"], init_lora_weights="gaussian"))
        for name, p in model.named_parameters():
            if "lora" in name:
                p.data = p.data.float()
                torch.nn.init.normal_(p)  # non-zero B, so the adapter's path matters
        if skip:
            skip_adapter_input_casts([model])
        x = torch.randn(3, 16, dtype=torch.bfloat16)
        copies = CopyCounter()
        with copies, torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
        out.float().sum().backward()
        grads = [p.grad for name, p in model.named_parameters() if "lora" in name]
        return out, grads, copies.count

    (out_a, grads_a, copies_a), (out_b, grads_b, copies_b) = run(False), run(True)
    assert copies_b == copies_a - 2  # the input's trip to fp32 and back
    assert torch.equal(out_a, out_b)
    assert all(torch.equal(a, b) for a, b in zip(grads_a, grads_b))


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


def test_auto_compiles_only_when_this_machines_measurements_say_it_pays():
    # With the step captured as a CUDA graph and nothing measured here, auto does not compile.
    mode, reason = plan(graphed=True)
    assert mode == "none" and "measured" in reason
    # Measured on this machine: compiling costs 180 s and saves 5 ms per step.
    found = {"graph_step_s": 0.030, "compiled+graph_step_s": 0.025, "compile_cold_s": 180.0, "compile_warm_s": 20.0}
    assert plan(graphed=True, measured=found, total_steps=1000)[0] == "none"          # saves 5 s < 180 s
    assert plan(graphed=True, measured=found, total_steps=50_000)[0] == "default"     # inside the graph
    # A cached compile costs only its warm time: 1000 steps no longer pay, 10,000 do.
    assert plan(graphed=True, measured=found, total_steps=1000, cache_exists=True)[0] == "none"
    mode, reason = plan(graphed=True, measured=found, total_steps=10_000, cache_exists=True)
    assert mode == "default" and "cached" in reason
    # Without a graph the eager step is the baseline, and compiling means reduce-overhead.
    eager = {"eager_step_s": 0.15, "compiled_step_s": 0.03, "compile_cold_s": 180.0}
    assert plan(measured=eager, total_steps=1000)[0] == "none"
    assert plan(measured=eager, total_steps=2000)[0] == "reduce-overhead"


@pytest.mark.slow
def test_a_second_run_loads_the_compile_cache_and_compiles_nothing(toy_dataset, tmp_path, monkeypatch):
    """The first compiled run saves its compiled code in the data folder; the next run of the same model (here:
    empty in-memory and on-disk torch caches, as in a new process) loads it and compiles nothing. CPU inductor."""
    from torch._dynamo.utils import counters
    from torch._inductor.codecache import PyCodeCache
    from train_helpers import losses, quick_config, run_training

    from sdtune_ui.paths import cache_dir
    from sdtune_ui.train import speed

    monkeypatch.setattr(speed, "compile_plan", lambda config, **_: ("default", "forced by the test"))
    common = dict(method="lora", max_train_steps=3, learning_rate=1e-3, compile_unet="default",
                  compile_scope="blocks", checkpointing_steps=0)

    def fresh_torch_caches(name):
        torch._dynamo.reset()
        PyCodeCache.cache_clear()
        monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / name))
        counters.clear()

    fresh_torch_caches("inductor-first")
    first = run_training(quick_config(toy_dataset, **common), tmp_path / "first")
    assert counters["inductor"]["fxgraph_cache_miss"] > 0       # compiled from scratch
    assert list(cache_dir("compile").glob("*-default-blocks.bin"))

    fresh_torch_caches("inductor-second")
    second = run_training(quick_config(toy_dataset, **common), tmp_path / "second")
    assert counters["inductor"]["fxgraph_cache_hit"] > 0
    assert counters["inductor"]["fxgraph_cache_miss"] == 0     # nothing compiled again
    assert losses(second) == pytest.approx(losses(first), rel=1e-5)
    logs = [e["message"] for e in second.read_events() if e["kind"] == "log"]
    assert any("from the compile cache" in m for m in logs)
    torch._dynamo.reset()


def test_cudnn_attention_is_used_only_where_building_its_kernels_pays():
    """A new machine builds cuDNN's attention kernels for each shape (~7 s for SD1.5): short runs go without."""
    flux = family_named("flux")()
    short, long = 400, CUDNN_ATTENTION_PAYS_FROM_IMAGES
    assert TrainConfig().cudnn_attention == "auto"
    assert cudnn_attention_plan(TrainConfig(), SD1, images=short)[0] is False
    assert cudnn_attention_plan(TrainConfig(), SD1, images=long)[0] is True
    assert cudnn_attention_plan(TrainConfig(cudnn_attention="on"), SD1, images=short)[0] is True
    assert cudnn_attention_plan(TrainConfig(cudnn_attention="off"), SDXL, images=long)[0] is False
    # A family whose training crashes in cuDNN's kernel never gets it, whatever the setting.
    use, why = cudnn_attention_plan(TrainConfig(cudnn_attention="on"), flux, images=long)
    assert use is False and "fails" in why


def test_the_images_a_run_spreads_that_cost_over_are_one_process_s():
    """Each process builds its own kernels, so a run's images count per process (class images included)."""
    assert images_per_process(TrainConfig(max_train_steps=400, train_batch_size=2), examples=5, processes=4) == 800
    assert images_per_process(TrainConfig(max_train_steps=400, with_prior_preservation=True), 5, 1) == 800
    assert images_per_process(TrainConfig(max_train_steps=0, num_train_epochs=100), examples=40, processes=2) == 2000
