"""CLI commands `train` and `presets`.

`train` flags are generated from TrainConfig's fields, so the CLI, the app and config.json can never
disagree about what a setting is called or means.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

from sdtune_ui.config import TrainConfig, field_info, method_presets, preset_values
from sdtune_ui.methods import DEFAULT_METHOD

# Short spellings users expect from other trainers' CLIs.
ALIASES = {"max_train_steps": ["--steps"], "data": ["--dataset"], "train_batch_size": ["--batch-size"],
           "learning_rate": ["--lr"]}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def add_train_commands(subparsers: Any) -> None:
    parser = subparsers.add_parser("train", help="Train (or resume) a run; writes a run folder.",
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--config", help="JSON file with settings (flags given here override it).")
    parser.add_argument("--output", "--run-dir", dest="output", default="",
                        help="Run folder (default: <data dir>/runs/<method>-<time>, where the app lists runs; "
                             "$SDTUNE_DATA_DIR or ./data). An existing run folder is resumed.")
    parser.add_argument("--preset", action="store_true",
                        help="Start from the method's (and --adapter type's) recommended settings (`presets` prints "
                             "them).")
    parser.add_argument("--quiet", action="store_true",
                        help="Print only the result, no progress (the run folder's events.jsonl has everything).")
    defaults = TrainConfig()
    for f in field_info():
        kwargs: dict[str, Any] = {"dest": f.name, "default": None, "help": f.metadata["help"]}
        if f.metadata.get("choices"):
            kwargs["choices"] = f.metadata["choices"]
        default = getattr(defaults, f.name)
        if isinstance(default, bool):
            kwargs.update(type=_bool, nargs="?", const=True, metavar="BOOL")
        elif isinstance(default, list):
            kwargs.update(nargs="+", metavar="TEXT")
        else:
            kwargs["type"] = type(default)
        parser.add_argument(_flag(f.name), *ALIASES.get(f.name, []), **kwargs)
    parser.set_defaults(handler=run_train)

    presets = subparsers.add_parser("presets", help="Print the recommended settings per method.")
    presets.add_argument("--full", action="store_true", help="Print every setting, not only the preset's.")
    presets.set_defaults(handler=run_presets)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    values: dict[str, Any] = {}
    if args.config:
        values.update(TrainConfig.load(args.config).to_dict())
    flags = {f.name: getattr(args, f.name) for f in field_info() if getattr(args, f.name) is not None}
    if args.preset:
        values.update(preset_values(flags.get("method", values.get("method", DEFAULT_METHOD)),
                                    adapter=flags.get("adapter", values.get("adapter"))))
    values.update(flags)
    return TrainConfig.from_dict(values)


def run_train(args: argparse.Namespace) -> int:
    from sdtune_ui.app.ops import default_data_dir
    from sdtune_ui.cli.progress import ProgressEventLog
    from sdtune_ui.runs import RunDir, is_main_process, new_run_id
    from sdtune_ui.train import train

    config = config_from_args(args)
    config.validate()
    run_dir = Path(args.output) if args.output else default_data_dir() / "runs" / new_run_id(config.method)
    shows_progress = is_main_process() and not args.quiet
    status = train(config, run_dir, events=ProgressEventLog(RunDir(run_dir).events_path) if shows_progress else None)
    run = RunDir(run_dir)
    message = next((e.get("message", "") for e in reversed(run.read_events()) if e["kind"] == "status"), "")
    if is_main_process():
        print(f"{status}: {message}\nRun folder: {run_dir}")
        for name in sorted(p.name for p in run.output_dir.iterdir()) if run.output_dir.exists() else []:
            print(f"  output/{name}")
    return 0 if status == "completed" else (130 if status == "cancelled" else 1)


def run_presets(args: argparse.Namespace) -> int:
    print(json.dumps({m: {**dataclasses.asdict(TrainConfig()), **p} if args.full else p
                      for m, p in method_presets().items()}, indent=2))
    return 0
