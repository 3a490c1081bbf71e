"""The one GPU job queue of the app: training runs, captioning, class images and generation take turns.

One worker thread runs one job at a time, first in, first out. Nothing here holds the truth about a
training run: a queued run already owns its run folder (config.json + a "queued" status event), so the
Runs list, a reloaded page and a restarted app all see it. Cancelling goes through the run folder's
CANCEL file (which the trainer checks every step) plus an in-process flag.

A job is just a callable with a label and, for training, a run folder. A later job kind (a multi-GPU
`accelerate launch` subprocess) plugs in through `submit_subprocess_training`, watched through the same
run folder and cancelled through the same CANCEL file.

Every job says whose it is (the page that asked for it, the logged-in user) and how far it got (`report`), so
the app can show one queue to everyone and let a job be cancelled from any page; a generation or grid asked
for by a page that has been closed is cancelled (`cancel_page_jobs`): nobody is left to see its images.
"""

from __future__ import annotations

import collections
import itertools
import logging
import os
import shlex
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from sdtune_ui.config import TrainConfig
from sdtune_ui.errors import Cancelled
from sdtune_ui.runs import FINISHED, RunDir, interrupted_message

log = logging.getLogger(__name__)
T = TypeVar("T")

TrainFn = Callable[..., str]
QUEUED, RUNNING, DONE = "queued", "running", "done"


def _default_train(config: TrainConfig, run_dir: Path, **kwargs: Any) -> str:
    from sdtune_ui.train import train  # imported on first use: torch/diffusers are slow to import

    return train(config, run_dir, **kwargs)


@dataclass(eq=False)
class Job:
    """One unit of GPU work. `target(job)` runs in the worker thread and returns the job's result."""

    label: str
    target: Callable[[Job], Any]
    run_dir: Path | None = None  # set for training jobs: the run folder that tells their story
    kind: str = "call"           # "call" | "train" | "subprocess"
    id: int = 0
    state: str = QUEUED
    result: Any = None
    error: BaseException | None = None
    cancel_event: threading.Event = field(default_factory=threading.Event)
    done_event: threading.Event = field(default_factory=threading.Event)
    submitted: float = field(default_factory=time.time)
    owner: str = ""                # the page (browser session) that asked for it; "" for API callers
    user: str = ""                 # the logged-in user, when the app has passwords
    stops_with_page: bool = False  # generation and grids: cancelled when the page that asked is closed
    started: float | None = None   # when it left the queue
    done_count: int = 0            # progress reported by the job itself (`report`)
    total_count: int = 0
    unit: str = ""                 # what is counted: "image", "step"

    @property
    def cancelled(self) -> bool:
        return self.cancel_event.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self.done_event.wait(timeout)

    def report(self, done: int, total: int, unit: str = "image") -> None:
        """Progress of a running call job ("image 3 of 12"), shown in the queue with an ETA."""
        self.done_count, self.total_count, self.unit = int(done), int(total), unit

    def check_cancelled(self) -> None:
        """Raise Cancelled when someone cancelled this job (long jobs call it between units of work)."""
        if self.cancelled:
            raise Cancelled(f"{self.label}: cancelled.")

    def eta_s(self, now: float | None = None) -> float | None:
        """Seconds left, from the reported progress and the time spent so far (None before any progress)."""
        if self.started is None or not self.done_count or not self.total_count:
            return None
        elapsed = (now or time.time()) - self.started
        return elapsed / self.done_count * max(0, self.total_count - self.done_count)


