"""Scores as people read them: the model card's Evaluation section and rows for a plot over steps."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from sdtune_ui.evaluate.evaluation import EvalSettings, comparable, read_metrics
from sdtune_ui.evaluate.selection import HIGHER_IS_BETTER, best_checkpoint, default_metric, promoted_step

LABELS = {"dino": "subject fidelity, DINO", "clip_i": "subject fidelity, CLIP-I", "clip_t": "prompt fidelity, CLIP-T",
          "class_preservation": "class preservation", "class_drift": "class drift toward the subject",
          "fid": "FID vs training images", "kid": "KID vs training images", "loss": "held-out denoising loss",
          "loss_class": "held-out loss, class images"}


# The few scores a grid row's label has room for.
SHORT = {"dino": "DINO {:.3f}", "clip_i": "CLIP-I {:.3f}", "clip_t": "CLIP-T {:.3f}", "class_drift": "drift {:.3f}",
         "loss": "loss {:.4f}"}


def latest_records(run_dir: str | Path) -> list[dict]:
    """metrics.jsonl's records measured like the newest one: scores from other settings are not comparable."""
    records = read_metrics(run_dir)
    scored = [r for r in records if r.get("source") != "base"] or records
    if not scored:
        return []
    settings = max(scored, key=lambda r: r.get("t") or 0).get("settings") or {}
    known = {f.name for f in dataclasses.fields(EvalSettings)}
    try:
        reference = EvalSettings(**{k: v for k, v in settings.items() if k in known})
    except TypeError:  # written by another version: keep them all
        return records
    if isinstance(reference.metrics, list):
        reference = dataclasses.replace(reference, metrics=tuple(reference.metrics))
    return [r for r in records if comparable(r, reference)]


def max_drift_of(records: list[dict]) -> float:
    """The drift limit the newest evaluation used (the default when none says)."""
    limits = [(r.get("settings") or {}).get("max_drift") for r in records]
    return next((float(x) for x in reversed(limits) if isinstance(x, (int, float))), EvalSettings.max_drift)


def score_notes(run_dir: str | Path) -> dict[int | None, str]:
    """Short score lines for an overfitting grid's rows, keyed by checkpoint step (None: the final output):
    "DINO 0.412 / drift 0.010", the best checkpoint marked. Empty before any evaluation."""
    records = latest_records(run_dir)
    if not records:
        return {}
    measured = [name.replace("_", "-") for r in records for name in r["metrics"]]
    best = best_checkpoint(records, default_metric(measured), max_drift=max_drift_of(records))
    notes: dict[int | None, str] = {}
    for record in records:
        if record["source"] not in ("checkpoint", "output"):
            continue
        parts = [fmt.format(record["metrics"][key]) for key, fmt in SHORT.items()
                 if record["metrics"].get(key) is not None]
        if best is not None and (best.source, best.step) == (record["source"], record["step"]):
            parts.insert(0, "best")
        notes[None if record["source"] == "output" else int(record["step"])] = "\n".join(parts)
    return notes


def metric_rows(run_dir: str | Path) -> list[dict]:
    """One row per (scored target, metric) for a plot over steps: {step, source, metric, value}."""
    return [{"step": r["step"], "source": r["source"], "metric": name, "value": value}
            for r in read_metrics(run_dir) for name, value in r["metrics"].items() if value is not None]


def card_section(run_dir: str | Path, step: int | None = None) -> str | None:
    """Markdown for the model card: the exported target's scores beside the base model's, or None."""
    records = read_metrics(run_dir)
    promoted = promoted_step(run_dir) if step is None else None
    if step is None and promoted is None:
        target = next((r for r in records if r["source"] == "output"), None)
    else:
        wanted = step if step is not None else promoted
        target = next((r for r in records if r["source"] == "checkpoint" and r["step"] == wanted), None)
    if target is None:
        return None
    base = next((r for r in records if r["source"] == "base" and r.get("settings") == target.get("settings")), None)
    rows = ["| metric | this model | base model |", "|---|---|---|"]
    for key, label in LABELS.items():
        value = target["metrics"].get(key)
        if value is None:
            continue
        arrow = "higher is better" if HIGHER_IS_BETTER[key] else "lower is better"
        base_value = base["metrics"].get(key) if base else None
        rows.append(f"| {label} ({arrow}) | {value:.4f} | {'-' if base_value is None else f'{base_value:.4f}'} |")
    images, settings = target.get("images", {}), target.get("settings", {})
    prompts = target.get("prompts", {})
    features = ", ".join(v for v in (target.get("features") or {}).values() if v)
    lines = ["## Evaluation", "",
             f"Measured by sdtune_ui at step {target['step']} on {images.get('per_prompt', '?')} images per prompt "
             f"(seed {settings.get('seed', 0)}, {settings.get('inference_steps', '?')} steps) for "
             + ", ".join(f"`{p}`" for p in [*prompts.get("subject", []), prompts.get("class", "")] if p)
             + f", compared with {images.get('training', '?')} training images"
             + (f" ({features})." if features else "."), "", *rows]
    start = next((r for r in records if r["source"] == "start" and r.get("settings") == target.get("settings")), None)
    lines += _subject_rows(target, start)
    caveat = (target.get("fid_kid") or {}).get("caveat")
    if caveat:
        lines += ["", caveat]
    return "\n".join(lines)


def _subject_rows(target: dict, start: dict | None) -> list[str]:
    """Per subject: its fidelity, and for subjects of earlier runs the same at this run's start (forgetting)."""
    entries = target.get("subjects") or []
    if not entries:
        return []
    at_start = {e["name"]: e["metrics"] for e in (start or {}).get("subjects") or []}
    keys = [k for k in ("dino", "clip_i", "clip_t", "loss") if any(k in e["metrics"] for e in entries)]
    rows = ["", "Per subject (its own prompt against its own training images; earlier = learned by the run this one "
            "continued, with its score at this run's start):", "",
            "| subject | prompt | " + " | ".join(LABELS[k] for k in keys) + " |", "|---|---|" + "---|" * len(keys)]
    for entry in entries:
        cells = []
        for key in keys:
            value, before = entry["metrics"].get(key), at_start.get(entry["name"], {}).get(key)
            text = "-" if value is None else f"{value:.4f}"
            cells.append(text + (f" (start {before:.4f})" if entry["earlier"] and before is not None else ""))
        name = entry["name"] + (" (earlier)" if entry["earlier"] else "")
        rows.append(f"| {name} | `{entry['prompt']}` | " + " | ".join(cells) + " |")
    return rows
