"""Export a run in the formats other tools load, with a model card, and push it to the Hub.

Formats:
- diffusers:   the run's standard files as they are (`pipe.load_lora_weights`, `load_textual_inversion`,
               `from_pretrained` for a fine-tuned pipeline folder).
- kohya:       a LoRA converted to kohya keys (AUTOMATIC1111, ComfyUI, SD.Next, InvokeAI).
- a1111:       everything in the form AUTOMATIC1111 / ComfyUI load: kohya LoRA, embedding named by its
               trigger word, single-file checkpoint for a full fine-tune.
- single-file: a full fine-tune / DreamBooth model as one original-layout `.safetensors` checkpoint.

The Hub token is used for one push only: never logged, written, put on the card or in an error message.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sdtune_ui import hub
from sdtune_ui.errors import SdtuneError
from sdtune_ui.export.kohya import a1111_embedding_name
from sdtune_ui.generate.artifacts import Artifact, artifacts_in_folder, run_artifacts
from sdtune_ui.hub import scrub  # noqa: F401 - part of this module's API (tests, callers)
from sdtune_ui.methods import adapters
from sdtune_ui.methods.outputs import CONTROLNET, EMBEDDING, EMBEDDINGS_FILE, LORA, LORA_FILE, PIPELINE
from sdtune_ui.runs import RunDir

log = logging.getLogger(__name__)

FORMATS = ("diffusers", "kohya", "a1111", "single-file")
MAX_CARD_SAMPLES = 8


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.") or "model"


def _samples(run: RunDir, out_dir: Path) -> list[tuple[str, str]]:
    """The run's last validation images (one per prompt), copied into images/ for the card's gallery."""
    latest: dict[str, Path] = {}
    for event in run.read_events():
        if event.get("kind") == "sample" and event.get("path"):
            path = run.path / event["path"]
            if path.exists():
                latest[event.get("prompt", "")] = path
    picked = []
    if latest:
        (out_dir / "images").mkdir(parents=True, exist_ok=True)
    for index, (prompt, path) in enumerate(list(latest.items())[:MAX_CARD_SAMPLES]):
        target = out_dir / "images" / f"sample-{index}{path.suffix}"
        shutil.copy2(path, target)
        picked.append((f"images/{target.name}", prompt))
    return picked


def _single_file(folder: Path, target: Path, half: bool) -> Path:
    from sdtune_ui.export.single_file import save_single_file
    from sdtune_ui.models import load_pipeline

    pipe = load_pipeline(str(folder))
    return save_single_file(pipe, target, half=half)


def export_run(run_dir: str | Path, format: str, out_dir: str | Path, *, step: int | None = None,
               half: bool = False, repo_id: str | None = None, model_card: bool = True) -> list[Path]:
    """Write the run's artifact(s) (final output, or checkpoint `step`) in `format` into `out_dir`.

    Returns the written top-level paths, README.md (the model card) last.
    """
    from sdtune_ui.export.model_card import build_model_card, family_of

    if format not in FORMATS:
        raise SdtuneError(f"Unknown export format {format!r}; choose one of {', '.join(FORMATS)}.")
    found = run_artifacts(run_dir, step)
    config = found.config
    family = family_of(config)
    by_kind = {a.kind: a for a in reversed(found.artifacts)}  # the first of each kind
    embeddings = [a for a in found.artifacts if a.kind == EMBEDDING]  # one per token (several concepts)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = _safe_name(Path(run_dir).name)
    written: list[Path] = []
    notes: list[str] = []
    roles: dict[str, str] = {}   # which written file is the LoRA / the embedding, for the card's snippet

    def tool_files() -> None:
        files = ToolFiles(config, family, name, out, unet_config=lambda: _unet_config(config))
        if LORA in by_kind:
            path, note = files.kohya_lora(by_kind[LORA])
            written.append(path)
            roles["lora_file"] = path.name
            notes.append(f"`{path.name}` is {note}.")
            adapter = adapters.adapter_for_file(by_kind[LORA].path)
            if not adapter.diffusers_reads_kohya:  # diffusers users get the file diffusers (with peft) reads
                source = Path(by_kind[LORA].path)
                shutil.copy2(source, out / source.name)
                written.append(out / source.name)
                roles["lora_file"] = source.name
                notes.append(f"`{source.name}` is the same {adapter.label} for {adapter.diffusers_hint()}.")
        for artifact in embeddings:  # one file per token, named after it (A1111 takes the word from the name)
            path, note = files.a1111_embedding(artifact)
            written.append(path)
            roles.setdefault("embedding_file", path.name)
            notes.append(f"`{path.name}` is {note}.")

    def single_file() -> None:
        target = out / f"{name}.safetensors"
        written.append(_single_file(Path(by_kind[PIPELINE].path), target, half))
        if family.kohya_original_layout:
            notes.append(f"`{target.name}` is the {family.label} transformer alone in the original layout (ComfyUI's "
                         "diffusion-model loader, `from_single_file` with the base model's other components).")
        else:
            notes.append(f"`{target.name}` is a single-file checkpoint in the original layout "
                         "(AUTOMATIC1111, ComfyUI, `from_single_file`).")

    if format == "diffusers":
        for artifact in found.artifacts:
            source = Path(artifact.path)
            if artifact.kind in (PIPELINE, CONTROLNET):
                # A pipeline (or a ControlNet) goes at the folder's root, where from_pretrained(repo_id) looks.
                skip = {".complete", "README.md"}
                shutil.copytree(source, out, dirs_exist_ok=True, ignore=shutil.ignore_patterns(*skip))
                written += sorted(out / item.name for item in source.iterdir() if item.name not in skip)
            else:
                shutil.copy2(source, out / source.name)
                written.append(out / source.name)
                roles.setdefault(f"{artifact.kind}_file", source.name)
    elif format == "kohya":
        if LORA not in by_kind:
            raise SdtuneError("The kohya format is for LoRA runs; this run has no LoRA "
                              "(use a1111 for embeddings, single-file for full fine-tunes).")
        tool_files()
    elif format == "a1111":
        tool_files()
        if PIPELINE in by_kind:
            single_file()
    else:  # single-file
        if PIPELINE not in by_kind:
            raise SdtuneError("A single-file checkpoint needs a full fine-tune or DreamBooth run; "
                              "for a LoRA export the kohya format, for an embedding the a1111 format.")
        single_file()

    if model_card:
        from sdtune_ui.evaluate.report import card_section

        evaluation = card_section(run_dir, step)   # the scores of `evaluate`, when it was run
        if evaluation:
            notes.append(evaluation)
        files = _card_files(written, out)
        samples = _samples(RunDir(Path(run_dir)), out)
        card = build_model_card(config, files=files, samples=samples, family=family, repo_id=repo_id, notes=notes,
                                **roles)
        readme = out / "README.md"
        card.save(readme)
        written.append(readme)
        if samples:
            written.insert(-1, out / "images")
    return written


class ToolFiles:
    """The files AUTOMATIC1111 and ComfyUI load, named apart: the LoRA after the run, the embedding after its
    trigger word (A1111 takes the word from the file name), the LoRA renamed when the two would collide."""

    def __init__(self, config: dict, family: Any, run_name: str, out: Path, *,
                 unet_config: Callable[[], dict] | dict):
        self.config, self.family, self.out = config, family, out
        self._unet_config = unet_config
        tokens = [config.get("placeholder_token")] + [entry.partition("=")[0]
                                                      for entry in config.get("concept_tokens") or []]
        embedding_names = {a1111_embedding_name(token) for token in tokens if token}
        self.lora_name = run_name if run_name not in embedding_names else f"{run_name}_lora"

    def kohya_lora(self, artifact: Artifact) -> tuple[Path, str]:
        """The run's adapter file in kohya/LyCORIS keys; returns (path, which tools read it)."""
        from sdtune_ui.export.kohya import save_kohya_lora

        unet_config = None
        if self.family.kohya_ldm_unet_names or self.family.kohya_original_layout:
            unet_config = self._unet_config() if callable(self._unet_config) else self._unet_config
        target = self.out / f"{self.lora_name}.safetensors"
        config = self.config
        path = save_kohya_lora(artifact.path, target, family=self.family,
                               fallback_alpha=float(config.get("lora_alpha") or config.get("rank") or 0) or None,
                               base_model=config.get("model", ""), unet_config=unet_config)
        return path, adapters.adapter_for_file(artifact.path).kohya_note(path.name)

    def a1111_embedding(self, artifact: Artifact) -> tuple[Path, str]:
        from sdtune_ui.export.kohya import save_a1111_embedding

        token = artifact.token or self.config.get("placeholder_token")  # one file per token (several concepts)
        path, word = save_a1111_embedding(artifact.path, self.out, token=token)
        return path, (f"the embedding for AUTOMATIC1111 / ComfyUI: write `{word}` in the prompt there "
                      f"(diffusers uses `{token or word}`)")


