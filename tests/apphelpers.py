"""Starting the real app on a free port inside the test process (shared by the app and browser tests)."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def running_app(data_dir: Path, *extra: str) -> Iterator[tuple[Any, str]]:
    """Launch `python app.py --data-dir DATA --port FREE` in this process (never with share); yields (ctx, url)."""
    from sdtune_ui.ui.launcher import launch

    # Offline and isolated even without the shared conftest (which normally sets both for the session).
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("SDTUNE_HOME", str(data_dir.parent / "sdtune_home"))
    ctx, demo, url = launch(["--data-dir", str(data_dir), "--port", str(free_port()), *extra],
                            prevent_thread_lock=True, quiet=True)
    try:
        yield ctx, url
    finally:
        ctx.close(timeout=30)
        demo.close()


def wait_for(predicate, timeout: float, interval: float = 0.5, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def get(url: str) -> httpx.Response:
    return httpx.get(url, timeout=10)
