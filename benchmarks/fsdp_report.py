"""Summarise the FSDP smoke runs of run_fsdp.sh as one JSON object (what each run folder shows)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sdtune_ui.runs import RunDir  # noqa: E402


def summary(path: Path) -> dict:
    run = RunDir(path)
    events = run.read_events() if (path / "events.jsonl").exists() else []
    losses = {e["step"]: round(e["loss"], 6) for e in events if e["kind"] == "step"}
    logs = [e["message"] for e in events if e["kind"] == "log"]
    statuses = [e for e in events if e["kind"] == "status"]
    result = {
        "status": statuses[-1].get("status") if statuses else None,
        "message": statuses[-1].get("message") if statuses else None,
        "losses": losses,
        "checkpoints": [c.name for c in run.checkpoints()] if path.exists() else [],
        "samples": len(list((path / "samples").glob("*.png"))),
        "log": [m for m in logs if "process" in m or "Resumed" in m],
        "output": sorted(str(p.relative_to(path)) for p in (path / "output").glob("*")) if path.exists() else [],
    }
    unet_dir = path / "output" / "unet"
    if unet_dir.exists():
        from diffusers import UNet2DConditionModel

        unet = UNet2DConditionModel.from_pretrained(unet_dir)
        result["output_unet_params"] = sum(p.numel() for p in unet.parameters())
    return result


def main(root: Path) -> None:
    runs = {name: summary(root / name) for name in ("fsdp", "fsdp_then_1gpu", "one", "one_then_fsdp")}
    fsdp, one = runs["fsdp"]["losses"], runs["one"]["losses"]
    common = sorted(set(fsdp) & set(one))
    runs["fsdp_vs_one_gpu_max_relative_loss_difference"] = (
        max(abs(fsdp[s] - one[s]) / abs(one[s]) for s in common) if common else None)
    print(json.dumps(runs, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
