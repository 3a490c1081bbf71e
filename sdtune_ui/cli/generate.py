"""CLI commands `generate`, `grid`, `export` and `push` (registered by sdtune_ui/cli.py).

    python -m sdtune_ui generate --model tiny-sd1 --lora runs/x/output:0.8 --prompt "a photo of sks dog" --out out/
    python -m sdtune_ui generate --run runs/x --prompt "a photo of sks dog" --compare --out out/
    python -m sdtune_ui grid runs/x --out grid.png
    python -m sdtune_ui export runs/x --format kohya --out exports/x
    HF_TOKEN=... python -m sdtune_ui push runs/x --repo-id me/my-lora

The Hub token comes from --token or the HF_TOKEN environment variable and is never printed.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from sdtune_ui.errors import SdtuneError
from sdtune_ui.generate.options import SCHEDULERS, GenerationOptions, option_fields
from sdtune_ui.methods.outputs import EMBEDDING, LORA


def _run_and_step(text: str) -> tuple[str, int | None]:
    from sdtune_ui.generate.artifacts import parse_choice

    return parse_choice(text)


def _add_option_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per GenerationOptions field, with its help, choices and default (the prompt is required)."""
    defaults = GenerationOptions()
    for f in option_fields():
        default = getattr(defaults, f.name)
        kwargs: dict[str, Any] = {"help": f.metadata["help"], "default": default}
        if isinstance(default, bool):  # --name / --no-name when it is on by default
            action = argparse.BooleanOptionalAction if default else "store_true"
            kwargs = {"help": f.metadata["help"], "action": action, "default": default}
        elif f.metadata["choices"]:
            kwargs["choices"] = f.metadata["choices"]
        else:
            kwargs["type"] = type(default)
        if f.name == "prompt":
            kwargs = {"help": f.metadata["help"], "required": True}
        parser.add_argument("--" + f.name.replace("_", "-"), dest=f.name, **kwargs)


def options_from_args(args: argparse.Namespace, **overrides: Any) -> GenerationOptions:
    values = {f.name: getattr(args, f.name) for f in option_fields() if hasattr(args, f.name)}
    return GenerationOptions(**{**values, **overrides}).validate()


def add_generate_commands(subparsers: Any) -> None:
    from sdtune_ui.export.formats import FORMATS

    gen = subparsers.add_parser("generate", help="Generate images with a base model plus LoRAs / embeddings / a run.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    gen.add_argument("--model", default="", help="Base model (Hub id, folder, .safetensors, tiny-sd1 ...). "
                     "Default: the --run's base model, or the base_model on the --lora's model card.")
    gen.add_argument("--run", default="", help="A run folder (its final output) or RUN@step-N (a checkpoint).")
    gen.add_argument("--lora", action="append", default=[], metavar="PATH[:SCALE]",
                     help="LoRA file (diffusers or kohya), folder or Hub repo, with an optional scale; repeatable.")
    gen.add_argument("--embedding", action="append", default=[], metavar="PATH",
                     help="Textual-inversion embedding file (diffusers or A1111); repeatable.")
    gen.add_argument("--controlnet", default="", metavar="PATH",
                     help="A ControlNet (diffusers folder, Hub id, tiny-controlnet-sd1) for --control-image.")
    gen.add_argument("--lora-scale", type=float, default=1.0, help="Scale of the --run's LoRA.")
    _add_option_flags(gen)
    gen.add_argument("--compare", action="store_true", help="Also generate with the base model, side by side.")
    gen.add_argument("--allow-pickle", action="store_true", help="Allow pickle files (.ckpt/.bin/.pt): only "
                     "for files you trust, they can run code.")
    gen.add_argument("--out", required=True, help="Folder for the PNG files.")
    gen.set_defaults(handler=run_generate)

    grid = subparsers.add_parser("grid", help="Overfitting grid of a run: prompts x checkpoints (x LoRA scales).")
    grid.add_argument("run_dir")
    grid.add_argument("--steps", nargs="+", default=None, metavar="STEP",
                      help="Checkpoint steps, 'final' for the output (default: all checkpoints and final).")
    grid.add_argument("--prompt", action="append", default=[], help="Prompts (default: built from the run's "
                      "instance/class tokens); repeatable.")
    grid.add_argument("--scales", nargs="+", type=float, default=None, help="LoRA scales, e.g. 0.5 1.0.")
    defaults = GenerationOptions()
    grid.add_argument("--scheduler", choices=SCHEDULERS, default=defaults.scheduler)
    grid.add_argument("--inference-steps", type=int, default=defaults.steps)
    grid.add_argument("--guidance", type=float, default=defaults.guidance)
    grid.add_argument("--size", type=int, default=0, help="Image size (0 = native).")
    grid.add_argument("--seed", type=int, default=0)
    grid.add_argument("--out", required=True, help="PNG file to write.")
    grid.set_defaults(handler=run_grid)

    export = subparsers.add_parser("export", help="Export a run as diffusers, kohya (A1111/ComfyUI), a1111 or "
                                   "single-file, with a model card.")
    export.add_argument("run_dir")
    export.add_argument("--format", choices=FORMATS, required=True)
    export.add_argument("--out", required=True, help="Folder to write into.")
    export.add_argument("--step", type=int, default=None, help="Export checkpoint step N instead of the output.")
    export.add_argument("--half", action="store_true", help="single-file: store fp16 weights (half the size).")
    export.add_argument("--repo-id", default=None, help="Name the card's snippets with this Hub repo.")
    export.set_defaults(handler=run_export)

    push = subparsers.add_parser("push", help="Export a run (diffusers files + model card) and push it to the Hub.")
    push.add_argument("run_dir")
    push.add_argument("--repo-id", required=True, help="your-name/model-name (created if it does not exist).")
    visibility = push.add_mutually_exclusive_group()
    visibility.add_argument("--private", dest="private", action="store_true", default=True,
                            help="Create the repo private (the default).")
    visibility.add_argument("--public", dest="private", action="store_false", help="Create the repo public.")
    push.add_argument("--format", choices=FORMATS, default="diffusers")
    push.add_argument("--step", type=int, default=None, help="Push checkpoint step N instead of the output.")
    push.add_argument("--token", default=None, help="Hub token with write access (default: $HF_TOKEN). "
                      "Prefer the environment variable: command lines end up in shell history.")
    push.set_defaults(handler=run_push)


