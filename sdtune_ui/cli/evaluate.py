"""CLI commands `evaluate`, `sweep` and `promote` (registered by sdtune_ui/cli/main.py).

    python -m sdtune_ui evaluate runs/x --checkpoints all --metrics dino,clip-i,clip-t,drift,kid,fid,loss --json
    python -m sdtune_ui sweep --config base.json --learning-rates 5e-5,1e-4,2e-4 --steps 200,400,800 \\
        --ranks 4,16 --metric dino --out sweeps/x --json
    python -m sdtune_ui promote runs/x --step 400          # make checkpoint 400 the run's output
    python -m sdtune_ui promote sweeps/x --out runs/best   # copy a sweep's winner to a normal run

Offline, pass --clip-model tiny-clip --dino-model tiny-dino (built-in, random weights: numbers are
deterministic but mean little), --dino-model demo-dino (trained on the demo model's scenes: meaningful for runs
on demo-sd1) or local folders of real models.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from sdtune_ui.errors import SdtuneError

TABLE_COLUMNS = ("dino", "clip_i", "clip_t", "class_preservation", "class_drift", "fid", "kid", "loss", "loss_class")


def _csv(kind: type) -> Any:
    def parse(text: str) -> list:
        try:
            return [kind(part) for part in text.replace(" ", "").split(",") if part]
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"expected comma-separated {kind.__name__}s, got {text!r}") from err

    return parse


def _add_eval_options(parser: argparse.ArgumentParser, *, default_images: int) -> None:
    from sdtune_ui.evaluate.evaluation import FID_FEATURES, METRICS
    from sdtune_ui.evaluate.features import DEFAULT_CLIP, DEFAULT_DINO

    parser.add_argument("--metrics", type=_csv(str), default=list(METRICS),
                        help=f"Comma-separated, from {','.join(METRICS)}.")
    parser.add_argument("--num-images", type=int, default=default_images, help="Images per prompt (seeds seed..).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--inference-steps", type=int, default=20, help="Denoising steps per image.")
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--size", type=int, default=0, help="Image size (0 = the model's native size).")
    parser.add_argument("--clip-model", default=DEFAULT_CLIP, help="CLIP model: Hub id, folder, or tiny-clip.")
    parser.add_argument("--dino-model", default=DEFAULT_DINO,
                        help="DINOv2 model: Hub id, folder, tiny-dino or demo-dino.")
    parser.add_argument("--fid-features", choices=FID_FEATURES, default="auto",
                        help="Features of FID/KID: Inception (needs torch-fidelity), dino or clip; auto = "
                             "Inception when installed and online, else DINO.")
    parser.add_argument("--max-drift", type=float, default=0.05,
                        help="The best checkpoint must drift less than this toward the subject.")
    parser.add_argument("--json", action="store_true", help="Print the result as JSON.")


def _settings(args: argparse.Namespace) -> Any:
    from sdtune_ui.evaluate.evaluation import EvalSettings

    return EvalSettings(metrics=tuple(args.metrics), num_images=args.num_images, seed=args.seed,
                        inference_steps=args.inference_steps, guidance=args.guidance, size=args.size,
                        clip_model=args.clip_model, dino_model=args.dino_model, fid_features=args.fid_features,
                        max_drift=args.max_drift).validate()


def add_evaluate_commands(subparsers: Any) -> None:
    evaluate = subparsers.add_parser("evaluate", help="Score a run's checkpoints (subject/prompt fidelity, class "
                                     "drift, FID/KID, held-out loss) into its metrics.jsonl.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    evaluate.add_argument("run_dir")
    evaluate.add_argument("--checkpoints", default="all", help="all, last, or steps like 200,400.")
    _add_eval_options(evaluate, default_images=4)
    evaluate.set_defaults(handler=run_evaluate)

    sweep = subparsers.add_parser("sweep", help="Learning rate x steps (x rank) sweep ranked by a metric.",
                                  formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sweep.add_argument("--config", required=True, help="Base settings (a TrainConfig JSON file, e.g. a run's "
                       "config.json).")
    sweep.add_argument("--learning-rates", type=_csv(float), required=True, help="e.g. 5e-5,1e-4,2e-4")
    sweep.add_argument("--steps", type=_csv(int), required=True, help="e.g. 200,400,800 (one run per rate "
                       "trains to the largest, checkpointing at the others)")
    sweep.add_argument("--ranks", type=_csv(int), default=[], help="LoRA ranks, e.g. 4,16 (default: the config's).")
    sweep.add_argument("--metric", default="dino", help="Rank by: dino, clip-i, clip-t, kid, fid or loss.")
    sweep.add_argument("--out", required=True, help="Sweep folder: one run folder per trial, sweep.json, heatmap.")
    _add_eval_options(sweep, default_images=4)
    sweep.set_defaults(handler=run_sweep_command)

    promote = subparsers.add_parser("promote", help="Make a checkpoint a run's output, or copy a sweep's winner "
                                    "to a normal run.")
    promote.add_argument("folder", help="A run folder (with --step) or a sweep folder (with --out).")
    promote.add_argument("--step", type=int, default=None, help="Checkpoint step (default: the best scored one).")
    promote.add_argument("--out", default="", help="For a sweep: the new run folder to create.")
    promote.set_defaults(handler=run_promote)


def _table(records: list[dict]) -> str:
    shown = [c for c in TABLE_COLUMNS if any(r["metrics"].get(c) is not None for r in records)]
    lines = ["  ".join([f"{'target':>10}", *(f"{c:>18}" for c in shown)])]
    for record in records:
        cells = [f"{record['metrics'][c]:>18.4f}" if record["metrics"].get(c) is not None else f"{'-':>18}"
                 for c in shown]
        lines.append("  ".join([f"{record['label']:>10}", *cells]))
    return "\n".join(lines)


def run_evaluate(args: argparse.Namespace) -> int:
    from sdtune_ui.evaluate.evaluation import evaluate_run
    from sdtune_ui.evaluate.subjects import subject_table

    def progress(message: str, fraction: float) -> None:
        if not args.json:
            print(f"[{fraction:4.0%}] {message}", file=sys.stderr)

    result = evaluate_run(args.run_dir, checkpoints=args.checkpoints, settings=_settings(args), progress=progress)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    print(_table(result.scores))
    per_subject = subject_table(result.scores)
    if per_subject:
        print("\nPer subject (other = the closest other subject's training images):\n" + per_subject)
    caveat = next((r["fid_kid"]["caveat"] for r in result.scores if r.get("fid_kid")), "")
    if caveat:
        print(f"\nNote: {caveat}")
    if result.best is not None:
        print(f"\nBest: {result.best.label}: {result.best.reason}")
    print(f"Wrote {Path(args.run_dir) / 'metrics.jsonl'} ({result.seconds:.1f} s)")
    return 0


def run_sweep_command(args: argparse.Namespace) -> int:
    from sdtune_ui.config import TrainConfig
    from sdtune_ui.evaluate.sweep import SweepSpec, run_sweep

    spec = SweepSpec(TrainConfig.load(args.config), args.learning_rates, args.steps, Path(args.out),
                     ranks=args.ranks, metric=args.metric, settings=_settings(args))

    def progress(update: Any) -> None:
        if not args.json:
            print(f"[{update.fraction:4.0%}] {update.message}", file=sys.stderr)

    data = run_sweep(spec, progress=progress)
    if args.json:
        print(json.dumps(data, indent=2))
        return 0 if data["status"] == "completed" else 1
    print(f"{'trial':>20}  {'step':>6}  {data['metric']:>10}  status")
    for cell in data["results"]:
        value = "-" if cell["value"] is None else f"{cell['value']:.4f}"
        print(f"{cell['trial']:>20}  {cell['step']:>6}  {value:>10}  {cell['trial_status']}")
    for trial in data["trials"]:
        if trial["status"] != "completed":
            print(f"{trial['name']}: {trial['status']}: {trial['reason']}")
    if data["best"]:
        print(f"\nBest: {data['best']['trial']} at step {data['best']['step']}: {data['best']['reason']}")
    print(f"Wrote {Path(args.out) / 'sweep.json'} and {Path(args.out) / 'heatmap.png'} "
          f"({data['timing']['total_s']:.0f} s)")
    return 0 if data["status"] == "completed" else 1


def run_promote(args: argparse.Namespace) -> int:
    from sdtune_ui.evaluate.evaluation import read_metrics
    from sdtune_ui.evaluate.selection import best_checkpoint, default_metric, promote_checkpoint
    from sdtune_ui.evaluate.sweep import SWEEP_FILE, promote_sweep

    folder = Path(args.folder)
    if (folder / SWEEP_FILE).exists():
        if not args.out:
            raise SdtuneError("Promoting a sweep's winner needs --out NEW_RUN_FOLDER.")
        target = promote_sweep(folder, args.out)
        print(f"Wrote {target} (its output is the sweep's winning checkpoint)")
        return 0
    step, reason = args.step, "chosen by hand"
    if step is None:
        records = read_metrics(folder)
        measured = [k.replace("_", "-") for r in records for k in r["metrics"]]
        best = best_checkpoint(records, default_metric(measured))
        if best is None or best.source != "checkpoint":
            raise SdtuneError("Give --step N (no evaluated checkpoint is better than the final output; "
                              "run `evaluate` first to choose by the metrics).")
        step, reason = best.step, best.reason
    for path in promote_checkpoint(folder, step, reason=reason):
        print(path)
    return 0
