"""The training core: `train(config, run_dir)` runs one training run and owns its run folder."""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

from sdtune_ui.config import TrainConfig
from sdtune_ui.errors import Cancelled, SdtuneError
from sdtune_ui.runs import EventLog, RunDir, is_main_process
from sdtune_ui.train.setup import apply_dataset_info

log = logging.getLogger(__name__)

OOM_ADVICE = ("The GPU ran out of memory. Try, in this order: gradient checkpointing, a smaller batch "
              "size (with gradient accumulation), a lower resolution, 8-bit AdamW, or LoRA instead of "
              "full fine-tuning.")


def train(config: TrainConfig, run_dir: str | Path, *, events: EventLog | None = None,
          cancel: Callable[[], bool] | None = None) -> str:
    """Validate, train, save; return the final status: completed, cancelled or failed.

    The run folder tells the whole story (config.json, events.jsonl, checkpoints, output). A run folder
    that already has checkpoints is resumed from the last complete one. Errors the user can fix are
    reported as a `failed` status event with a readable message; the traceback goes to train.log.
    """
    from sdtune_ui.train.speed import start_cuda_in_background

    start_cuda_in_background()  # overlaps the CUDA start with the imports below (seconds each)
    from diffusers.training_utils import free_memory

    from sdtune_ui.train.trainer import Trainer

    run = RunDir(Path(run_dir))
    main = is_main_process()
    if main:
        run.create()
        run.clear_cancel()
    events = events or (run.events() if main else None)
    trainer = None
    try:
        config = apply_dataset_info(config).validate()
        if main:
            config.save(run.config_path)
        trainer = Trainer(config, run, events=events, cancel=cancel)
        if events is not None:
            events.emit("status", status="starting", method=config.method, model=config.model)
        trainer.setup()
        trainer.fit()
        trainer.validate()
        trainer.save_output()
        status, message = "completed", "Training finished."
    except Cancelled:
        step = trainer.step if trainer else 0
        status, message = "cancelled", f"Cancelled at step {step}; resume continues from there."
    except torch.OutOfMemoryError:
        _write_traceback(run)
        status, message = "failed", OOM_ADVICE
    except SdtuneError as err:
        _write_traceback(run)
        status, message = "failed", str(err)
    except Exception as err:  # noqa: BLE001 - a crash must still end the run with a status and a log
        _write_traceback(run)
        status, message = "failed", f"Unexpected error: {type(err).__name__}: {err} (details in train.log)"
        log.exception("training crashed")
    finally:
        del trainer
        free_memory()  # give cached GPU memory back so the next run (or generation) can start
    if events is not None:
        events.emit("status", status=status, message=message)
    return status


def _write_traceback(run: RunDir) -> None:
    with open(run.log_path, "a", encoding="utf-8") as handle:
        handle.write(traceback.format_exc() + "\n")
