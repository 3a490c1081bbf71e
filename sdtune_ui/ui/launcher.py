"""`python app.py`: parse the launch flags, refuse unsafe ones, build the context and the app, launch.

Flags are checked before gradio or torch are imported, so a refused launch fails fast with a message.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path
from typing import Any

from sdtune_ui.app.uploads import DEFAULT_CAP, DEFAULT_MAX_AGE_S, parse_size

DEFAULT_MAX_FILE_SIZE = "500mb"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python app.py", description="The sdtune_ui app (Gradio).")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                        help="Address to listen on (0.0.0.0 to reach it from other machines).")
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    parser.add_argument("--share", action="store_true", help="Open a public gradio.live link (needs --auth).")
    auth = parser.add_mutually_exclusive_group()
    auth.add_argument("--auth", help="user:password required to open the app.")
    auth.add_argument("--auth-file", help="File with one user:password per line.")
    parser.add_argument("--public", action="store_true",
                        help="Run as a public app (as --share and a Space do) when you expose it yourself, e.g. "
                             "behind a reverse proxy: no host folders or pickle files, and the public limits on "
                             "every setting.")
    parser.add_argument("--allow-hub-import", action="store_true", default=None,
                        help="Let a public app's Dataset tab import Hub datasets (the server downloads their files; "
                             "at most 200 images are kept). Also SDTUNE_ALLOW_HUB_IMPORT=1.")
    parser.add_argument("--share-without-auth", action="store_true",
                        help="Allow --share without a password: anyone with the link can use your GPU and data.")
    parser.add_argument("--data-dir", default=None,
                        help="Where datasets, runs and exports live (default: $SDTUNE_DATA_DIR, /data/sdtune on a "
                             "Space with persistent storage, else ./data). Only this folder is served.")
    parser.add_argument("--admin", action="append", default=[], metavar="USER",
                        help="With --auth-file: this user works in the data folder itself and sees every user's "
                             "runs and datasets (repeat for several admins).")
    parser.add_argument("--shared-workspace", action="store_true",
                        help="With --auth-file: one workspace for all users (each sees, cancels and deletes the "
                             "others' runs and datasets) instead of one per user.")
    parser.add_argument("--max-file-size", default=DEFAULT_MAX_FILE_SIZE, help="Largest upload, e.g. 500mb.")
    parser.add_argument("--upload-cap", default=DEFAULT_CAP,
                        help="Most the upload folder may hold in all, e.g. 2gb: older uploads are removed first "
                             f"(uploads are removed once handled, and any left after {DEFAULT_MAX_AGE_S / 3600:g} "
                             "hour).")
    parser.add_argument("--resume-interrupted", action="store_true",
                        help="On start, queue again every run that was interrupted (its process killed, or the "
                             "app stopped by SIGTERM); they continue from their last checkpoint.")
    return parser


class LaunchError(Exception):
    """A flag combination we refuse; the message says what to do instead."""


def parse_auth(args: argparse.Namespace) -> list[tuple[str, str]] | None:
    pairs: list[str] = []
    if args.auth:
        pairs = [args.auth]
    elif args.auth_file:
        try:
            lines = Path(args.auth_file).read_text(encoding="utf-8").splitlines()
        except OSError as err:
            raise LaunchError(f"Cannot read --auth-file {args.auth_file}: {err.strerror or err}.") from None
        pairs = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    credentials = []
    for pair in pairs:
        user, sep, password = pair.partition(":")
        if not sep or not user or not password:
            raise LaunchError("Credentials must look like user:password (an auth file has one per line).")
        credentials.append((user, password))
    if args.auth_file and not credentials:
        raise LaunchError(f"--auth-file {args.auth_file} holds no user:password line.")
    return credentials or None


def check_args(args: argparse.Namespace) -> list[tuple[str, str]] | None:
    credentials = parse_auth(args)
    if args.share and not credentials and not args.share_without_auth:
        raise LaunchError("--share makes the app public: anyone with the link could use your GPU, read your "
                          "datasets and runs. Add --auth user:password (or --auth-file), or pass "
                          "--share-without-auth if you really want an open link.")
    users = {user for user, _ in credentials or []}
    unknown = sorted(set(getattr(args, "admin", []) or []) - users)
    if unknown:
        raise LaunchError(f"--admin {unknown[0]}: no such user in --auth-file (admins are users of the app).")
    try:
        parse_size(getattr(args, "upload_cap", DEFAULT_CAP))
    except ValueError as err:
        raise LaunchError(f"--upload-cap: {err}.") from None
    return credentials


def workspaces_for(args: argparse.Namespace, data_dir: Path) -> Any:
    """One workspace per user with --auth-file (unless --shared-workspace), else one shared workspace."""
    from sdtune_ui.app.workspace import Workspaces

    per_user = bool(getattr(args, "auth_file", None)) and not getattr(args, "shared_workspace", False)
    return Workspaces(data_dir, per_user=per_user, admins=frozenset(getattr(args, "admin", []) or []))


def upload_folder_for(args: argparse.Namespace, data_dir: Path) -> Any:
    """The app's upload folder: $GRADIO_TEMP_DIR when set, else a temporary folder of this app's own (set as
    GRADIO_TEMP_DIR before any component is made, so Gradio puts uploads and served copies there)."""
    from sdtune_ui.app.uploads import UploadFolder, app_upload_folder

    folder = Path(os.environ.get("GRADIO_TEMP_DIR") or app_upload_folder(data_dir))
    os.environ["GRADIO_TEMP_DIR"] = str(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return UploadFolder(folder, max_bytes=parse_size(getattr(args, "upload_cap", DEFAULT_CAP)))


def create(args: argparse.Namespace, jobs: Any = None) -> tuple[Any, Any]:
    """The context and the Blocks for these flags (not launched)."""
    from sdtune_ui.app.jobs import JobQueue
    from sdtune_ui.app.ops import default_data_dir, release_generation_memory, release_orphaned_runs
    from sdtune_ui.ui.app import build_app, options_for
    from sdtune_ui.ui.context import AppContext

    data_dir = Path(args.data_dir).expanduser() if args.data_dir else default_data_dir()
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    jobs = jobs or JobQueue(before_training=release_generation_memory)
    ctx = AppContext(data_dir=data_dir, jobs=jobs, is_space=bool(os.environ.get("SPACE_ID")),
                     workspaces=workspaces_for(args, data_dir), uploads=upload_folder_for(args, data_dir))
    for runs_dir in ctx.workspaces.whole().run_roots():  # the data folder's workspace sees every user's runs
        release_orphaned_runs(runs_dir)
    if getattr(args, "resume_interrupted", False):
        resume_interrupted(ctx)
    demo = build_app(ctx, options_for(ctx, share=args.share or getattr(args, "public", False),
                                      allow_hub_import=getattr(args, "allow_hub_import", None)))
    return ctx, demo


def resume_interrupted(ctx: Any) -> list[str]:
    """Queue every interrupted run again (--resume-interrupted); a run that cannot resume is left as it is."""
    import logging

    from sdtune_ui.app.ops import interrupted_runs, resume_run
    from sdtune_ui.errors import SdtuneError

    queued = []
    for runs_dir in ctx.workspaces.whole().run_roots():
        for run_id in interrupted_runs(runs_dir):
            try:
                resume_run(ctx.jobs, runs_dir, run_id)
                queued.append(run_id)
            except SdtuneError as err:
                logging.getLogger(__name__).warning("Not resuming %s: %s", run_id, err)
    return queued


def stop_runs_on_sigterm(jobs: Any) -> None:
    """SIGTERM (docker stop, a Space restarting): the running training stops at its next step with a checkpoint
    and ends "interrupted" (resumable), then the server closes. Without this the process would just die."""
    from sdtune_ui.runs import RunDir

    def handler(signum: int, frame: Any) -> None:
        for job in jobs.active():
            if job.run_dir is not None:
                RunDir(job.run_dir).request_interrupt()
        raise KeyboardInterrupt  # ends Gradio's wait loop; main() then waits for the queue to stop

    signal.signal(signal.SIGTERM, handler)


def check_port(host: str, port: int) -> None:
    """Refuse a port another program holds, with the flag to use instead (before anything is built)."""
    import socket

    with socket.socket() as sock:
        try:
            sock.bind((host if host not in ("", "0.0.0.0") else "0.0.0.0", port))
        except OSError:
            raise LaunchError(f"Port {port} is in use (is the app already running?). Start it on another port, "
                              f"e.g. python app.py --port {port + 1}.") from None


def launch(argv: list[str] | None = None, *, prevent_thread_lock: bool = False, **launch_kwargs: Any) -> tuple:
    """Parse, check, build and launch; returns (ctx, demo, local_url). Raises LaunchError for refused flags."""
    args = build_parser().parse_args(argv)
    credentials = check_args(args)
    check_port(args.host, args.port)
    from starlette.middleware import Middleware

    from sdtune_ui import quiet
    from sdtune_ui.app.logins import LoginThrottle
    from sdtune_ui.app.uploads import Sweeper
    from sdtune_ui.ui.app import CSS
    from sdtune_ui.ui.server import ServerGuard, login_check

    quiet.install()
    ctx, demo = create(args)
    if not prevent_thread_lock:
        stop_runs_on_sigterm(ctx.jobs)
    demo.queue(default_concurrency_limit=4)
    silent = launch_kwargs.pop("quiet", False)
    guard = Middleware(ServerGuard, uploads=ctx.uploads,
                       private_root=ctx.data_dir if ctx.workspaces.per_user else None)
    sweeper = Sweeper(ctx.uploads).start()
    ctx.uploads.sweep()  # what an earlier run of the app left
    try:
        _, local_url, share_url = demo.launch(
            server_name=args.host, server_port=args.port, share=args.share,
            auth=login_check(credentials, LoginThrottle()) if credentials else None,
            # Files of the data folder may be shown (Gradio serves its copies; the upload folder is Gradio's own).
            allowed_paths=[str(ctx.data_dir)], max_file_size=args.max_file_size, css=CSS,
            app_kwargs={"middleware": [guard]},
            # Gradio's own start-up lines suggest `share=True` in code; we print ours (the flag is --share).
            quiet=True, prevent_thread_lock=True, **launch_kwargs)
    except OSError as err:  # the port was taken between the check and the launch
        sweeper.stop()
        ctx.jobs.close(timeout=5)
        raise LaunchError(f"Cannot listen on {args.host}:{args.port} ({err}). Try another --port.") from None
    ctx.closers.append(sweeper.stop)
    if not silent:
        print(f"sdtune_ui is running at {local_url} (data in {ctx.data_dir})")
        print(f"Public link: {share_url}" if share_url else
              "Local only; --share --auth user:password opens a public link. Ctrl+C stops the app.")
    if not prevent_thread_lock:
        demo.block_thread()  # until Ctrl+C
    return ctx, demo, local_url


def main(argv: list[str] | None = None) -> int:
    try:
        ctx, _, _ = launch(argv)  # blocks until the server stops (Ctrl+C)
    except LaunchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    # Stop a running job at its next step so it leaves a checkpoint and a "cancelled" status to resume from,
    # instead of dying mid-step with a run folder that says "running" forever.
    ctx.close(timeout=120)
    return 0
