"""Run by test_sharding.py under torchrun: two CPU processes (gloo) train a tiny UNet sharded with FSDP2
next to an unsharded copy, and check sdtune_ui.train.sharding against it. Writes a JSON report (rank 0)."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from diffusers import UNet2DConditionModel
from diffusers.models.resnet import ResnetBlock2D
from diffusers.models.transformers.transformer_2d import Transformer2DModel
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

from sdtune_ui.models.tiny import build_tiny_pipeline
from sdtune_ui.train import sharding


def shard(unet: torch.nn.Module, mesh) -> None:
    """The units our FSDP config wraps (Transformer2DModel, ResnetBlock2D), then the rest at the root."""
    for module in list(unet.modules()):
        if isinstance(module, (Transformer2DModel, ResnetBlock2D)):
            fully_shard(module, mesh=mesh)
    fully_shard(unet, mesh=mesh)


def step(unet, optimizer, samples: torch.Tensor) -> None:
    timesteps = torch.full((len(samples),), 500)
    text = torch.ones(len(samples), 4, 32)
    loss = unet(samples, timesteps, text).sample.pow(2).mean()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()


def max_difference(a: dict, b: dict) -> float:
    return max((a[k].float() - b[k].float()).abs().max().item() for k in b)


def main(report_path: Path) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    mesh = init_device_mesh("cpu", (world,))
    reference = build_tiny_pipeline("tiny-sd1").unet
    sharded = copy.deepcopy(reference)
    shard(sharded, mesh)
    make_optimizer = lambda model: torch.optim.AdamW(model.parameters(), lr=1e-3)  # noqa: E731
    ref_opt, opt = make_optimizer(reference), make_optimizer(sharded)
    torch.manual_seed(1)
    batches = [torch.randn(2 * world, 4, 16, 16) for _ in range(3)]

    # Two steps: each process sees its slice of the global batch; the reference sees all of it.
    for batch in batches[:2]:
        step(reference, ref_opt, batch)
        step(sharded, opt, batch[2 * rank:2 * rank + 2])
    weights, optimizer_state = sharding.gather_model_state(sharded), sharding.gather_optimizer_state(sharded, opt)
    report: dict = {}
    if rank == 0:
        report["gathered_weights_vs_reference"] = max_difference(weights, reference.state_dict())
        ref_state = ref_opt.state_dict()
        report["same_optimizer_layout"] = (optimizer_state["param_groups"][0]["params"]
                                           == ref_state["param_groups"][0]["params"])
        report["exp_avg_vs_reference"] = max(
            (optimizer_state["state"][i]["exp_avg"] - ref_state["state"][i]["exp_avg"]).abs().max().item()
            for i in ref_state["state"])
        plain = sharding.whole_copy(sharded, weights)
        report["whole_copy_class"] = type(plain).__name__
        plain.save_pretrained(report_path.parent / "unet")
        loaded = UNet2DConditionModel.from_pretrained(report_path.parent / "unet")
        report["saved_vs_reference"] = max_difference(loaded.state_dict(), reference.state_dict())

    # Resume on another process count: a fresh sharded model and optimizer take the unsharded reference's
    # checkpoint (index-keyed optimizer state), then one more step must match the reference's.
    resumed = build_tiny_pipeline("tiny-sd1").unet
    torch.nn.init.zeros_(resumed.conv_in.weight)  # start different, so loading must really happen
    shard(resumed, mesh)
    resumed_opt = make_optimizer(resumed)
    sharding.load_model_state(resumed, reference.state_dict())
    sharding.load_optimizer_state(resumed, resumed_opt, ref_opt.state_dict())
    step(reference, ref_opt, batches[2])
    step(resumed, resumed_opt, batches[2][2 * rank:2 * rank + 2])
    resumed_weights = sharding.gather_model_state(resumed)
    if rank == 0:
        report["resumed_step_vs_reference"] = max_difference(resumed_weights, reference.state_dict())
        report_path.write_text(json.dumps(report))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