class JobQueue:
    """FIFO queue with one worker thread (implements the GpuQueue protocol of sdtune_ui.ui.context)."""

    def __init__(self, train_fn: TrainFn | None = None, *, before_training: Callable[[], None] | None = None,
                 name: str = "sdtune-gpu-jobs"):
        # train_fn is injectable so the queue's behaviour can be tested without loading any model.
        self._train_fn = train_fn or _default_train
        # Called before each training run, e.g. to drop the Generate tab's cached pipeline from the GPU.
        self._before_training = before_training
        self._pending: collections.deque[Job] = collections.deque()
        self._current: Job | None = None
        self._cond = threading.Condition()
        self._ids = itertools.count(1)
        self._closed = False
        self._worker = threading.Thread(target=self._loop, name=name, daemon=True)
        self._worker.start()

    # ------------------------------------------------------------------ submitting
    def submit(self, label: str, fn: Callable[[], Any], *, owner: str = "", user: str = "",
               stops_with_page: bool = False) -> Job:
        """Queue `fn` (no arguments); returns at once. Watch `position(job)`, wait with `job.wait()`."""
        return self.submit_job(label, lambda job: fn(), owner=owner, user=user, stops_with_page=stops_with_page)

    def submit_job(self, label: str, target: Callable[[Job], Any], *, owner: str = "", user: str = "",
                   stops_with_page: bool = False) -> Job:
        """Queue `target(job)`: it may `job.report(k, n)` its progress and `job.check_cancelled()` between steps."""
        return self._enqueue(Job(label=label, target=target, owner=owner, user=user,
                                 stops_with_page=stops_with_page))

    def run_sync(self, label: str, fn: Callable[[], T]) -> T:
        """Wait for our turn, run `fn`, return its result; its exception is raised here."""
        if threading.current_thread() is self._worker:
            return fn()  # called from inside a running job (e.g. training makes class images): no deadlock
        job = self.submit(label, fn)
        job.wait()
        if job.error is not None:
            raise job.error
        return job.result

    def submit_training(self, config: TrainConfig, run_dir: str | Path, *, label: str | None = None,
                        owner: str = "", user: str = "") -> Job:
        """Queue a training run (new, or resumed: the core continues from the folder's last checkpoint)."""
        run = self._prepare_run(config, run_dir)

        def target(job: Job) -> str:
            return self._train_fn(config, run.path, cancel=job.cancel_event.is_set)

        return self._enqueue(Job(label=label or f"train {run.path.name}", target=target, run_dir=run.path,
                                 kind="train", owner=owner, user=user))

    def submit_subprocess_training(self, config: TrainConfig, run_dir: str | Path, num_processes: int = 1,
                                   *, mode: str = "ddp", command: list[str] | None = None,
                                   poll_s: float = 0.5, owner: str = "", user: str = "") -> Job:
        """Queue a run in a child process (`accelerate launch` for several GPUs), watched via its run folder.

        `command` replaces the launcher (tests); by default it is `python -m sdtune_ui train` for one
        process and `accelerate launch --config_file <mode's config> --num_processes N -m sdtune_ui train`
        for more.
        """
        run = self._prepare_run(config, run_dir)
        config_path = run.path / "launch_config.json"
        config.save(config_path)
        argv = command or launch_command(config_path, run.path, num_processes, config.mixed_precision, mode)

        def target(job: Job) -> str:
            return _run_subprocess(argv, run, job, poll_s)

        return self._enqueue(Job(label=f"train {run.path.name} ({num_processes} process(es), {mode})", target=target,
                                 run_dir=run.path, kind="subprocess", owner=owner, user=user))

    # ------------------------------------------------------------------ watching
    def position(self, job: Job) -> int | None:
        """0 while running, N when N jobs are ahead of it in the queue, None once finished."""
        with self._cond:
            if job is self._current:
                return 0
            for index, queued in enumerate(self._pending):
                if queued is job:
                    return index + (1 if self._current is not None else 0)
        return None

    def active(self) -> list[Job]:
        """The running job (first) and the queued ones, in order."""
        with self._cond:
            return ([self._current] if self._current else []) + list(self._pending)

    def find(self, run_dir: str | Path) -> Job | None:
        """The queued or running job of a run folder, if this queue has one."""
        target = Path(run_dir).resolve()
        return next((job for job in self.active() if job.run_dir and job.run_dir.resolve() == target), None)

    def run_position(self, run_dir: str | Path) -> int | None:
        job = self.find(run_dir)
        return self.position(job) if job else None

    def job(self, job_id: int) -> Job | None:
        """The queued or running job with this id."""
        return next((job for job in self.active() if job.id == job_id), None)

    # ------------------------------------------------------------------ cancelling
    def cancel(self, run_dir: str | Path) -> bool:
        """Ask a run to stop: drop it if still queued, else flag it (it stops within one step).

        Also works for a run this app did not start (CLI, another process): the CANCEL file reaches it.
        Returns False when the folder is not a run.
        """
        run = RunDir(Path(run_dir))
        if not run.config_path.exists():
            return False
        job = self.find(run.path)
        if job is not None:
            self.cancel_job(job)
        else:
            run.request_cancel()
        return True

    def cancel_job(self, job: Job) -> None:
        job.cancel_event.set()
        with self._cond:
            dropped = job in self._pending
            if dropped:
                self._pending.remove(job)
        if job.run_dir is not None:
            run = RunDir(job.run_dir)
            if dropped:
                run.events().emit("status", status="cancelled", message="Cancelled before it started.")
            else:
                run.request_cancel()
        if dropped:
            job.state = DONE
            job.result = "cancelled"
            if job.kind == "call":
                # Whoever waits for its result learns that there is none.
                job.error = Cancelled(f"{job.label}: cancelled before it started.")
            job.done_event.set()

    def cancel_page_jobs(self, owner: str) -> list[Job]:
        """Cancel the generation jobs a closed page asked for (training and captioning carry on)."""
        if not owner:
            return []
        mine = [job for job in self.active() if job.owner == owner and job.stops_with_page]
        for job in mine:
            self.cancel_job(job)
        return mine

    def close(self, timeout: float | None = 5.0) -> None:
        """Stop taking jobs, cancel the queued ones and the running one, and wait for the worker."""
        with self._cond:
            self._closed = True
            jobs = list(self._pending) + ([self._current] if self._current else [])
        for job in jobs:
            self.cancel_job(job)
        with self._cond:
            self._cond.notify_all()
        self._worker.join(timeout)

    # ------------------------------------------------------------------ internals
    def _prepare_run(self, config: TrainConfig, run_dir: str | Path) -> RunDir:
        from sdtune_ui.train.resume import resume_changes
        from sdtune_ui.train.setup import apply_dataset_info

        # A bad setting is reported to the caller now, not after waiting in the queue. Validated as the core
        # will see it: a DreamBooth folder's dataset_info.json may supply the instance prompt. A resume with
        # settings its checkpoints cannot continue with is refused before anything is written.
        config = apply_dataset_info(config).validate()
        resume_changes(RunDir(Path(run_dir)), config)
        run = RunDir(Path(run_dir)).create()
        run.clear_cancel()
        config.save(run.config_path)
        return run

    def _enqueue(self, job: Job) -> Job:
        with self._cond:
            if self._closed:
                raise RuntimeError("The job queue is closed.")
            job.id = next(self._ids)
            ahead = len(self._pending) + (1 if self._current is not None else 0)
            self._pending.append(job)
            if job.run_dir is not None:
                # Written under the lock, so the queued line always precedes the worker's first event.
                message = f"Waiting for the GPU ({ahead} job(s) ahead)." if ahead else "Queued: starting now."
                RunDir(job.run_dir).events().emit("status", status="queued", message=message, position=ahead)
            self._cond.notify_all()
        return job

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if not self._pending:
                    return
                job = self._pending.popleft()
                self._current = job
                job.state = RUNNING
            try:
                self._run(job)
            finally:
                with self._cond:
                    self._current = None
                    job.state = DONE
                job.done_event.set()

    def _run(self, job: Job) -> None:
        job.started = time.time()
        run = RunDir(job.run_dir) if job.run_dir is not None else None
        if run is not None and (job.cancelled or run.cancel_requested()):
            # Cancelled between leaving the queue and starting; the core would clear the CANCEL file.
            run.events().emit("status", status="cancelled", message="Cancelled before it started.")
            job.result = "cancelled"
            return
        try:
            if job.kind != "call" and self._before_training is not None:
                self._before_training()
            if job.kind == "call":
                job.check_cancelled()  # cancelled in the instant between leaving the queue and starting
            job.result = job.target(job)
        except Cancelled as err:
            job.error = err
        except Exception as err:  # noqa: BLE001 - one job's bug must never stop the worker (and the queue)
            job.error = err
            log.exception("job %s failed", job.label)
            if run is not None:
                _record_crash(run, err)


