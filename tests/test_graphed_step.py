"""The captured training step (sdtune_ui.train.graphed_step): where it applies, and that it learns exactly what
the plain step learns.

A CUDA graph cannot run on the CPU, so these tests replace the graph by a stand-in that records the function at
"capture" (running nothing, as a real capture runs nothing) and runs it again on the same static buffers at each
"replay". Everything else is the real code: the trainer's step function, the static input buffers per batch
shape, the copy of each batch into them, the learning-rate buffers and the gradient handling.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from safetensors.torch import load_file
from train_helpers import TI_PROMPT, losses, quick_config, run_training

from sdtune_ui.config import TrainConfig
from sdtune_ui.train import graphed_step
from sdtune_ui.train.graphed_step import GraphedStep, batch_signature, capture_plan


class ReplayByCalling:
    """Stand-in for a CUDA graph: capture records the function; each replay runs it and writes the static loss."""

    instances: list[ReplayByCalling] = []

    def __init__(self, pool=None):
        self.fn = None
        self.loss = torch.zeros(())
        self.replays = 0
        ReplayByCalling.instances.append(self)

    def capture(self, fn):
        self.fn = fn
        return self.loss

    def replay(self):
        self.loss.copy_(self.fn())
        self.replays += 1


def plan(**overrides):
    situation = dict(device_type="cuda", processes=1, sharded=False, mixed_precision="bf16")
    situation.update({k: overrides.pop(k) for k in list(overrides) if k in situation})
    config_values = overrides
    return capture_plan(TrainConfig(**config_values), **situation)


def test_a_single_gpu_run_is_captured_by_default():
    assert TrainConfig().cuda_graph == "auto"
    assert plan()[0] is True


def test_a_run_with_gradient_checkpointing_is_captured_too():
    """The 12 GB settings checkpoint; their step is captured with the recomputation inside the graph."""
    assert plan(gradient_checkpointing=True)[0] is True


@pytest.mark.parametrize("situation, reason", [
    (dict(cuda_graph="off"), "off"),
    (dict(device_type="cpu"), "CUDA GPU"),
    (dict(processes=2), "DDP"),
    (dict(sharded=True), "FSDP"),
    (dict(gradient_accumulation_steps=4), "accumulation"),
    (dict(mixed_precision="fp16"), "loss scaler"),
    (dict(optimizer="prodigy"), "AdamW"),
])
def test_capture_is_refused_where_it_is_unsafe_and_the_reason_is_given(situation, reason):
    capture, why = plan(**situation)
    assert capture is False and reason in why


@pytest.fixture
def forced_graph(monkeypatch):
    """Make the trainer capture on the CPU, with the stand-in graph."""
    ReplayByCalling.instances = []
    monkeypatch.setattr(graphed_step, "capture_plan", lambda config, **_: (True, "forced by the test"))
    monkeypatch.setattr(graphed_step, "make_graph", ReplayByCalling)
    return ReplayByCalling.instances


@pytest.mark.parametrize("method, extra", [
    # A schedule that changes the learning rate every step: the replays must read the moving value.
    ("lora", dict(lr_scheduler="linear", lr_warmup_steps=2, snr_gamma=5.0)),
    # The text encoder runs inside the step (new token embeddings learn); prompts vary per step.
    ("textual_inversion", dict(instance_prompt=TI_PROMPT)),
    # Inpainting inputs (mask, masked latents: a mask drawn per step) and the masked loss are copied in per step.
    ("lora", dict(model="tiny-sd1-inpaint", masked_loss=True, mask_variants=3)),
    # The ControlNet runs inside the step, its condition pictures copied in per step.
    ("controlnet", dict(conditioning="canny")),
    # Checkpointed blocks recompute their forward inside the backward, inside the same graph.
    ("lora", dict(gradient_checkpointing=True)),
])
def test_the_graphed_step_learns_exactly_what_the_plain_step_learns(toy_dataset, tmp_path, forced_graph, method,
                                                                    extra):
    common = dict(method=method, max_train_steps=6, learning_rate=1e-3, checkpointing_steps=5, log_every=2,
                  caption_dropout=0.3, **extra)
    graphed = run_training(quick_config(toy_dataset, **common), tmp_path / "graphed")
    assert len(forced_graph) == 1
    # 2 eager warm-up steps, then the capture (which runs nothing) and replays for steps 3-6.
    assert forced_graph[0].replays == 4
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(graphed_step, "capture_plan", lambda config, **_: (False, "plain"))
        plain = run_training(quick_config(toy_dataset, **common), tmp_path / "plain")
    assert losses(graphed) == losses(plain)
    a = load_file(graphed.checkpoints()[-1] / "trainable.safetensors")
    b = load_file(plain.checkpoints()[-1] / "trainable.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[key], b[key]) for key in a)
    logs = [e["message"] for e in graphed.read_events() if e["kind"] == "log"]
    assert any("Captured the training step" in m for m in logs)


@dataclass
class ToyBatch:
    latents: torch.Tensor
    noise: torch.Tensor
    num_class: int
    names: list[str]


def toy_step(model, optimizer, seen):
    def step(batch):
        seen.append(batch.latents.clone())
        loss = ((model(batch.latents) - batch.noise) ** 2).mean()
        loss.backward()
        optimizer.step()
        return loss.detach()
    return step


def test_each_batch_shape_gets_its_own_graph_and_buffers_up_to_a_limit(monkeypatch):
    monkeypatch.setattr(graphed_step, "make_graph", ReplayByCalling)
    ReplayByCalling.instances = []
    model = torch.nn.Linear(4, 4)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    seen: list[torch.Tensor] = []
    messages: list[str] = []
    step = GraphedStep(toy_step(model, optimizer, seen), optimizer, list(model.parameters()), log=messages.append,
                       device=torch.device("cpu"), warmup_steps=1, max_shapes=2)

    def batch(rows, value):
        return ToyBatch(torch.full((rows, 4), float(value)), torch.zeros(rows, 4), 0, [f"img{value}"])

    for value in range(3):
        step(batch(1, value))
    assert len(ReplayByCalling.instances) == 1 and step.eager_steps[batch_signature(batch(1, 0))] == 1
    # The replays read the static buffer, which held each new batch's values.
    assert [float(t[0, 0]) for t in seen] == [0.0, 1.0, 2.0]
    step(batch(2, 3))
    step(batch(2, 4))
    step(batch(3, 5))
    step(batch(3, 6))   # a third shape past max_shapes=2: eager, no third graph
    assert len(ReplayByCalling.instances) == 2
    assert any("More than 2 batch shapes" in m for m in messages)
    # Names are not part of the shape: another image of the same size reuses the graph.
    assert batch_signature(batch(1, 0)) == batch_signature(batch(1, 9))
    assert batch_signature(batch(1, 0)) != batch_signature(batch(2, 0))


def test_a_step_that_cannot_be_captured_trains_eagerly_and_says_why(monkeypatch):
    class FailingGraph(ReplayByCalling):
        def capture(self, fn):
            raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(graphed_step, "make_graph", FailingGraph)
    model = torch.nn.Linear(4, 4)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    messages: list[str] = []
    step = GraphedStep(toy_step(model, optimizer, []), optimizer, list(model.parameters()), log=messages.append,
                       device=torch.device("cpu"), warmup_steps=1)
    before = model.weight.detach().clone()
    for _ in range(4):
        loss = step(ToyBatch(torch.ones(1, 4), torch.zeros(1, 4), 0, ["a"]))
    assert torch.isfinite(loss) and not torch.equal(before, model.weight)  # every step still trained
    assert step.failure and not step.captured
    assert any("failed, training eagerly" in m and "stream is capturing" in m for m in messages)
