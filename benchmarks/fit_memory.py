"""Fit the memory estimate's activation terms to the measured peaks and print the table (CPU, seconds).

    python3 benchmarks/fit_memory.py            # the fit, then every case: measured, estimated, error
    python3 benchmarks/fit_memory.py --counts   # also recount the parameters of the full-size models (meta device)

The estimate (sdtune_ui/train/memory.py) is exact bookkeeping for weights, gradients and optimizer state plus
an activation term per image and megapixel. The unknowns are fitted by least squares, one stage at a time, each
on the cases that isolate it (benchmarks/memory_cases.json lists the cases, and what was left out and why):
  1. per family, activation GiB per megapixel (over a fixed small constant): eager LoRA / TI steps without
     checkpointing;
  2. the full fine-tuning factor: eager full / DreamBooth steps without checkpointing;
  3. the gradient checkpointing factor: checkpointed steps;
  4. the compiled factor per scope (whole UNet, repeated blocks): compiled steps without checkpointing.
The printed values are rounded into memory.py and the families' MemoryProfile by hand; tests/test_memory.py
checks the estimate against every case (within 20%).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from sdtune_ui.config import TrainConfig  # noqa: E402
from sdtune_ui.families import family_named  # noqa: E402
from sdtune_ui.train import memory  # noqa: E402

# The benchmark's names -> the registries' names.
FAMILIES = {"sd15": "sd1", "sdxl": "sdxl"}
METHODS = {"lora": "lora", "full": "full", "dreambooth": "dreambooth", "ti": "textual_inversion",
           "pivotal": "pivotal"}


@dataclasses.dataclass
class Case:
    source: str
    record: dict
    measured_gib: float
    config: TrainConfig
    family: type
    processes: int
    sharded: bool
    compile_mode: str   # "none", "whole" or "blocks"

    @property
    def label(self) -> str:
        r = self.record
        bits = [r["model"], r["method"], f"bs{r['batch']}", f"{r['resolution']}px"]
        if r["gradient_checkpointing"]:
            bits.append("GC")
        if self.compile_mode != "none":
            bits.append(f"compiled ({self.compile_mode})")
        if r.get("cuda_graph"):
            bits.append("CUDA-graph step")
        if self.processes > 1:
            bits.append(f"{self.processes} GPUs {'FSDP' if self.sharded else 'DDP'}")
        return " ".join(bits)

    def estimate(self) -> memory.MemoryEstimate:
        return memory.estimate_memory(self.config, self.family, processes=self.processes, sharded=self.sharded,
                                      compile_mode=self.compile_mode)


def load_cases() -> list[Case]:
    spec = json.loads((HERE / "memory_cases.json").read_text())
    cases = []
    for entry in spec["cases"]:
        lines = (HERE / "results" / entry["file"]).read_text().splitlines()
        record = json.loads(lines[entry["line"]])
        measured = (record["peak_allocated_gib"] if entry["phase"] == "overall"
                    else record["peak_allocated_gib_by_phase"][entry["phase"]])
        compiled = record["compile"] != "none"
        method = METHODS[record["method"]]
        config = TrainConfig(model="benchmark", method=method, data="benchmark", resolution=record["resolution"],
                             train_batch_size=record["batch"], mixed_precision="bf16",
                             gradient_checkpointing=record["gradient_checkpointing"], rank=record.get("rank", 4),
                             cache_latents=record.get("cache", True), cache_text_embeddings=record.get("cache", True),
                             offload_frozen_encoders=record.get("offload", True))
        cases.append(Case(f"{entry['file']}:{entry['line']}", record, measured, config,
                          family_named(FAMILIES[record["model"]]), record.get("processes") or 1,
                          bool(entry.get("fsdp")),
                          (record.get("compile_scope") or "whole") if compiled else "none"))
    return cases


def static_gib(case: Case) -> float:
    parts = case.estimate().parts
    return parts["weights"] + parts["trainable state"] + parts["ema and ddp"]


def fit(cases: list[Case]) -> dict:
    """Least squares, one stage at a time (see the module docstring). Returns the fitted values."""
    def images_mp(case: Case) -> float:
        return case.config.train_batch_size * case.config.resolution ** 2 / 1e6

    full = [c for c in cases if c.config.method in ("full", "dreambooth")]
    gc = [c for c in cases if c.config.gradient_checkpointing]
    compiled = [c for c in cases if c.compile_mode != "none" and not c.config.gradient_checkpointing]
    eager = [c for c in cases if c not in full and c not in gc and c not in compiled]
    families = sorted({c.record["model"] for c in eager})
    # 1. peak - static - constant = coefficient[family] x images x MP. The constant (cuBLAS workspaces and the
    # like) is fixed, not fitted: the eager cases have too few distinct batch sizes to tell it from the slope.
    constant = memory.CONSTANT_GIB
    coefficient = {}
    for family in families:
        group = [c for c in eager if c.record["model"] == family]
        xs = np.array([images_mp(c) for c in group])
        ys = np.array([c.measured_gib - static_gib(c) - constant for c in group])
        coefficient[family] = float(xs @ ys / (xs @ xs))

    def ratio(group: list[Case], base) -> float:  # least squares through the origin: y = factor x base
        xs = np.array([base(c) for c in group])
        ys = np.array([c.measured_gib - static_gib(c) - constant for c in group])
        return float(xs @ ys / (xs @ xs))

    def eager_activation(c: Case) -> float:
        return images_mp(c) * coefficient[c.record["model"]]

    full_factor = ratio([c for c in full if c not in gc and c not in compiled], eager_activation)
    method_factor = {id(c): full_factor if c in full else 1.0 for c in cases}
    gc_factor = ratio(gc, lambda c: eager_activation(c) * method_factor[id(c)])
    scopes = {scope: ratio([c for c in compiled if c.compile_mode == scope],
                           lambda c: eager_activation(c) * method_factor[id(c)])
              for scope in sorted({c.compile_mode for c in compiled})}
    return {"constant_gib": constant, "activation_gib_per_megapixel": coefficient,
            "full_weights": full_factor, "gradient_checkpointing": gc_factor, "compiled": scopes}


def predict(case: Case, fitted: dict) -> float:
    """The estimate with fitted values instead of memory.py's constants (for the leave-one-out check)."""
    factor = fitted["full_weights"] if case.config.method in ("full", "dreambooth") else 1.0
    if case.config.gradient_checkpointing:
        factor *= fitted["gradient_checkpointing"]
    elif case.compile_mode != "none":
        factor *= fitted["compiled"][case.compile_mode]
    images_mp = case.config.train_batch_size * case.config.resolution ** 2 / 1e6
    coefficient = fitted["activation_gib_per_megapixel"][case.record["model"]]
    return static_gib(case) + fitted["constant_gib"] + images_mp * coefficient * factor


