"""The whole training step (forward, backward, clipping, AdamW) captured as one CUDA graph and replayed.

At batch 1 the eager step is bound by the host: Python, autograd and ~4,000 kernel launches per step keep
the GPU mostly idle (benchmarks/README.md). A CUDA graph records the step's kernels once and replays them
with one launch, without torch.compile: capturing costs seconds, not minutes.

How it stays correct:
- A graph reads and writes fixed addresses. Each batch shape gets static input buffers (latents, text
  embeddings, noise, timesteps, ...); every step copies its batch into them before the replay. The noise and
  timesteps are drawn outside the graph by the trainer's generator, exactly as in the eager step, so both
  paths see the same random numbers.
- The learning rate is a static buffer too (a graph would otherwise bake in the value seen at capture);
  the schedule's float is copied into it before each replay.
- The first steps of each shape run eagerly (warm-up: lazy initialisation, the optimizer's state), then the
  next step is captured (which runs nothing) and replayed.
- The loss stays on the GPU; the trainer reads losses back only when it logs.
Where capture is unsafe, `capture_plan` says why and the trainer stays eager.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections import Counter
from collections.abc import Callable, Hashable, Iterator
from typing import Any, Protocol

import torch

from sdtune_ui.config import TrainConfig

WARMUP_STEPS = 2   # eager steps per shape before its capture: the optimizer state exists, lazy set-up is done
MAX_SHAPES = 4     # graphs kept at once (one per aspect bucket); other shapes run eagerly


def capture_plan(config: TrainConfig, *, device_type: str, processes: int, sharded: bool,
                 mixed_precision: str, family: Any = None) -> tuple[bool, str]:
    """(capture?, why): whether the trainer captures its step as a CUDA graph, and the reason for the log."""
    if config.cuda_graph == "off":
        return False, "cuda_graph is off"
    if family is not None and not family.cuda_graph_checked:
        return False, f"the captured step was not yet checked against the eager one on {family.label}"
    if device_type != "cuda":
        return False, "CUDA graphs need a CUDA GPU"
    if processes > 1 or sharded:
        return False, "several processes exchange gradients outside the step (DDP/FSDP), which is not captured"
    # Gradient checkpointing is captured too: the recomputed forward is more kernels in the same graph
    # (checked against the eager step on SDXL at 1024 px, benchmarks/README.md). Only torch.compile's own CUDA
    # graphs (reduce-overhead) cannot hold it (speed.py).
    if config.gradient_accumulation_steps > 1:
        return False, "gradient accumulation splits an optimizer step over several batches (not captured)"
    if mixed_precision == "fp16":
        return False, "fp16's loss scaler checks for overflow on the host every step"
    if config.optimizer != "adamw":
        return False, f"only the fused AdamW can update inside a graph ({config.optimizer} cannot)"
    return True, "single GPU, fixed shapes per bucket, fused AdamW"


class StepGraph(Protocol):
    """What GraphedStep needs from a graph: record a function once, run it again on the same buffers."""

    def capture(self, fn: Callable[[], torch.Tensor]) -> torch.Tensor: ...

    def replay(self) -> None: ...


class CudaStepGraph:
    """torch.cuda.CUDAGraph behind StepGraph; all graphs of one trainer share one memory pool (they never run at
    the same time, so one step's temporaries can reuse another shape's)."""

    def __init__(self, pool: Any = None):
        self.graph = torch.cuda.CUDAGraph()
        self.pool = pool

    def capture(self, fn: Callable[[], torch.Tensor]) -> torch.Tensor:
        with torch.cuda.graph(self.graph, pool=self.pool):
            return fn()

    def replay(self) -> None:
        self.graph.replay()


def make_graph(pool: Any = None) -> StepGraph:
    """A new graph (tests replace this with a stand-in that runs the function again at each replay)."""
    return CudaStepGraph(pool)


def batch_signature(batch: Any) -> Hashable:
    """What a graph is specialised to: every tensor's shape and dtype, and the non-tensor fields that shape the
    computation (the number of class images in the batch). Names and prompts vary freely."""
    signature = []
    for field in dataclasses.fields(batch):
        value = getattr(batch, field.name)
        if isinstance(value, torch.Tensor):
            signature.append((field.name, tuple(value.shape), value.dtype))
        elif isinstance(value, list) and value and isinstance(value[0], torch.Tensor):
            signature.append((field.name, tuple((tuple(v.shape), v.dtype) for v in value)))
        elif field.name == "num_class":
            signature.append((field.name, value))
    return tuple(signature)


def static_copy(batch: Any) -> Any:
    """A batch whose tensors are new buffers with the same contents: the addresses a graph is captured on."""
    changes = {}
    for field in dataclasses.fields(batch):
        value = getattr(batch, field.name)
        if isinstance(value, torch.Tensor):
            changes[field.name] = value.clone()
        elif isinstance(value, list) and value and isinstance(value[0], torch.Tensor):
            changes[field.name] = [v.clone() for v in value]
    return dataclasses.replace(batch, **changes)


def load_into(static: Any, batch: Any) -> None:
    """Copy a batch's tensors into a captured graph's input buffers."""
    for field in dataclasses.fields(batch):
        value = getattr(batch, field.name)
        if isinstance(value, torch.Tensor):
            getattr(static, field.name).copy_(value, non_blocking=True)
        elif isinstance(value, list) and value and isinstance(value[0], torch.Tensor):
            for target, source in zip(getattr(static, field.name), value):
                target.copy_(source, non_blocking=True)


@dataclasses.dataclass
class CapturedStep:
    graph: StepGraph
    inputs: Any                     # the static batch the graph reads
    loss: torch.Tensor              # the static loss the graph writes
    grads: list[torch.Tensor | None]  # its gradient buffers, kept alive while eager steps of other shapes run


class GraphedStep:
    """Runs training steps: eagerly while warming up (or for shapes past MAX_SHAPES), else by graph replay.

    `step_fn(batch)` does forward, backward, clipping and the optimizer update and returns the detached loss;
    gradients are left for this class to clear (a captured backward must write fresh gradient buffers).
    """

    def __init__(self, step_fn: Callable[[Any], torch.Tensor], optimizer: torch.optim.Optimizer,
                 params: list[torch.Tensor], *, log: Callable[[str], None], device: torch.device,
                 warmup_steps: int = WARMUP_STEPS, max_shapes: int = MAX_SHAPES):
        self.step_fn = step_fn
        self.optimizer = optimizer
        self.params = params
        self.log = log
        self.device = device
        self.warmup_steps = warmup_steps
        self.max_shapes = max_shapes
        self.captured: dict[Hashable, CapturedStep] = {}
        self.eager_steps: Counter[Hashable] = Counter()
        self.failure = ""                       # why capturing was given up (then every step is eager)
        self.capture_seconds = 0.0
        self.replays = 0
        self._lr_buffers: list[torch.Tensor] = []
        self._lr_values: list[float] = []
        self._pool: Any = None
        self._side_stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self._told_about_shapes = False

    def __call__(self, batch: Any) -> torch.Tensor:
        key = batch_signature(batch)
        captured = self.captured.get(key)
        if captured is None and self._should_capture(key):
            captured = self._capture(key, batch)
        if captured is None:
            return self._eager(key, batch)
        load_into(captured.inputs, batch)
        self._load_learning_rates()
        captured.graph.replay()
        self.replays += 1
        return captured.loss.clone()  # the buffer is overwritten by the next replay

    @property
    def warmed_up(self) -> bool:
        """True once a graph has been captured (the steady rate starts after this)."""
        return bool(self.captured)

    def _should_capture(self, key: Hashable) -> bool:
        if self.failure or self.eager_steps[key] < self.warmup_steps:
            return False
        if len(self.captured) >= self.max_shapes:
            if not self._told_about_shapes:
                self.log(f"More than {self.max_shapes} batch shapes: the others run eagerly (no more graphs)")
                self._told_about_shapes = True
            return False
        return True

    def _eager(self, key: Hashable, batch: Any) -> torch.Tensor:
        for p in self.params:   # a graph's gradient buffers stay with the graph; eager steps start from none
            p.grad = None
        # Warm-up on a side stream, as torch's whole-network capture recipe does: lazy per-stream set-up
        # (autograd, cuBLAS) then happens outside the capture.
        stream = self._side_stream
        if stream is not None:
            stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
            loss = self.step_fn(batch)
            self.optimizer.zero_grad(set_to_none=True)
        if stream is not None:
            torch.cuda.current_stream(self.device).wait_stream(stream)
            loss.record_stream(torch.cuda.current_stream(self.device))  # read later on the main stream
        self.eager_steps[key] += 1
        return loss

    def _capture(self, key: Hashable, batch: Any) -> CapturedStep | None:
        started = time.perf_counter()
        if not self._lr_buffers:
            groups = self.optimizer.param_groups
            # fused AdamW reads a float32 learning rate (as it rounds a float one); the CPU stand-in keeps it exact
            dtype = torch.float32 if self.device.type == "cuda" else torch.float64
            self._lr_buffers = [torch.tensor(float(g["lr"]), dtype=dtype, device=self.device) for g in groups]
            self._lr_values = [float(g["lr"]) for g in groups]
        inputs = static_copy(batch)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()  # the eager warm-up's cached blocks: the graph gets its own pool
        graph = make_graph(self._pool)
        try:
            loss = graph.capture(lambda: self._captured_step(inputs))
        except (RuntimeError, TypeError, ValueError) as err:   # an operation that cannot be captured
            self.failure = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
            self.log(f"Capturing the training step as a CUDA graph failed, training eagerly ({self.failure})")
            for p in self.params:
                p.grad = None
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            return None
        if self._pool is None and isinstance(graph, CudaStepGraph):
            self._pool = graph.graph.pool()
        captured = CapturedStep(graph, inputs, loss, [p.grad for p in self.params])
        self.captured[key] = captured
        seconds = time.perf_counter() - started
        self.capture_seconds += seconds
        self.log(f"Captured the training step as a CUDA graph in {seconds:.1f} s "
                 f"(after {self.eager_steps[key]} eager warm-up steps; batch shape {_describe(key)})")
        return captured

    def _captured_step(self, inputs: Any) -> torch.Tensor:
        """The function the graph records (and a stand-in graph re-runs at each replay)."""
        for p in self.params:
            p.grad = None   # so the captured backward writes fresh gradient buffers instead of accumulating
        with self._optimizer_reads_buffers():
            return self.step_fn(inputs)

    @contextlib.contextmanager
    def _optimizer_reads_buffers(self) -> Iterator[None]:
        """The optimizer takes its learning rates from the static buffers inside the captured step; outside it,
        the schedule and checkpoints keep seeing plain floats."""
        groups = self.optimizer.param_groups
        floats = [g["lr"] for g in groups]
        try:
            for group, buffer in zip(groups, self._lr_buffers):
                if buffer.is_cuda:   # fused AdamW reads a tensor learning rate on the GPU at every replay
                    group["lr"], group["capturable"] = buffer, True
                else:                # a stand-in graph on the CPU (tests): the value the buffer holds
                    group["lr"] = buffer.item()
            yield
        finally:
            for group, value in zip(groups, floats):
                group["lr"] = value

    def _load_learning_rates(self) -> None:
        for index, (group, buffer) in enumerate(zip(self.optimizer.param_groups, self._lr_buffers)):
            value = float(group["lr"])
            if value != self._lr_values[index]:   # a fill is a kernel launch: only when the schedule moved
                buffer.fill_(value)
                self._lr_values[index] = value


def _describe(key: Hashable) -> str:
    shapes = dict((entry[0], entry[1]) for entry in key if len(entry) >= 2)
    latents = shapes.get("latents")
    return "x".join(str(n) for n in latents) if latents else "?"
