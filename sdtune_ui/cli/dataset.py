"""CLI commands for datasets: `dataset ingest|doctor|captions|conditions|push` and `caption`.

Registered by sdtune_ui/cli.py through `add_dataset_commands(subparsers)`; each handler prints text for a
person (or JSON with --json) and returns the exit code: 0 ok, 1 the dataset has problems, 2 bad input.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from typing import Any

from sdtune_ui.data.advice import SUBJECTS
from sdtune_ui.errors import Cancelled, SdtuneError
from sdtune_ui.methods import DEFAULT_METHOD, adapters, method_names


def _guard(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except SdtuneError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        except (Cancelled, KeyboardInterrupt):
            print("cancelled", file=sys.stderr)
            return 130

    run.__name__ = handler.__name__
    run.__doc__ = handler.__doc__
    return run


def _progress(label: str) -> Callable[[int, int], None] | None:
    if not sys.stderr.isatty():
        return None

    def show(done: int, total: int) -> None:
        end = "\n" if done >= total else ""
        print(f"\r{label} {done}/{total}", end=end, file=sys.stderr, flush=True)

    return show


def run_ingest(args: argparse.Namespace) -> int:
    """Copy images (files, zips, folders, or a Hub dataset with --hub) into a dataset folder."""
    from sdtune_ui.data.ingest import IngestLimits, ingest

    limits = IngestLimits(max_files=args.max_files)
    if args.hub:
        from sdtune_ui.data.hub import ingest_hub_dataset

        if len(args.src) != 1:
            raise SdtuneError("--hub takes exactly one dataset id, e.g. someone/pets.")
        report = ingest_hub_dataset(args.src[0], args.out, split=args.split, image_column=args.image_column,
                                    caption_column=args.caption_column, max_images=args.max_images,
                                    token=os.environ.get("HF_TOKEN") or None, resolution=args.resolution,
                                    limits=limits, progress=_progress("ingest"))
    else:
        report = ingest(args.src, args.out, resolution=args.resolution, limits=limits, progress=_progress("ingest"),
                        caption_column=args.caption_column)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.to_text())
    return 0 if report.ok else 1


def run_doctor(args: argparse.Namespace) -> int:
    """Check a dataset folder before training."""
    from sdtune_ui.data.doctor import diagnose

    report = diagnose(args.dir, method=args.method, trigger=args.trigger, resolution=args.resolution,
                      subject=args.subject, instance_prompt=args.instance_prompt, bucketing=args.bucketing,
                      batch_size=args.batch_size, with_prior_preservation=args.prior_preservation,
                      seconds_per_step=args.seconds_per_step, caption_column=args.caption_column,
                      split=args.split, progress=_progress("doctor"), adapter=args.adapter,
                      conditioning=args.conditioning)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.to_text())
    return 0 if report.ok else 1


def run_captions(args: argparse.Namespace) -> int:
    """Edit captions in place (find/replace, trigger, prefix, suffix) and/or write dataset_info.json."""
    from sdtune_ui.data.formats import edit_captions, write_dataset_info

    did = False
    if args.find or args.trigger or args.prefix or args.suffix:
        changed = edit_captions(args.dir, find=args.find or "", replace=args.replace, regex=args.regex,
                                trigger=args.trigger, prefix=args.prefix, suffix=args.suffix,
                                include_uncaptioned=args.all)
        print(f"Changed {len(changed)} caption(s) in {args.dir}.")
        for name, caption in list(changed.items())[:10]:
            print(f"  {name}: {caption}")
        did = True
    if args.instance_prompt:
        path = write_dataset_info(args.dir, args.instance_prompt, args.class_prompt)
        print(f"Wrote {path}.")
        did = True
    if not did:
        raise SdtuneError("Nothing to do: give --find/--replace, --trigger, --prefix, --suffix or --instance-prompt.")
    return 0


def run_conditions(args: argparse.Namespace) -> int:
    """Compute a ControlNet condition picture (a-condlabel.png) beside every training picture."""
    from sdtune_ui.data.conditions import write_conditions

    report = write_conditions(args.dir, args.detector, depth_model=args.depth_model, overwrite=args.overwrite,
                              progress=_progress("conditions"))
    print(f"Wrote {len(report.written)} {args.detector} condition picture(s) into {args.dir}; kept "
          f"{len(report.kept)} that were there" + (f"; {len(report.failed)} failed" if report.failed else "") + ".")
    for line in report.failed[:10]:
        print(f"  {line}")
    return 1 if report.failed else 0


def run_push(args: argparse.Namespace) -> int:
    """Upload a dataset folder to the Hub as an imagefolder (token from $HF_TOKEN or your saved login)."""
    from sdtune_ui.data.hub import push_dataset_to_hub

    token = os.environ.get(args.token_env)
    if not token:
        try:
            from huggingface_hub import get_token

            token = get_token()
        except ImportError:
            token = None
    if not token:
        raise SdtuneError(f"No Hub token: set ${args.token_env} (a write token) or run `hf auth login`.")
    url = push_dataset_to_hub(args.dir, args.repo_id, token=token, private=not args.public)
    print(f"Pushed to {url}")
    return 0


def run_caption(args: argparse.Namespace) -> int:
    """Caption every image of a folder into .txt + metadata.jsonl."""
    from sdtune_ui.caption import caption_folder

    report = caption_folder(args.dir, args.captioner, trigger=args.trigger, prefix=args.prefix, suffix=args.suffix,
                            overwrite=args.overwrite, max_length=args.max_length, batch_size=args.batch_size,
                            device=args.device, task=args.task, progress=_progress("caption"))
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.to_text())
    return 0 if report.captioned or report.kept else 1


def add_dataset_commands(subparsers: Any) -> None:
    """Add `dataset ingest|doctor|captions|push` and `caption` to an argparse subparsers object."""
    from sdtune_ui.caption.captioners import CAPTIONERS, FLORENCE_TASKS
    from sdtune_ui.config import CONDITIONING
    from sdtune_ui.data.conditions import DEFAULT_DEPTH_MODEL, DETECTORS

    fmt = argparse.ArgumentDefaultsHelpFormatter
    dataset = subparsers.add_parser("dataset", help="Ingest, check, edit and push datasets.")
    commands = dataset.add_subparsers(dest="dataset_command", required=True)

    ingest = commands.add_parser("ingest", help="Copy images/zips/folders (or a Hub dataset) into a dataset "
                                 "folder, checking every file; pictures already there are skipped, kohya and "
                                 "concept folders kept.", formatter_class=fmt)
    ingest.add_argument("src", nargs="+", help="Image files, .zip archives, folders; or a Hub dataset id with --hub.")
    ingest.add_argument("--out", required=True, help="Dataset folder to create or add to.")
    ingest.add_argument("--resolution", type=int, default=None, help="Warn about images smaller than this.")
    ingest.add_argument("--max-files", type=int, default=5000, help="Most files per archive or folder.")
    ingest.add_argument("--hub", action="store_true", help="SRC is a Hub dataset id (token from $HF_TOKEN).")
    ingest.add_argument("--split", default="train", help="Hub dataset split.")
    ingest.add_argument("--image-column", default=None, help="Hub dataset image column (auto-detected).")
    ingest.add_argument("--caption-column", default=None,
                        help="Caption column of a Hub dataset or of metadata.jsonl/csv (auto-detected).")
    ingest.add_argument("--max-images", type=int, default=None, help="Take only the first N rows of a Hub dataset.")
    ingest.add_argument("--json", action="store_true", help="Print the report as JSON.")
    ingest.set_defaults(handler=_guard(run_ingest))

    doctor = commands.add_parser("doctor", help="Pre-flight check of a dataset folder (plain, kohya, concepts, "
                                 "imagefolder splits).", formatter_class=fmt)
    doctor.add_argument("dir", help="Dataset folder.")
    doctor.add_argument("--method", choices=method_names(), default=DEFAULT_METHOD,
                        help="Training method to advise for.")
    doctor.add_argument("--adapter", choices=adapters.adapter_names(), default=adapters.DEFAULT_ADAPTER,
                        help="Adapter type of a LoRA-like method (its own hints are added).")
    doctor.add_argument("--trigger", default=None, help="Trigger word every caption should contain, e.g. sks.")
    doctor.add_argument("--resolution", type=int, default=512, help="Training resolution.")
    doctor.add_argument("--subject", choices=SUBJECTS, default="object", help="What the images show.")
    doctor.add_argument("--instance-prompt", default=None, help="DreamBooth instance prompt, if used.")
    doctor.add_argument("--bucketing", action="store_true", help="Training uses aspect-ratio buckets.")
    doctor.add_argument("--batch-size", type=int, default=1, help="Training batch size.")
    doctor.add_argument("--prior-preservation", action="store_true", help="DreamBooth with class images.")
    doctor.add_argument("--caption-column", default=None,
                        help="Caption column of metadata.jsonl/csv (default: text, caption, prompt ...).")
    doctor.add_argument("--split", default="train", help="Split folder of an imagefolder dataset (train/, test/ ...).")
    doctor.add_argument("--seconds-per-step", type=float, default=None,
                        help="Measured step time for the estimate (default: a typical 24 GB GPU).")
    doctor.add_argument("--conditioning", choices=CONDITIONING, default=None,
                        help="ControlNet: where condition pictures come from (the dataset's, or a detector).")
    doctor.add_argument("--json", action="store_true", help="Print the report as JSON.")
    doctor.set_defaults(handler=_guard(run_doctor))

    conditions = commands.add_parser("conditions", help="Compute ControlNet condition pictures (Canny edges or "
                                     "depth) beside every picture, as a-condlabel.png.", formatter_class=fmt)
    conditions.add_argument("dir", help="Dataset folder.")
    conditions.add_argument("--detector", choices=DETECTORS, required=True, help="What the condition shows.")
    conditions.add_argument("--depth-model", default=DEFAULT_DEPTH_MODEL,
                            help="transformers depth-estimation model for --detector depth (tiny-depth offline).")
    conditions.add_argument("--overwrite", action="store_true", help="Replace condition pictures that exist.")
    conditions.set_defaults(handler=_guard(run_conditions))

    captions = commands.add_parser("captions", help="Edit captions: find/replace, trigger, prefix, suffix; "
                                   "DreamBooth prompts.", formatter_class=fmt)
    captions.add_argument("dir", help="Dataset folder.")
    captions.add_argument("--find", default="", help="Text (or regex with --regex) to find in every caption.")
    captions.add_argument("--replace", default="", help="Replacement for --find.")
    captions.add_argument("--regex", action="store_true", help="--find is a regular expression.")
    captions.add_argument("--trigger", default=None, help="Add this word in front of captions that lack it.")
    captions.add_argument("--prefix", default="", help="Text to put before every caption.")
    captions.add_argument("--suffix", default="", help="Text to put after every caption.")
    captions.add_argument("--all", action="store_true", help="Also give uncaptioned images prefix/trigger/suffix.")
    captions.add_argument("--instance-prompt", default=None, help="Write dataset_info.json with this prompt.")
    captions.add_argument("--class-prompt", default=None, help="Class prompt for dataset_info.json.")
    captions.set_defaults(handler=_guard(run_captions))

    push = commands.add_parser("push", help="Upload a dataset folder to the Hub as an imagefolder.",
                               formatter_class=fmt)
    push.add_argument("dir", help="Dataset folder.")
    push.add_argument("--repo-id", required=True, help="your-name/dataset-name")
    push.add_argument("--public", action="store_true", help="Make the dataset public (default: private).")
    push.add_argument("--token-env", default="HF_TOKEN",
                      help="Environment variable holding the token (never pass a token as an argument).")
    push.set_defaults(handler=_guard(run_push))

    caption = subparsers.add_parser("caption", help="Caption every image of a dataset folder.", formatter_class=fmt)
    caption.add_argument("dir", help="Dataset folder.")
    caption.add_argument("--captioner", default="tiny-blip",
                         help=f"One of {', '.join(CAPTIONERS)}, or a Hub id / local folder of such a model.")
    caption.add_argument("--trigger", default=None, help="Trigger word put in front of every caption, e.g. sks.")
    caption.add_argument("--prefix", default="", help="Text before each caption, e.g. 'a photo of'.")
    caption.add_argument("--suffix", default="", help="Text after each caption.")
    caption.add_argument("--overwrite", action="store_true", help="Replace existing captions.")
    caption.add_argument("--max-length", type=int, default=None, help="Most new tokens per caption.")
    caption.add_argument("--batch-size", type=int, default=None, help="Images per batch (default: by device).")
    caption.add_argument("--device", default=None, help="cuda, cpu, mps (default: the best available).")
    caption.add_argument("--task", choices=FLORENCE_TASKS, default=None, help="Florence-2 task.")
    caption.add_argument("--json", action="store_true", help="Print the report as JSON.")
    caption.set_defaults(handler=_guard(run_caption))
