"""What the app's buttons do, without gradio: datasets in the data folder, runs, configs from widget values,
GPU detection (the rules for a public app are in public_rules.py).

The UI modules only wire widgets to these functions; the tests call them directly too.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdtune_ui.app.public_rules import check_model, check_workspace_rules
from sdtune_ui.config import TrainConfig, field_info
from sdtune_ui.errors import ConfigError, DatasetError, SdtuneError
from sdtune_ui.examples import EXAMPLE_DATASET
from sdtune_ui.methods import DEFAULT_METHOD, adapters, method_named, method_names
from sdtune_ui.runs import ACTIVE, FINISHED, RunDir, list_runs, mark_if_interrupted, new_run_id

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")
MAX_PROCESSES = 16  # processes of one `accelerate launch` run started from the app (GPUs, or CPU processes)

# A run that shows the whole flow on the offline demo model on a CPU in about a minute: the README's demo. A LoRA
# on the UNet's every layer and on the text encoder: demo-sd1's encoder reads "sks robot" almost as "a robot"
# (13% apart where the words differ), so only a trained encoder tells the subject from the class. Prior
# preservation keeps "a photo of a robot" drawing the base's robots. Measured (tests/test_learning.py,
# tests/test_cli_demo.py): rank 8 or 200 steps learn the subject in orange or not at all; lr 2e-3 learns
# nothing; 5e-3 washes every robot out.
DEMO_SETTINGS: dict[str, Any] = dict(model="demo-sd1", method=DEFAULT_METHOD, adapter=adapters.DEFAULT_ADAPTER,
                                     max_train_steps=300, learning_rate=1e-3, rank=16, lora_targets="all",
                                     train_batch_size=4, train_text_encoder=True, with_prior_preservation=True,
                                     class_prompt="a photo of a robot", num_class_images=16, log_every=5,
                                     checkpointing_steps=100, validation_steps=100, validation_inference_steps=20,
                                     validation_guidance_scale=5.0,
                                     validation_prompts=["a photo of sks robot", "a photo of a robot"])


def demo_settings(method: str = DEFAULT_METHOD) -> dict[str, Any]:
    """The CPU demo's settings for `method`: its demo_preset over the LoRA demo's (LoRA's for an unknown name)."""
    chosen = method_named(method if method in method_names() else DEFAULT_METHOD)
    return {**DEMO_SETTINGS, **chosen.demo_preset, "method": chosen.name}


def default_data_dir() -> Path:
    """The app's data folder: $SDTUNE_DATA_DIR, a Space's persistent storage (/data/sdtune), else ./data.

    The CLI can use the same default for its runs so that runs started from a terminal show up in the app.
    """
    if os.environ.get("SDTUNE_DATA_DIR"):
        return Path(os.environ["SDTUNE_DATA_DIR"])
    persistent = Path("/data")
    if os.environ.get("SPACE_ID") and persistent.is_dir() and os.access(persistent, os.W_OK):
        return persistent / "sdtune"  # survives Space restarts
    return Path("data")


def release_generation_memory() -> None:
    """Drop the Generate tab's cached pipeline before another GPU job (training, captioning) needs the memory."""
    from sdtune_ui.generate.engine import release_gpu

    release_gpu()


# ---------------------------------------------------------------------------- hardware
@dataclass(frozen=True)
class GpuInfo:
    name: str | None
    memory_gib: float

    @property
    def vram_preset(self) -> str:
        return vram_preset_for(self.memory_gib if self.name else None)

    def describe(self) -> str:
        if not self.name:
            return ("No GPU detected: training runs on the CPU (fine for the demo-sd1 demo, far too slow for "
                    f"real models). Memory preset: {self.vram_preset}.")
        return f"GPU: {self.name} ({self.memory_gib:.0f} GiB). Memory preset: {self.vram_preset}."


def detect_gpu() -> GpuInfo:
    import torch

    if not torch.cuda.is_available():
        return GpuInfo(None, 0.0)
    props = torch.cuda.get_device_properties(0)
    return GpuInfo(props.name, props.total_memory / 2**30)


def gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def vram_preset_for(memory_gib: float | None) -> str:
    """The VRAM preset for a GPU of that size (None: no GPU)."""
    if memory_gib is None:
        return "CPU"
    # Cards are sold as 8/12/16/24 GB but report a little less usable memory.
    for name, floor in (("24 GB+", 22), ("16 GB", 15), ("12 GB", 11)):
        if memory_gib >= floor:
            return name
    return "8 GB"


# ---------------------------------------------------------------------------- names and paths
def safe_name(name: str, default: str = "dataset") -> str:
    """A folder name made only of letters, digits, dot, dash and underscore (never '..' or a path)."""
    cleaned = _SAFE.sub("-", name or "").strip(".-")[:60]
    return cleaned or default


def list_datasets(datasets_dir: Path) -> list[str]:
    """Dataset folders in the app's data folder, by name."""
    if not datasets_dir.is_dir():
        return []
    return sorted(p.name for p in datasets_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def dataset_path(datasets_dir: Path, name: str, *, create: bool = False) -> Path:
    """The folder of dataset `name` inside the data folder (a name, never a path)."""
    path = datasets_dir / safe_name(name)
    if create:
        path.mkdir(parents=True, exist_ok=True)
    elif not path.is_dir():
        raise DatasetError(f"There is no dataset named {name!r}; add images first.")
    return path


def load_example(datasets_dir: Path, source: Path = EXAMPLE_DATASET) -> Path:
    """Copy the project's example dataset into the data folder (kept as it is if already there)."""
    target = datasets_dir / source.name
    if not target.is_dir():
        datasets_dir.mkdir(parents=True, exist_ok=True)
        shutil.copytree(source, target)
    return target


def ingest_into(datasets_dir: Path, name: str, files: Iterable[str | Path], *, local_folder: str = "",
                allow_local_paths: bool = False) -> tuple[Path, Any]:
    """Bring uploaded files (images, captions, zips) and, when running locally, a folder into dataset `name`."""
    from sdtune_ui.data.ingest import ingest

    sources = [str(f) for f in files or []]
    if local_folder.strip():
        if not allow_local_paths:
            raise DatasetError("Reading a folder of the server is only possible when the app runs locally; "
                               "upload the images or a zip instead.")
        sources.append(local_folder.strip())
    if not sources:
        raise DatasetError("Choose images, a zip file or a folder to add.")
    target = dataset_path(datasets_dir, name, create=True)
    return target, ingest(sources, target)


def zip_dataset(folder: Path, exports_dir: Path) -> Path:
    """A zip of a dataset folder (images and caption files) for download."""
    exports_dir.mkdir(parents=True, exist_ok=True)
    target = exports_dir / f"{folder.name}.zip"
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file() and not path.name.startswith("."):
                archive.write(path, path.relative_to(folder).as_posix())
    return target


# ---------------------------------------------------------------------------- configs from widgets
def config_from_values(values: dict[str, Any]) -> TrainConfig:
    """A TrainConfig from widget values (numbers arrive as floats, prompt lists as text, one per line)."""
    defaults = TrainConfig()
    converted: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for f in field_info():
        if f.name not in values:
            continue
        value, default = values[f.name], getattr(defaults, f.name)
        try:
            converted[f.name] = _convert(value, default)
        except (TypeError, ValueError, OverflowError):
            errors[f.name] = f"{value!r} is not a valid {type(default).__name__}."
    if errors:
        raise ConfigError(errors)
    return dataclasses.replace(defaults, **converted)


def _convert(value: Any, default: Any) -> Any:
    if isinstance(default, bool):
        return bool(value)
    if isinstance(default, int):
        if value is None or float(value) != int(float(value)):
            raise ValueError(value)
        return int(float(value))
    if isinstance(default, float):
        if value is None:
            raise ValueError(value)
        return float(value)
    if isinstance(default, list):
        if isinstance(value, str):
            return [line.strip() for line in value.splitlines() if line.strip()]
        return [str(v) for v in value or []]
    return "" if value is None else str(value).strip()


def widget_values(values: dict[str, Any]) -> dict[str, Any]:
    """Config values as widgets show them (lists become one line per item): the inverse of config_from_values."""
    return {name: "\n".join(v) if isinstance(v, list) else v for name, v in values.items()}


# ---------------------------------------------------------------------------- what a run reads
def dataset_by_name(values: dict[str, Any], workspace: Any) -> dict[str, Any]:
    """Values whose `data` names a dataset of the workspace and whose `init_from` names one of its runs (as the
    form and the API give them) with their folders, as a run reads them."""
    from sdtune_ui.generate.artifacts import parse_choice

    values = dict(values)
    data = str(values.get("data") or "").strip()
    if data and not Path(data).is_absolute() and ".." not in data.split("/"):
        try:
            values["data"] = str(workspace.dataset_folder(data))
        except DatasetError:
            pass  # a Hub dataset id, or a folder the checks below judge
    start = str(values.get("init_from") or "").strip()
    if start:
        values["init_from"] = run_reference(workspace.runs_dir_of(parse_choice(start)[0]), start)
    return values


def memory_estimate(values: dict[str, Any], gpu: GpuInfo) -> str:
    """The Train tab's memory line for the form's values: the estimate beside the GPU's memory."""
    from sdtune_ui.train.memory import memory_line

    try:
        config = config_from_values(values)
    except ConfigError as err:
        return f"No memory estimate yet: {next(iter(err.field_errors.values()))}"
    return memory_line(config, gpu.name, gpu.memory_gib if gpu.name else None)


# ---------------------------------------------------------------------------- runs
def run_path(runs_dir: Path, run_id: str | None) -> Path | None:
    """Where run `run_id` lives inside the runs folder; None for an empty id or one that is not a plain name."""
    return runs_dir / run_id if run_id and safe_name(run_id, "") == run_id else None


def run_reference(runs_dir: Path, value: str) -> str:
    """`init_from` as given, with a run id of this app (`run-id` or `run-id@step-N`) made its folder's path."""
    from sdtune_ui.generate.artifacts import parse_choice

    name, step = parse_choice(value.strip())
    path = run_path(runs_dir, name)
    if path is None or not path.is_dir():
        return value
    return str(path) + (f"@step-{step}" if step is not None else "")


def run_dir(runs_dir: Path, run_id: str) -> RunDir:
    """The existing run folder `run_id` inside the runs folder (an id, never a path)."""
    path = run_path(runs_dir, run_id)
    if path is None:
        raise SdtuneError(f"{run_id!r} is not a run id.")
    run = RunDir(path)
    if not run.config_path.exists():
        raise SdtuneError(f"There is no run {run_id!r} (it may have been deleted).")
    return run


def new_run_dir(runs_dir: Path, config: TrainConfig, name: str = "") -> Path:
    """A new run folder: `<name or method>-<time>-<random>`, so a run's name never clashes with another's."""
    return runs_dir / new_run_id(safe_name(name, config.method) if name.strip() else config.method)


def check_model_available(config: TrainConfig) -> None:
    """Refuse, before a run folder exists, a Hub model that cannot load here (offline and never downloaded).

    Local only (no network call), so the form's live validation and the CLI can ask it every time.
    """
    from sdtune_ui.models.loading import unavailable_offline

    problem = unavailable_offline(config.model)
    if problem:
        raise ConfigError({"model": problem})


def delete_run(jobs: Any, runs_dir: Path, run_id: str) -> None:
    """Delete a run folder that is not queued or running in this app."""
    run = run_dir(runs_dir, run_id)
    if jobs.find(run.path) is not None:
        raise SdtuneError("This run is queued or running: cancel it first, then delete it.")
    mark_if_interrupted(run)
    if run.status() in ACTIVE and not run.cancel_requested():
        # Maybe started from a terminal: deleting its folder under it would crash it mid-write.
        raise SdtuneError("This run looks active (started elsewhere?): cancel it first, then delete it.")
    shutil.rmtree(run.path)


def cancel_run(jobs: Any, runs_dir: Path, run_id: str) -> None:
    """Ask a run to stop: dropped if still queued here, else it stops after its current step with a checkpoint.

    Works for runs started elsewhere too (the CANCEL file reaches a CLI run).
    """
    run = run_dir(runs_dir, run_id)
    if jobs.find(run.path) is None:
        mark_if_interrupted(run)  # its process is gone: nothing to cancel
    status = run.status()
    if jobs.find(run.path) is None and status in FINISHED:
        raise SdtuneError(f"Run {run_id} has already finished ({status}).")
    jobs.cancel(run.path)


def release_orphaned_runs(runs_dir: Path) -> list[str]:
    """Runs a previous app process left behind: "queued" ones (that queue died with it) are marked cancelled;
    "running" ones whose process is gone (the app or a terminal's run was killed) are marked interrupted, with
    the checkpoint a resume continues from.

    Called when the app starts (its own queue is still empty). They can be resumed from the Runs tab.
    """
    released = []
    for run in list_runs(runs_dir):
        if run.status() == "queued":
            run.events().emit("status", status="cancelled",
                              message="The app restarted before this run started; press Resume to queue it again.")
            released.append(run.path.name)
        elif mark_if_interrupted(run):
            released.append(run.path.name)
    return released


def interrupted_runs(runs_dir: Path) -> list[str]:
    """Runs whose last status is "interrupted" (for re-queueing them when the app starts, behind a flag)."""
    return [run.path.name for run in list_runs(runs_dir) if run.status() == "interrupted"]


def resume_run(jobs: Any, runs_dir: Path, run_id: str, *, memory_fallback: bool = False, owner: str = "",
               user: str = "") -> Any:
    """Queue a stopped run again; the core continues from its last complete checkpoint.

    A run whose process was killed (still "running" in its folder) is found interrupted and resumes at once.
    `memory_fallback`: with the next memory-saving setting (after running out of GPU memory), logged in the run.
    `owner` / `user`: whose it is in the queue.
    """
    from sdtune_ui.train.memory import next_memory_saving

    run = run_dir(runs_dir, run_id)
    if jobs.find(run.path) is not None:
        raise SdtuneError("This run is already queued or running.")
    mark_if_interrupted(run)
    status = run.status()
    if status == "completed":
        raise SdtuneError("This run has completed; start a new run to train more.")
    if run.owner_alive():
        raise SdtuneError(f"This run is still running (by {run.owner_text()}); cancel it and let it stop before "
                          "resuming here.")
    if status in ACTIVE and not run.cancel_requested():
        raise SdtuneError("This run is still running (started elsewhere?); cancel it before resuming here.")
    config = TrainConfig.from_dict(run.config())
    if memory_fallback:
        fallback = next_memory_saving(config)
        if fallback is None:
            raise SdtuneError("This run already uses every memory saver the trainer has; use LoRA instead of full "
                              "fine-tuning, or a GPU with more memory.")
        config = fallback.apply(config)
        run.events().emit("log", level="info", message=f"Memory fallback: {fallback.description}")
    return jobs.submit_training(config, run.path, owner=owner, user=user)


def checked_config(values: dict[str, Any], workspace: Any, *, public: bool) -> TrainConfig:
    """Settings from the form or an API caller, checked as every run the app starts is (a sweep's trials too):
    `data` may name a dataset of the workspace; what it may read follows the workspace's rules."""
    if not isinstance(values, dict):
        raise ConfigError({"config": "Give the settings as a JSON object of TrainConfig fields."})
    config = config_from_values(dataset_by_name(values, workspace))
    check_workspace_rules(config, workspace, public=public)
    check_model(config.model, allow_local_paths=not public and workspace.admin)
    return config


def start_training(ctx: Any, values: dict[str, Any], *, public: bool, num_processes: int = 1,
                   multi_gpu_mode: str = "ddp", name: str = "", owner: str = "", user: str = "",
                   workspace: Any = None) -> Any:
    """Queue a new run from widget (or API) values; `data` may name a dataset of the workspace.

    `name` starts the run's id (the time and a random part keep it unique); `owner` / `user` say whose it
    is in the queue. `workspace` (app/workspace.py; default: the logged-in `user`'s) is where the run folder goes
    and what it may read: a user of a per-user app reads only their own workspace, like a public app its data
    folder.

    With `num_processes` > 1 the run is an `accelerate launch` child process (one process per GPU; on a
    machine without GPUs, CPU processes over gloo), watched through the same run folder. `multi_gpu_mode`
    picks its accelerate config: "ddp" (a whole model per GPU) or "fsdp" (sharded full fine-tuning).
    """
    from sdtune_ui.app.jobs import ACCELERATE_CONFIGS
    from sdtune_ui.train import sharding

    try:
        num_processes = int(num_processes or 1)
    except (TypeError, ValueError):
        raise ConfigError({"num_processes": f"Give a whole number of processes (got {num_processes!r})."}) from None
    if not 1 <= num_processes <= MAX_PROCESSES:
        raise ConfigError({"num_processes": f"Choose between 1 and {MAX_PROCESSES} processes (got {num_processes})."})
    multi_gpu_mode = str(multi_gpu_mode or "ddp").lower()
    if multi_gpu_mode not in ACCELERATE_CONFIGS:
        choices = ", ".join(ACCELERATE_CONFIGS)
        raise ConfigError({"multi_gpu_mode": f"Choose one of {choices} (got {multi_gpu_mode!r})."})
    workspace = workspace or ctx.workspace(user)
    config = checked_config(values, workspace, public=public)
    if public and num_processes > max(1, gpu_count()):
        raise ConfigError({"num_processes": "A public app runs at most one process per GPU."})
    if num_processes > 1 and multi_gpu_mode == "fsdp":
        if gpu_count() < num_processes:
            raise ConfigError({"multi_gpu_mode": f"FSDP shards the model over GPUs and needs {num_processes} of "
                                                 f"them; {gpu_count()} visible. Use DDP, or fewer processes."})
        sharding.check_supported(config)
    run_dir = new_run_dir(workspace.runs_dir, config, name)
    if num_processes > 1:
        return ctx.jobs.submit_subprocess_training(config, run_dir, num_processes, mode=multi_gpu_mode, owner=owner,
                                                   user=user)
    return ctx.jobs.submit_training(config, run_dir, owner=owner, user=user)


# ---------------------------------------------------------------------------- exports
def export_cleanly(run_dir: str | Path, format_name: str, out: str | Path, **kwargs: Any) -> list[Path]:
    """`export_run`, but a failed export leaves no folder behind that it created (an empty folder looks like
    an export that worked). Used by the app and the CLI."""
    from sdtune_ui.export.formats import export_run

    out = Path(out)
    created = not out.exists()
    try:
        return export_run(run_dir, format_name, out, **kwargs)
    except BaseException:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise
