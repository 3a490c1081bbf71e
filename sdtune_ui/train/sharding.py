"""FSDP support: what the trainer does differently when accelerate shards the UNet over several GPUs.

Under FSDP each process holds only a slice of every weight, gradient and optimizer state, so anything
that needs whole tensors (checkpoints, the final model, resume on another process count) gathers them
first with torch's distributed state-dict API. Every function here is a collective: all processes call it.
Checkpoints keep the same files as without FSDP (index-keyed optimizer state), so a run can resume with
or without sharding and on any number of GPUs.
"""

from __future__ import annotations

from typing import Any

import torch

from sdtune_ui.config import TrainConfig
from sdtune_ui.errors import ConfigError
from sdtune_ui.methods import method_classes


def is_sharded(accelerator: Any) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.FSDP


def check_supported(config: TrainConfig) -> None:
    """FSDP pays off for full fine-tuning; adapters and embeddings are small enough for DDP."""
    if not config.method_class.shardable:
        shardable = ", ".join(cls.name for cls in method_classes() if cls.shardable)
        raise ConfigError({"method": f"FSDP shards full fine-tuning ({shardable}); "
                                     f"{config.method} trains few weights, so launch it with the DDP config "
                                     "(sdtune_ui/accelerate_configs/ddp.yaml) instead."})
    if config.train_text_encoder:
        raise ConfigError({"train_text_encoder": "FSDP shards the UNet only: turn off train_text_encoder, "
                                                 "or launch with the DDP config."})
    if config.optimizer != "adamw":
        raise ConfigError({"optimizer": "Under FSDP only AdamW is tested (8-bit and Prodigy states are not "
                                        "sharded): choose adamw, or launch with the DDP config."})
    if config.use_ema:
        raise ConfigError({"use_ema": "EMA keeps a whole copy of the weights on every GPU, which defeats "
                                      "FSDP: turn it off, or launch with the DDP config."})


def _options(**kwargs: bool):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kwargs)


def trainable_names(model: torch.nn.Module) -> list[str]:
    """Names of the trainable parameters in optimizer order (the method's param group lists them so)."""
    return [name for name, p in model.named_parameters() if p.requires_grad]


def gather_model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Whole fp32 weights on the CPU of the main process (an empty dict on the others)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_options(cpu_offload=True))


def gather_optimizer_state(model: torch.nn.Module, optimizer: Any) -> dict:
    """Whole optimizer state on the main process, keyed by parameter index like an unsharded optimizer's."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    by_name = get_optimizer_state_dict(model, _unwrap_optimizer(optimizer), options=_options(cpu_offload=True))
    return names_to_indices(by_name, trainable_names(model)) if by_name else {}


def load_model_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Each process copies its own slice out of the whole weights (all trainable ones must be there)."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    missing = set(trainable_names(model)) - set(state)
    if missing:
        raise ConfigError({"method": f"The checkpoint lacks {len(missing)} trainable tensors, e.g. "
                                     f"{sorted(missing)[0]} (a different method or model?)."})
    set_model_state_dict(model, state, options=_options(strict=False))


def load_optimizer_state(model: torch.nn.Module, optimizer: Any, index_state: dict) -> None:
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    by_name = indices_to_names(index_state, trainable_names(model))
    set_optimizer_state_dict(model, _unwrap_optimizer(optimizer), by_name, options=_options())


def names_to_indices(state: dict, names: list[str]) -> dict:
    """Optimizer state keyed by parameter name -> keyed by position, as `optimizer.state_dict()` writes it."""
    index = {name: i for i, name in enumerate(names)}
    return {"state": {index[name]: value for name, value in state["state"].items()},
            "param_groups": [{**group, "params": [index[name] for name in group["params"]]}
                             for group in state["param_groups"]]}


def indices_to_names(state: dict, names: list[str]) -> dict:
    if sum(len(group["params"]) for group in state["param_groups"]) != len(names):
        raise ConfigError({"method": "This checkpoint's optimizer state does not match the model's trainable "
                                     "weights (a different method or model?)."})
    return {"state": {names[int(i)]: value for i, value in state["state"].items()},
            "param_groups": [{**group, "params": [names[int(i)] for i in group["params"]]}
                             for group in state["param_groups"]]}


def whole_copy(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """A plain CPU module of the same class holding the gathered weights (for saving with save_pretrained)."""
    # FSDP2 swaps in a subclass of the model's class (FSDP<Name>): build the plain class it came from.
    plain = next(cls for cls in type(model).__mro__ if hasattr(cls, "from_config") and "FSDP" not in cls.__name__)
    with torch.device("meta"):
        copy = plain.from_config(model.config)
    copy.load_state_dict(state, assign=True)
    return copy


def _unwrap_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    return getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer wraps the real one
