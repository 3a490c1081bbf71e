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

from sdtune_ui.config import TrainConfig, field_info
from sdtune_ui.methods import DEFAULT_METHOD
from sdtune_ui.presets import method_presets, preset_values

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
                             "$SDTUNE_DATA_DIR or ./data). An existing run folder is resumed with its own "
                             "settings (config.json); flags given change them where a resume allows it.")
    parser.add_argument("--resume-with-memory-fallback", action="store_true",
                        help="Resume the --output run with the next memory-saving setting (after running out of "
                             "GPU memory): gradient checkpointing, then half the batch with twice the "
                             "accumulation, then 8-bit AdamW or Adafactor, then a lower resolution.")
    parser.add_argument("--preset", action="store_true",
                        help="Start from the method's (and --adapter type's) recommended settings (`presets` prints "
                             "them).")
    parser.add_argument("--quiet", action="store_true",
                        help="Print only the result, no progress (the run folder's events.jsonl has everything).")
    defaults = TrainConfig()
    for f in field_info():
        # argparse formats help with %: a literal one ("25%") crashed `train --help`.
        kwargs: dict[str, Any] = {"dest": f.name, "default": None, "help": f.metadata["help"].replace("%", "%%")}
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

    runs = subparsers.add_parser("runs", help="List the run folders with their status (runs whose process died "
                                              "are marked interrupted).")
    runs.add_argument("--root", default="", help="Folder of runs (default: <data dir>/runs).")
    runs.set_defaults(handler=run_runs)

    presets = subparsers.add_parser("presets", help="Print the recommended settings per method.")
    presets.add_argument("--full", action="store_true", help="Print every setting, not only the preset's.")
    presets.set_defaults(handler=run_presets)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    values: dict[str, Any] = {}
    if args.config:
        values.update(TrainConfig.load(args.config).to_dict())
    elif getattr(args, "output", "") and (Path(args.output) / "config.json").exists():
        values.update(TrainConfig.load(Path(args.output) / "config.json").to_dict())  # resuming: its own settings
    flags = {f.name: getattr(args, f.name) for f in field_info() if getattr(args, f.name) is not None}
    if args.preset:
        values.update(preset_values(flags.get("method", values.get("method", DEFAULT_METHOD)),
                                    adapter=flags.get("adapter", values.get("adapter"))))
    values.update(flags)
    return TrainConfig.from_dict(values)


def run_train(args: argparse.Namespace) -> int:
    from sdtune_ui.app.ops import check_model_available, default_data_dir
    from sdtune_ui.cli.progress import ProgressEventLog
    from sdtune_ui.runs import RunDir, is_main_process, new_run_id
    from sdtune_ui.train import train
    from sdtune_ui.train.setup import apply_dataset_info

    config = config_from_args(args)
    if args.resume_with_memory_fallback:
        config = with_memory_fallback(config, args.output)
    apply_dataset_info(config).validate()  # as train() will see it: the dataset may supply prompts and tokens
    check_model_available(config)  # offline and never downloaded: say so before a run folder exists
    run_dir = Path(args.output) if args.output else default_data_dir() / "runs" / new_run_id(config.method)
    shows_progress = is_main_process() and not args.quiet
    if is_main_process():
        print(memory_line(config))
    status = train(config, run_dir, events=ProgressEventLog(RunDir(run_dir).events_path) if shows_progress else None)
    run = RunDir(run_dir)
    message = next((e.get("message", "") for e in reversed(run.read_events()) if e["kind"] == "status"), "")
    if is_main_process():
        print(f"{status}: {message}\nRun folder: {run_dir}")
        for name in sorted(p.name for p in run.output_dir.iterdir()) if run.output_dir.exists() else []:
            print(f"  output/{name}")
    return 0 if status == "completed" else (130 if status in ("cancelled", "interrupted") else 1)


def with_memory_fallback(config: TrainConfig, output: str) -> TrainConfig:
    """The run's config with the next memory-saving setting; says what changed (here and in the run's log)."""
    from sdtune_ui.errors import SdtuneError
    from sdtune_ui.runs import RunDir
    from sdtune_ui.train.memory import next_memory_saving

    run = RunDir(Path(output)) if output else None
    if run is None or not run.config_path.exists():
        raise SdtuneError("--resume-with-memory-fallback resumes an existing run: give its folder with --output.")
    fallback = next_memory_saving(config)
    if fallback is None:
        raise SdtuneError("This run already uses every memory saver the trainer has; use LoRA instead of full "
                          "fine-tuning, or a GPU with more memory.")
    print(f"Resuming {run.path.name} with less memory: {fallback.description}")
    run.events().emit("log", level="info", message=f"Memory fallback: {fallback.description}")
    return fallback.apply(config)


def memory_line(config: TrainConfig) -> str:
    """The memory estimate beside the detected GPU's memory (and what to change when it will not fit)."""
    from sdtune_ui.app.ops import detect_gpu
    from sdtune_ui.train.memory import memory_line as line

    gpu = detect_gpu()
    return line(config, gpu.name, gpu.memory_gib)


def run_runs(args: argparse.Namespace) -> int:
    from sdtune_ui.app import live
    from sdtune_ui.app.ops import default_data_dir
    from sdtune_ui.runs import list_runs, mark_if_interrupted

    root = Path(args.root) if args.root else default_data_dir() / "runs"
    runs = list_runs(root)
    if not runs:
        print(f"No runs in {root}.")
    for run in runs:
        mark_if_interrupted(run)
        snap = live.read_snapshot(run.path)
        latest = run.latest_checkpoint()
        print(f"{snap.run_id:<40} {snap.status:<12} step {snap.step}/{snap.total:<8} "
              f"{latest.name if latest else '-':<12} {snap.method} {snap.model}")
    return 0


def run_presets(args: argparse.Namespace) -> int:
    print(json.dumps({m: {**dataclasses.asdict(TrainConfig()), **p} if args.full else p
                      for m, p in method_presets().items()}, indent=2))
    return 0