def leave_one_out(cases: list[Case]) -> list[float]:
    """Each case predicted by a fit to all the others: the error to expect on a configuration not measured."""
    return [(predict(case, fit([c for c in cases if c is not case])) - case.measured_gib) / case.measured_gib
            for case in cases]


def table(cases: list[Case]) -> str:
    lines = ["| case | source | measured GiB | estimated GiB | error |", "|---|---|---|---|---|"]
    for case in cases:
        estimate = case.estimate().total_gib
        error = (estimate - case.measured_gib) / case.measured_gib
        lines.append(f"| {case.label} | `{case.source}` | {case.measured_gib:.2f} | {estimate:.2f} | {error:+.1%} |")
    return "\n".join(lines)


def count_parameters() -> None:
    """Parameter counts of the full-size architectures (benchmarks/full_size.py) on the meta device."""
    import full_size  # benchmarks/ is on sys.path when run as a script
    import torch
    from accelerate import init_empty_weights

    from sdtune_ui.methods.lora import TEXT_ENCODER_LORA_TARGETS, UNET_LORA_TARGETS

    def per_rank(model: torch.nn.Module, targets: list[str]) -> int:
        total = 0
        for name, module in model.named_modules():
            if not any(name == t or name.endswith("." + t) for t in targets):
                continue
            if isinstance(module, torch.nn.Linear):
                total += module.in_features + module.out_features
            elif isinstance(module, torch.nn.Conv2d):
                total += module.in_channels * module.kernel_size[0] * module.kernel_size[1] + module.out_channels
        return total

    with init_empty_weights():
        for name in ("sd15", "sdxl"):
            pipe = full_size.build(name)
            encoders = [e for e in (pipe.text_encoder, getattr(pipe, "text_encoder_2", None)) if e is not None]
            print(name, {"unet": sum(p.numel() for p in pipe.unet.parameters()),
                         "text_encoders": [sum(p.numel() for p in e.parameters()) for e in encoders],
                         "vae": sum(p.numel() for p in pipe.vae.parameters()),
                         "lora_per_rank": {k: per_rank(pipe.unet, v) for k, v in UNET_LORA_TARGETS.items()},
                         "text_encoder_lora_per_rank": sum(per_rank(e, TEXT_ENCODER_LORA_TARGETS) for e in encoders),
                         "token_embeddings": [e.get_input_embeddings().weight.numel() for e in encoders]})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", action="store_true", help="Recount the full-size models' parameters.")
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))
    if args.counts:
        count_parameters()
    cases = load_cases()
    print(json.dumps(fit(cases), indent=2, default=float))
    print(table(cases))
    errors = [abs(c.estimate().total_gib - c.measured_gib) / c.measured_gib for c in cases]
    print(f"{len(cases)} cases: mean |error| {np.mean(errors):.1%}, max {max(errors):.1%}")
    held_out = np.abs(leave_one_out(cases))
    print(f"leave-one-out (each case predicted by a fit to the others): mean |error| {held_out.mean():.1%}, "
          f"max {held_out.max():.1%} ({cases[int(held_out.argmax())].label})")


if __name__ == "__main__":
    main()
