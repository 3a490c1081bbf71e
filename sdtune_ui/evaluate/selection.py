"""Pick the best checkpoint from its scores (with the reason, as data) and make a checkpoint the run's output.

The rule: among the checkpoints whose class drift stays under a limit (the class prompt must still draw the
class, not the subject), the best by the chosen metric; earlier checkpoints win ties. When every checkpoint
drifted, the one that drifted least, and the reason says so. When the winner is no better than the base
model, the reason says that too: the run may not have learned the subject yet.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from sdtune_ui.errors import SdtuneError
from sdtune_ui.runs import RunDir

# Record key -> True when higher is better.
HIGHER_IS_BETTER = {"dino": True, "clip_i": True, "clip_t": True, "class_preservation": True,
                    "class_drift": False, "fid": False, "kid": False, "loss": False, "loss_class": False}
PHRASES = {"dino": "subject fidelity (DINO {:.3f})", "clip_i": "subject fidelity (CLIP-I {:.3f})",
           "clip_t": "prompt fidelity (CLIP-T {:.3f})", "class_preservation": "class preservation ({:.3f})",
           "class_drift": "class drift ({:.3f})", "fid": "FID ({:.2f})", "kid": "KID ({:.4f})",
           "loss": "held-out loss ({:.4f})", "loss_class": "held-out class loss ({:.4f})"}
NAMES = {"dino": "dino", "clip-i": "clip_i", "clip-t": "clip_t", "drift": "class_drift", "kid": "kid",
         "fid": "fid", "loss": "loss"}
PREFERENCE = ("dino", "clip-i", "clip-t", "kid", "fid", "loss")
# Scored for comparison, never chosen: the base model, and the earlier output an init_from run started from.
REFERENCES = ("base", "start")
PROMOTED_FILE = "PROMOTED.json"
REPLACED_OUTPUT = "output-final"


def metric_key(name: str) -> str:
    """The record key of a metric given by its CLI name (clip-i) or key (clip_i)."""
    key = NAMES.get(name, name)
    if key not in HIGHER_IS_BETTER:
        raise SdtuneError(f"Unknown metric {name!r}; choose one of {', '.join(NAMES)}.")
    return key


def default_metric(measured: Sequence[str]) -> str:
    """The metric to rank by when none is named: subject fidelity first (DINO, then CLIP-I)."""
    return next((NAMES[name] for name in PREFERENCE if name in measured), "loss")


def describe(key: str, value: float) -> str:
    return PHRASES[key].format(value)


@dataclass
class BestCheckpoint:
    step: int
    source: str          # checkpoint | output
    metric: str
    value: float
    reason: str

    @property
    def label(self) -> str:
        return "final output" if self.source == "output" else f"step {self.step}"

    def to_dict(self) -> dict:
        return {**asdict(self), "label": self.label}


def choose_best(records: Sequence[dict], metric: str = "dino", *,
                max_drift: float = 0.05) -> tuple[dict, str] | None:
    """(the best record, why) among scored records (as in metrics.jsonl), or None when none has the metric."""
    key = metric_key(metric)
    higher = HIGHER_IS_BETTER[key]
    candidates = [r for r in records if r.get("source") not in REFERENCES and r["metrics"].get(key) is not None]
    if not candidates:
        return None

    def goodness(record: dict) -> float:
        return record["metrics"][key] if higher else -record["metrics"][key]

    word = "highest" if higher else "lowest"
    drifts_known = key != "class_drift" and all(r["metrics"].get("class_drift") is not None for r in candidates)
    if drifts_known:
        within = [r for r in candidates if r["metrics"]["class_drift"] < max_drift]
        if within:
            chosen = max(within, key=goodness)   # max keeps the first of equals: the earliest step
            reason = f"{word} {describe(key, chosen['metrics'][key])} with class drift under {max_drift:g}"
            if len(within) < len(candidates):
                reason += f" ({len(candidates) - len(within)} of {len(candidates)} drifted more)"
        else:
            chosen = min(candidates, key=lambda r: r["metrics"]["class_drift"])
            reason = (f"every checkpoint drifted {max_drift:g} or more toward the subject; "
                      f"{_label(chosen)} drifted least ({chosen['metrics']['class_drift']:.3f})")
    else:
        chosen = max(candidates, key=goodness)
        reason = f"{word} {describe(key, chosen['metrics'][key])}"
        if key != "class_drift":
            reason += "; class drift not measured"
    base = next((r for r in records if r.get("source") == "base"), None)
    base_value = base["metrics"].get(key) if base else None
    if base_value is not None and goodness(chosen) <= (base_value if higher else -base_value):
        reason += f"; no better than the base model's {describe(key, base_value)}: it may not have learned the subject"
    return chosen, reason


def best_checkpoint(records: Sequence[dict], metric: str = "dino", *, max_drift: float = 0.05) -> BestCheckpoint | None:
    """The best scored checkpoint of one run, with the reason (see the module's rule)."""
    found = choose_best(records, metric, max_drift=max_drift)
    if found is None:
        return None
    record, reason = found
    key = metric_key(metric)
    return BestCheckpoint(int(record["step"]), record["source"], key, float(record["metrics"][key]), reason)


def _label(record: dict) -> str:
    return "the final output" if record.get("source") == "output" else f"step {record.get('step')}"


# ---------------------------------------------------------------------------------------------- promote
def promoted_step(run_dir: str | Path) -> int | None:
    """The checkpoint step the run's output was promoted from, or None (the output is the trained final one)."""
    marker = RunDir(Path(run_dir)).output_dir / PROMOTED_FILE
    try:
        return int(json.loads(marker.read_text())["step"])
    except (OSError, ValueError, KeyError):
        return None


def promote_checkpoint(run_dir: str | Path, step: int, *, reason: str = "") -> list[Path]:
    """Make checkpoint `step` the run's output ("use this checkpoint"); return the files now in output/.

    The checkpoint is materialised by its method's own code (generate/artifacts.py) and copied into output/.
    The trained final output is kept once, in output-final/, so promoting is never destructive. An `output`
    event records it (with `promoted_from_step`); the metrics of the old output are relabelled to match.
    """
    from sdtune_ui.evaluate.evaluation import read_metrics, write_metrics
    from sdtune_ui.generate.artifacts import artifacts_in_folder, materialize_checkpoint

    run = RunDir(Path(run_dir))
    if not run.config():
        raise SdtuneError(f"{run.path} is not a run folder (no config.json).")
    if run.status() in ("queued", "running") and not run.cancel_requested():
        raise SdtuneError("This run is still training; promote a checkpoint once it has stopped.")
    source = materialize_checkpoint(run.path, step)
    partial = run.path / "output.partial"
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(source, partial, ignore=shutil.ignore_patterns(".complete"))
    (partial / PROMOTED_FILE).write_text(json.dumps({"step": step, "reason": reason, "t": round(time.time(), 3)}))
    output = run.output_dir
    trained_final = promoted_step(run.path) is None and bool(artifacts_in_folder(output, run.config()))
    if trained_final:
        shutil.rmtree(run.path / REPLACED_OUTPUT, ignore_errors=True)
        output.rename(run.path / REPLACED_OUTPUT)
    else:
        shutil.rmtree(output, ignore_errors=True)
    partial.rename(output)
    if run.config().get("tool_files", True):  # like a finished run's output: the copies other tools load too
        from sdtune_ui.export.formats import write_tool_files

        write_tool_files(run.path, run.config())
    # Scores of the output now describe output-final/ (or, for an earlier promotion, a checkpoint's copy).
    stale = [r for r in read_metrics(run.path) if r.get("source") == "output"]
    if stale:
        kept = [{**r, "source": REPLACED_OUTPUT} for r in stale] if trained_final else []
        write_metrics(run.path, kept, drop=[("output", r["step"]) for r in stale])
    files = sorted(str(p.relative_to(run.path)) for p in output.iterdir() if p.name != PROMOTED_FILE)
    run.events().emit("output", files=files, promoted_from_step=step, reason=reason)
    return [run.path / name for name in files]