def _artifacts(args: argparse.Namespace) -> tuple[str, list]:
    from sdtune_ui.generate.artifacts import artifact_from_spec, base_model_from_card, run_artifacts

    model, artifacts = args.model, []
    if args.run:
        run_dir, step = _run_and_step(args.run)
        found = run_artifacts(run_dir, step)
        for artifact in found.artifacts:
            if artifact.kind == LORA:
                artifact.scale = args.lora_scale
        artifacts += found.artifacts
        model = model or found.base_model
    for spec in args.lora:
        artifacts.append(artifact_from_spec(spec, kind=LORA, allow_pickle=args.allow_pickle))
    for spec in args.embedding:
        artifacts.append(artifact_from_spec(spec, kind=EMBEDDING, allow_pickle=args.allow_pickle))
    if args.controlnet:
        from sdtune_ui.generate.artifacts import controlnet_artifact

        artifacts.append(controlnet_artifact(args.controlnet))
    if not model:
        for spec in args.lora:
            model = base_model_from_card(artifact_from_spec(spec, kind=LORA, allow_pickle=args.allow_pickle).path)
            if model:
                print(f"Base model from the LoRA's model card: {model}")
                break
    if not model:
        raise SdtuneError("Which base model? Give --model (e.g. stable-diffusion-v1-5/stable-diffusion-v1-5 or "
                          "tiny-sd1) or --run.")
    return model, artifacts


def run_generate(args: argparse.Namespace) -> int:
    from sdtune_ui.generate.engine import default_engine

    model, artifacts = _artifacts(args)
    options = options_from_args(args)
    engine = default_engine()
    out = Path(args.out)
    if args.compare:
        result = engine.compare(model, artifacts, options, allow_pickle=args.allow_pickle)
        for base in result.base:
            base.save(out, prefix="base-")
        tuned = result.tuned[0]
        result.image.save(out / "compare.png")
        print(f"Wrote {out / 'compare.png'}")
    else:
        tuned = engine.generate(model, artifacts, options, allow_pickle=args.allow_pickle)
    for path, seed in zip(tuned.save(out), tuned.seeds, strict=True):
        print(f"{path}  (seed {seed})")
    if tuned.tokens:
        print(f"Embedding trigger words: {', '.join(tuned.tokens)}")
    return 0


def run_grid(args: argparse.Namespace) -> int:
    from sdtune_ui.generate.overfitting import overfitting_grid

    steps = None
    if args.steps:
        try:
            steps = [None if s == "final" else int(s) for s in args.steps]
        except ValueError as err:
            raise SdtuneError("--steps takes checkpoint numbers or 'final'.") from err
    size = args.size
    options = GenerationOptions(prompt="grid", scheduler=args.scheduler, steps=args.inference_steps,
                                guidance=args.guidance, width=size, height=size, seed=args.seed).validate()
    image = overfitting_grid(args.run_dir, steps=steps, prompts=args.prompt or None, scales=args.scales,
                             options=options)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out)
    print(f"Wrote {out} ({image.size[0]}x{image.size[1]})")
    return 0


def run_export(args: argparse.Namespace) -> int:
    from sdtune_ui.app.ops import export_cleanly  # a failed export leaves no empty folder behind

    for path in export_cleanly(args.run_dir, args.format, args.out, step=args.step, half=args.half,
                               repo_id=args.repo_id):
        print(path)
    return 0


def run_push(args: argparse.Namespace) -> int:
    from sdtune_ui.export.formats import push_run

    token = args.token or os.environ.get("HF_TOKEN") or ""
    if not token:
        raise SdtuneError("No Hub token: set HF_TOKEN (a token with write access, huggingface.co/settings/tokens) "
                          "or pass --token.")
    url = push_run(args.run_dir, args.repo_id, token=token, private=args.private, format=args.format,
                   step=args.step)
    print(f"Pushed to {url} ({'private' if args.private else 'public'})")
    return 0
