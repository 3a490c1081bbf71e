"""Speed switches the trainer applies to the UNet: torch.compile (when it pays), DDP settings, the CUDA start.

At batch 1 the eager step is bound by Python and kernel launches (benchmarks/README.md). The captured step
(graphed_step.py) removes that without compiling; compiling fuses kernels too, after minutes. So "auto" compiles
only where this machine's measurements say the compile time is won back (compile_cache.py records them), with
fixed shapes, on CUDA, without FSDP; before anything is measured, the family's break-even from the H100 numbers
is the guess for runs that are not captured.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from sdtune_ui.config import TrainConfig
from sdtune_ui.families import Family


def compile_scope(config: TrainConfig, family: Family) -> str:
    """'auto' asks the family: what compiled fastest for it (e.g. SDXL's many identical blocks one by one,
    80 s, 7.1 steps/s on an H100; SD1.x's whole UNet, 3x faster than blocks at batch 1)."""
    if config.compile_scope != "auto":
        return config.compile_scope
    return family.auto_compile_scope


def compile_plan(config: TrainConfig, *, family: Family, device_type: str, total_steps: int, bucket_count: int,
                 sharded: bool, processes: int = 1, graphed: bool = False, measured: dict | None = None,
                 cache_exists: bool = False) -> tuple[str, str]:
    """(mode, reason): the torch.compile mode to use ("none" = eager) and why, for the run's log.

    `graphed`: the step is captured as a CUDA graph (then the compiled UNet runs inside it: mode 'default').
    `measured`: this machine's measurements of this run shape (compile_cache.measured); `cache_exists`: its
    compiled code is cached, so compiling costs the measured warm time, not the cold one.
    """
    requested = config.compile_unet
    if requested == "none":
        return "none", "compile_unet is none"
    if device_type != "cuda" or sharded:
        return "none", "compiling needs CUDA and is not combined with FSDP"
    if requested != "auto":
        return requested, f"compile_unet is {requested}"
    if bucket_count > 1:
        return "none", f"{bucket_count} aspect buckets would each compile again (auto compiles one shape)"
    if processes > 1:
        return "none", "auto does not compile DDP runs yet (not measured; set compile_unet to compile anyway)"
    mode = "default" if graphed else "reduce-overhead"
    baseline, compiled = ("graph", "compiled+graph") if graphed else ("eager", "compiled")
    found = measured or {}
    base_step, compiled_step = found.get(f"{baseline}_step_s"), found.get(f"{compiled}_step_s")
    compile_s = found.get("compile_warm_s" if cache_exists else "compile_cold_s")
    if cache_exists and compile_s is None:
        compile_s = found.get("compile_cold_s")
    if base_step and compiled_step and compile_s is not None:
        saved = total_steps * (base_step - compiled_step)
        cost = f"{compile_s:.0f} s of compiling{' (cached)' if cache_exists else ''}"
        if saved > compile_s:
            return mode, f"measured on this machine: {cost} saves {saved:.0f} s over {total_steps} steps"
        return "none", (f"measured on this machine: {cost} would save only {max(saved, 0):.0f} s over "
                        f"{total_steps} steps")
    if graphed:
        return "none", ("the captured step needs no compiling; auto compiles once this machine has measured that it "
                        "pays (a run with compile_unet=default measures it)")
    # Nothing measured here yet: the family's break-even run length from the benchmarks (an H100) as a first guess.
    min_steps = family.auto_compile_min_steps
    if total_steps < min_steps:
        return "none", f"a {total_steps}-step run would not win back the compile time (auto compiles " \
                       f"{family.label} runs from {min_steps} steps until this machine has measured its own)"
    return mode, f"auto: {total_steps} steps of one shape on CUDA (nothing measured on this machine yet)"


def compile_unet(unet: torch.nn.Module, mode: str, scope: str = "whole", gradient_checkpointing: bool = False) -> str:
    """Compile the UNet in place (the module, its parameters and state-dict keys stay the same); return the mode.

    Compiling fuses the many small ops, and 'reduce-overhead' also replays them as CUDA graphs. scope
    'blocks' compiles each repeated transformer block once and reuses it (about a minute less compiling;
    the resnets stay eager).
    """
    if gradient_checkpointing and mode == "reduce-overhead":
        # Recomputing a checkpointed block in the backward pass re-runs its CUDA graph, which overwrites
        # outputs the backward still needs (seen on SDXL): fused kernels only.
        mode = "default"
    options = dict(mode=None if mode == "default" else mode, dynamic=False)
    if scope == "blocks":
        unet.compile_repeated_blocks(**options)
    else:
        unet.compile(**options)
    return mode


def skip_adapter_input_casts(models: list[torch.nn.Module]) -> None:
    """Stop peft from casting each LoRA layer's input to the adapter's fp32 before every call.

    Under autocast the adapter's matmul runs in half precision anyway, so the input went bf16 -> fp32 -> bf16:
    two full copies of every adapted activation per forward (and their gradients in the backward) for an
    identical result. On eager SDXL this removed 840 of ~5,400 copy kernels per step (benchmarks/README.md).
    Only for mixed precision: in fp32 training there is nothing to cast.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    for model in models:
        for module in model.modules():
            if isinstance(module, BaseTunerLayer):
                module.cast_input_dtype_enabled = False


@contextlib.contextmanager
def eager() -> Iterator[None]:
    """Run compiled modules eagerly inside (sample images: other shapes, no gradients, not worth compiling)."""
    set_stance = getattr(torch.compiler, "set_stance", None)
    with set_stance("force_eager") if set_stance else contextlib.nullcontext():
        yield


def ddp_settings(config: TrainConfig) -> Any:
    """DDP without per-step buffer broadcasts or gradient copies.

    The UNet has no buffers that change in training, and bucket views let the all-reduce work on the
    gradients in place. (A bf16 compression hook was measured on 2xH200 and made full fine-tuning slower:
    benchmarks/README.md.)
    """
    from accelerate.utils import DistributedDataParallelKwargs

    return DistributedDataParallelKwargs(broadcast_buffers=False, gradient_as_bucket_view=True)


# cuDNN attention's first use on a machine builds its kernels for each new shape: SD1.5's first forward+backward
# at batch 1 took 7.7 s with it and 0.8 s without (benchmarks/first_step.py, H200, empty kernel cache); once built
# (the driver keeps them on disk) its captured step is 1.5 ms faster (20.2 vs 21.7 ms). Break-even: ~4,500 images.
# Measured on one SD1.5 shape: aspect buckets and bigger models build more kernels, so this errs towards cuDNN.
CUDNN_ATTENTION_PAYS_FROM_IMAGES = 4500


def images_per_process(config: TrainConfig, examples: int, processes: int) -> int:
    """How many images one process pushes through the UNet in this run (class images of prior preservation
    included): what the one-time cost of building kernels is spread over, since every process builds its own."""
    with_class = 2 if config.with_prior_preservation else 1   # each instance image brings a class image
    if config.max_train_steps:
        return config.max_train_steps * config.train_batch_size * config.gradient_accumulation_steps * with_class
    return config.num_train_epochs * examples * with_class // max(processes, 1)


def cudnn_attention_plan(config: TrainConfig, family: Family, images: int) -> tuple[bool, str]:
    """(use cuDNN attention?, why): `images` is how many images one process trains on (images_per_process)."""
    if not family.trains_with_cudnn_attention:
        return False, f"it fails on {family.label} in training"
    if config.cudnn_attention != "auto":
        return config.cudnn_attention == "on", f"cudnn_attention is {config.cudnn_attention}"
    if images < CUDNN_ATTENTION_PAYS_FROM_IMAGES:
        return False, (f"building its kernels on a new machine (~7 s) costs more than it saves in {images} images; "
                       f"runs from {CUDNN_ATTENTION_PAYS_FROM_IMAGES:,} images use it")
    return True, f"{images} images win back building its kernels on a new machine"


def process_age_s() -> float | None:
    """Seconds since this process started (Linux: /proc), for the start-up phase in the run's log; None elsewhere."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")   # field 22 of stat: start time, in ticks since boot
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - started   # the clock that start time counts on
    except (OSError, ValueError, IndexError, AttributeError):
        return None
    return age if age >= 0 else None


def start_cuda_in_background() -> threading.Thread | None:
    """Create the CUDA context on a thread while the main thread imports diffusers and reads
    the data (each takes seconds; torch waits for the context where it first needs it). One process on one GPU
    only: under `accelerate launch` each process must pick its own GPU first."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 or not torch.cuda.is_available():
        return None

    def initialise() -> None:
        try:
            torch.cuda.init()
            torch.empty(1, device="cuda")  # the primary context and the caching allocator
        except RuntimeError:  # a broken driver is reported by the main thread's first CUDA call instead
            pass

    thread = threading.Thread(target=initialise, name="cuda-init", daemon=True)
    thread.start()
    return thread