def _record_crash(run: RunDir, err: BaseException) -> None:
    """End a run whose job crashed outside the core's own handling with a failed status and a log."""
    from sdtune_ui.errors import SdtuneError
    from sdtune_ui.train import RunBusy

    try:
        with open(run.log_path, "a", encoding="utf-8") as handle:
            handle.write(traceback.format_exc() + "\n")
        if isinstance(err, RunBusy):
            return  # another process trains it right now: its folder is not ours to mark
        if run.status() not in FINISHED:
            message = str(err) if isinstance(err, SdtuneError) else \
                f"Unexpected error: {type(err).__name__}: {err} (details in train.log)"
            run.events().emit("status", status="failed", message=message)
    except OSError:  # e.g. the disk is full: the worker must survive it
        log.exception("could not record the failure of %s", run.path)


# accelerate config files shipped with the package, by multi-GPU mode (README: "Several GPUs").
ACCELERATE_CONFIGS = {"ddp": "ddp.yaml", "fsdp": "fsdp_full.yaml"}


def accelerate_config(mode: str) -> Path:
    return Path(__file__).resolve().parent.parent / "accelerate_configs" / ACCELERATE_CONFIGS[mode]


def launch_command(config_path: Path, run_dir: Path, num_processes: int, mixed_precision: str = "no",
                   mode: str = "ddp") -> list[str]:
    """The command line of a run in a child process (`accelerate launch` when several processes are used).

    The DDP config's `distributed_type: MULTI_GPU` is what makes accelerate start N processes: with GPUs one
    per GPU over NCCL, on a machine without GPUs N CPU processes over gloo (the trainer handles that case).
    """
    from sdtune_ui.train.setup import resolve_mixed_precision

    tail = ["-m", "sdtune_ui", "train", "--config", str(config_path), "--output", str(run_dir)]
    if num_processes <= 1:
        return [sys.executable, *tail]
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(accelerate_config(mode)),
            "--num_processes", str(num_processes), "--mixed_precision",
            resolve_mixed_precision(mixed_precision or "no"), *tail]


