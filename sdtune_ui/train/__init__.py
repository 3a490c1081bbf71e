"""The training core: `train(config, run_dir)` runs one training run and owns its run folder."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from sdtune_ui.config import TrainConfig
from sdtune_ui.errors import Cancelled, DiskFull, Interrupted, SdtuneError, is_disk_full
from sdtune_ui.runs import ACTIVE, EventLog, RunDir, is_main_process, mark_if_interrupted
from sdtune_ui.train.setup import apply_dataset_info

log = logging.getLogger(__name__)

OOM_ADVICE = ("The GPU ran out of memory. Try, in this order: gradient checkpointing, a smaller batch "
              "size (with gradient accumulation), a lower resolution, 8-bit AdamW, or LoRA instead of "
              "full fine-tuning.")


class RunBusy(SdtuneError):
    """The run folder is being trained by a process that is still alive."""


def train(config: TrainConfig, run_dir: str | Path, *, events: EventLog | None = None,
          cancel: Callable[[], bool] | None = None) -> str:
    """Validate, train, save; return the final status: completed, cancelled, interrupted or failed.

    The run folder tells the whole story (config.json, events.jsonl, checkpoints, output). A run folder
    that already has checkpoints is resumed from the last complete one, if the settings its checkpoints
    depend on are unchanged (else ResumeRefused is raised and nothing is written). Errors the user can fix
    are reported as a `failed` status event with a readable message; the traceback goes to train.log.
    While it runs, the process owns the folder (owner.json and a heartbeat); SIGTERM stops it at the next
    step with a checkpoint, as "interrupted".
    """
    from sdtune_ui.train.speed import process_age_s, start_cuda_in_background

    entered, age_at_entry = time.perf_counter(), process_age_s()
    start_cuda_in_background()  # overlaps the CUDA start with the imports below (seconds each)
    from diffusers.training_utils import free_memory

    from sdtune_ui.models.cpu_threads import offline_model_threads
    from sdtune_ui.train.resume import describe_changes, resume_changes
    from sdtune_ui.train.tensorboard import with_tensorboard
    from sdtune_ui.train.trainer import Trainer

    imports_s = time.perf_counter() - entered
    run = RunDir(Path(run_dir))
    main = is_main_process()
    changes: dict[str, Any] = {}
    if main:
        _refuse_if_owned_elsewhere(run)
        try:
            checked = apply_dataset_info(config).validate()
        except SdtuneError:
            checked = None  # reported below, as the run's failure
        if checked is not None:
            changes = resume_changes(run, checked)  # ResumeRefused: raised before anything is written
    heartbeat = _claim(run) if main else None
    events = events or (run.events() if main else None)
    trainer = None
    extra: dict[str, Any] = {}
    cudnn_attention = torch.backends.cuda.cudnn_sdp_enabled()  # the trainer decides for its run (speed.py)
    try:
        # offline_model_threads: one CPU thread for the built-in demo models (cpu_threads.py says why).
        with _interrupt_on_sigterm(run), offline_model_threads(config.model):
            config = apply_dataset_info(config).validate()
            if main:
                config.save(run.config_path)
                events = with_tensorboard(events, run, config)
            trainer = Trainer(config, run, events=events, cancel=cancel)
            if events is not None:
                events.emit("status", status="starting", method=config.method, model=config.model)
                _log_start(events, age_at_entry, imports_s)
                if changes:
                    events.emit("log", level="info", message=f"Resuming with changed settings: "
                                                             f"{describe_changes(changes)}")
            trainer.setup()
            trainer.fit()
            trainer.validate()
            trainer.save_output()
        status, message = "completed", "Training finished."
    except Interrupted:
        step = trainer.step if trainer else 0
        status, message = "interrupted", (f"Stopped by a shutdown signal at step {step}; "
                                          f"{run.resume_point()}.")
    except Cancelled:
        step = trainer.step if trainer else 0
        status, message = "cancelled", f"Cancelled at step {step}; resume continues from there."
    except torch.OutOfMemoryError:
        _write_traceback(run)
        status, message, extra = _out_of_memory(run, config, trainer)
    except SdtuneError as err:
        _write_traceback(run)
        status, message = "failed", str(err)
    except Exception as err:  # noqa: BLE001 - a crash must still end the run with a status and a log
        _write_traceback(run)
        if is_disk_full(err):
            status, message = "failed", str(DiskFull(run.path, "writing the run's files"))
        else:
            status, message = "failed", f"Unexpected error: {type(err).__name__}: {err} (details in train.log)"
            log.exception("training crashed")
    finally:
        del trainer
        torch.backends.cuda.enable_cudnn_sdp(cudnn_attention)
        free_memory()  # give cached GPU memory back so the next run (or generation) can start
    try:
        if events is not None:
            events.emit("status", status=status, message=message, **extra)
    except OSError as err:
        if not is_disk_full(err):
            raise
        raise DiskFull(run.path, f"writing the run's final status ({status}: {message})") from None
    finally:
        if heartbeat is not None:
            heartbeat.stop()
        if events is not None and hasattr(events, "close"):
            events.close()
    return status


def _log_start(events: EventLog, age_at_entry: float | None, imports_s: float) -> None:
    """How long the process took to get here (the start-up a user waits through before loading), in the run's log
    beside the other set-up phases: before train() (Python, torch and peft, the command's own checks), the
    trainer's imports (diffusers, transformers, accelerate: seconds that every diffusers-based trainer pays), and
    the rest (validation, the run folder, TensorBoard's writer). Under `accelerate launch` the launcher's own
    start is not counted."""
    from sdtune_ui.train.speed import process_age_s

    age = process_age_s()
    if age is None or age_at_entry is None:
        return
    rest = max(age - age_at_entry - imports_s, 0.0)
    events.emit("log", level="info", message=f"Started in {age:.1f} s ({age_at_entry:.1f} s to the trainer, "
                                             f"{imports_s:.1f} s importing diffusers and the trainer, {rest:.1f} s "
                                             "preparing the run)",
                phase="start", seconds=round(age, 3), before_trainer_s=round(age_at_entry, 3),
                imports_s=round(imports_s, 3), preparing_s=round(rest, 3))


def _refuse_if_owned_elsewhere(run: RunDir) -> None:
    """A folder a live process is training (or still stopping) is refused; one whose owner died is marked
    interrupted. Runs from before owner files name no owner: trusted, as before."""
    if run.status() in ACTIVE and mark_if_interrupted(run):
        return
    if not run.owner_alive():
        return
    raise RunBusy(f"{run.path} is being trained right now by {run.owner_text()}. Cancel that run first "
                  f"(the app's Cancel, or create the file {run.cancel_path}) and let it stop, or choose another "
                  "--output.")


def _claim(run: RunDir) -> Any:
    """Create the folder and own it (owner.json, heartbeat); a full disk says so in one line."""
    try:
        run.create()
        run.clear_cancel()
        return run.claim()
    except OSError as err:
        if is_disk_full(err):
            raise DiskFull(run.path, "creating the run's files") from None
        raise


@contextlib.contextmanager
def _interrupt_on_sigterm(run: RunDir) -> Iterator[None]:
    """SIGTERM (docker stop, a Space restarting) asks the run to stop at its next step with a checkpoint."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may install handlers (the app forwards its own SIGTERM: ui/launcher.py)
        return
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, lambda signum, frame: run.request_interrupt())
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def _out_of_memory(run: RunDir, config: TrainConfig, trainer: Any) -> tuple[str, str, dict]:
    """The failed status after an out-of-memory error: the next memory-saving setting and how to resume with it."""
    from sdtune_ui.train.memory import next_memory_saving

    native = getattr(trainer, "resolution", None)
    fallback = next_memory_saving(config, native)
    if fallback is None:
        return "failed", (f"{OOM_ADVICE} These settings already use every memory saver this trainer has: use "
                          "LoRA instead of full fine-tuning, or a GPU with more memory."), {}
    message = (f"The GPU ran out of memory. Next memory-saving setting: {fallback.description}. Resume with it "
               f"({run.resume_point()}): python -m sdtune_ui train --output {run.path} "
               "--resume-with-memory-fallback, or the app's \"Resume with less memory\" button. Further savers, "
               "in order: a smaller batch size (with gradient accumulation), 8-bit AdamW, a lower resolution, "
               "or LoRA instead of full fine-tuning.")
    return "failed", message, {"memory_fallback": fallback.changes}


def _write_traceback(run: RunDir) -> None:
    try:
        with open(run.log_path, "a", encoding="utf-8") as handle:
            handle.write(traceback.format_exc() + "\n")
    except OSError:
        log.exception("could not write %s", run.log_path)  # e.g. the disk is full: the status says so