def write_tool_files(run_dir: str | Path, config: dict, *, family: Any = None,
                     unet_config: dict | None = None) -> list[Path]:
    """Beside the diffusers files in a run's output/ (at the end of the run, or after a checkpoint was promoted):
    the files AUTOMATIC1111 and ComfyUI load and README.txt saying which file is for which tool
    (TrainConfig.tool_files). The family and UNet config are read from the base model when not given."""
    from sdtune_ui.export.model_card import family_of

    run = RunDir(Path(run_dir))
    out = run.output_dir
    found = artifacts_in_folder(out, config)
    files = ToolFiles(config, family or family_of(config), _safe_name(run.path.name), out,
                      unet_config=unet_config if unet_config is not None else (lambda: _unet_config(config)))
    lines: list[tuple[str, str]] = []
    written: list[Path] = []
    for artifact in found:
        source = Path(artifact.path)
        if artifact.kind == LORA:
            lines.append((source.name, adapters.adapter_for_file(source).diffusers_hint()))
            path, note = files.kohya_lora(artifact)
        elif artifact.kind == EMBEDDING:
            lines.append((source.name, "diffusers (pipe.load_textual_inversion) and this app's Generate tab"))
            path, note = files.a1111_embedding(artifact)
        elif artifact.kind == CONTROLNET:
            lines.append(("config.json, diffusion_pytorch_model.safetensors", "a diffusers ControlNet "
                          "(ControlNetModel.from_pretrained, with the base model in "
                          f"{files.family.controlnet_pipeline_class_name}) and this app's Generate tab; ComfyUI's "
                          "ControlNet loader and AUTOMATIC1111's ControlNet extension read this diffusers file too"))
            continue
        else:
            lines.append(("model_index.json and its folders", "a diffusers pipeline (from_pretrained) and this "
                          "app's Generate tab; for AUTOMATIC1111 / ComfyUI export it as one file: python -m "
                          f"sdtune_ui export path/to/{run.path.name} --format single-file --out FOLDER"))
            continue
        written.append(path)
        lines.append((path.name, note))
    readme = out / "README.txt"
    width = max(len(file) for file, _ in lines) if lines else 0
    readme.write_text("Which file is for which tool\n\n" + "".join(
        f"{file.ljust(width)}  {text}\n" for file, text in lines) + "\nEvery format, with a model card: "
        f"python -m sdtune_ui export path/to/{run.path.name} --format diffusers|kohya|a1111|single-file "
        "--out FOLDER\n")
    return [*written, readme]


def _card_files(written: list[Path], out: Path) -> list[str]:
    return [path.name + ("/" if path.is_dir() else "") for path in written]


def _unet_config(config: dict) -> dict:
    """The base model's denoiser config (its UNet's, or its transformer's), read without loading weights if it can."""
    import json

    from sdtune_ui.export.model_card import family_of
    from sdtune_ui.models import resolve_model

    denoiser = family_of(config).denoiser
    folder = Path(resolve_model(config.get("model", ""))).expanduser()
    try:
        return json.loads((folder / denoiser / "config.json").read_text())
    except OSError:
        from sdtune_ui.families import denoiser_of
        from sdtune_ui.models import load_pipeline

        return dict(denoiser_of(load_pipeline(config["model"], allow_pickle=bool(config.get("allow_pickle")))).config)


def zip_export(paths: list[Path], zip_path: str | Path) -> Path:
    """One .zip of an export (for a single download button); folders keep their structure."""
    import zipfile

    zip_path = Path(zip_path)
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in paths:
            if path.is_dir():
                for file in sorted(path.rglob("*")):
                    if file.is_file():
                        archive.write(file, str(file.relative_to(path.parent)))
            elif path.is_file():
                archive.write(path, path.name)
    return zip_path


# ---------------------------------------------------------------------------------------------- Hub
def push_folder(folder: str | Path, repo_id: str, *, token: str, private: bool = True,
                commit_message: str = "Upload model trained with sdtune_ui",
                api_factory: hub.ApiFactory | None = None) -> str:
    """Create the model repo if needed (new or existing) and upload the folder; returns the repo URL."""
    folder = Path(folder)
    hub.check_repo_id(repo_id)
    if not folder.is_dir() or not any(folder.iterdir()):
        raise SdtuneError(f"{folder} is empty; export the run first.")
    return hub.upload_folder(folder, repo_id, repo_type="model", token=token, private=private,
                             commit_message=commit_message, api_factory=api_factory,
                             ignore_patterns=[".complete", "*.partial*"])


def push_run(run_dir: str | Path, repo_id: str, *, token: str, private: bool = True, format: str = "diffusers",
             step: int | None = None, api_factory: hub.ApiFactory | None = None) -> str:
    """Export the run (diffusers files + model card with samples) to a temporary folder and push it."""
    hub.check_repo_id(repo_id)
    with tempfile.TemporaryDirectory(prefix="sdtune-push-") as tmp:
        folder = Path(tmp) / "export"
        export_run(run_dir, format, folder, step=step, repo_id=repo_id)
        return push_folder(folder, repo_id, token=token, private=private, api_factory=api_factory)


__all__ = ["EMBEDDINGS_FILE", "FORMATS", "LORA_FILE", "export_run", "push_folder", "push_run", "scrub", "zip_export"]