def _run_subprocess(argv: list[str], run: RunDir, job: Job, poll_s: float) -> str:
    """Run the child, forward a cancel through the CANCEL file, make sure the run ends with a status."""
    with open(run.path / "subprocess.log", "ab") as out:
        out.write(f"$ {shlex.join(argv)}\n".encode())  # the run folder records how it was launched
        out.flush()
        # NVLink multicast (NVLS) off: it can hang NCCL set-up on some multi-GPU hosts.
        env = {**os.environ, "NCCL_NVLS_ENABLE": os.environ.get("NCCL_NVLS_ENABLE", "0")}
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
        forwarded = False
        while process.poll() is None:
            if job.cancelled and not forwarded:
                run.request_cancel()  # the child stops at its next step and saves a checkpoint
                forwarded = True
            time.sleep(poll_s)
    status = run.status()
    if status not in FINISHED:
        # The child died without reporting (killed, crashed before the core started): say so in the folder.
        if process.returncode < 0:  # killed by a signal (SIGKILL, the OOM killer): resumable as it is
            status = "interrupted"
            message = interrupted_message(run, f"The training process was killed (signal {-process.returncode})")
        else:
            status = "failed"
            message = f"The training process exited with code {process.returncode} (see subprocess.log)."
        run.events().emit("status", status=status, message=message)
    return status
