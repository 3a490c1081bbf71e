"""What the app's web server does around Gradio's own routes (an ASGI middleware given to Gradio's FastAPI app):

- logins: the password check knows the caller's address (for the brake on wrong passwords, app/logins.py) and
  a braked login is answered 429 with the time to wait;
- uploads: before each upload, old files go and the upload folder makes room under its cap (app/uploads.py);
- workspaces: with a workspace per user, the data folder is never served by path (`/file=...`): every file the
  app shows reaches the browser as Gradio's copy, so nobody can fetch another user's files by guessing paths.
"""

from __future__ import annotations

import contextvars
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from sdtune_ui.app.logins import LoginThrottle, TooManyAttempts, password_checker
from sdtune_ui.app.uploads import UploadFolder

_CLIENT: contextvars.ContextVar[str] = contextvars.ContextVar("sdtune_client", default="")
Scope = dict[str, Any]
ASGIApp = Callable[[Scope, Any, Any], Awaitable[None]]


def client_address(scope: Scope) -> str:
    """The caller's address: the first X-Forwarded-For hop when a proxy (a share link, a Space) says one, else
    the socket's peer. A forged header only moves the caller to another per-address count; the per-user count
    still brakes it (app/logins.py)."""
    for name, value in scope.get("headers") or []:
        if name == b"x-forwarded-for" and value.strip():
            return value.decode("latin-1").split(",")[0].strip()
    client = scope.get("client")
    return str(client[0]) if client else ""


class ServerGuard:
    """The ASGI middleware (Starlette's `Middleware(ServerGuard, ...)` in Gradio's `app_kwargs`)."""

    def __init__(self, app: ASGIApp, *, uploads: UploadFolder | None = None, private_root: Path | None = None):
        self.app, self.uploads = app, uploads
        self.private_root = private_root.resolve() if private_root is not None else None

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path, method = scope.get("path", ""), scope.get("method", "")
        if method == "POST" and path.rstrip("/").endswith("/upload") and self.uploads is not None:
            import anyio.to_thread

            await anyio.to_thread.run_sync(self.uploads.sweep, _content_length(scope))
        if self.private_root is not None and self._serves_private_file(path):
            await _respond(send, 403, "This file is not served here: open it from the app.")
            return
        token = _CLIENT.set(client_address(scope))
        try:
            await self.app(scope, receive, send)
        finally:
            _CLIENT.reset(token)

    def _serves_private_file(self, path: str) -> bool:
        for marker in ("/file=", "/file/"):
            if marker in path:
                target = unquote(path.split(marker, 1)[1])
                try:
                    return Path(target).resolve().is_relative_to(self.private_root)
                except (OSError, ValueError):
                    return True
        return False


def login_check(credentials: list[tuple[str, str]], throttle: LoginThrottle) -> Callable[[str, str], bool]:
    """Gradio's `auth` callable: the password check with the brake; a braked login is answered 429."""
    check = password_checker(credentials, throttle, _CLIENT.get)

    def auth(username: str, password: str) -> bool:
        from fastapi import HTTPException

        try:
            return check(username, password)
        except TooManyAttempts as err:
            raise HTTPException(status_code=429, detail=str(err),
                                headers={"Retry-After": str(int(err.wait_s) + 1)}) from None

    return auth


def _content_length(scope: Scope) -> int:
    for name, value in scope.get("headers") or []:
        if name == b"content-length":
            try:
                return max(0, int(value))
            except ValueError:
                return 0
    return 0


async def _respond(send: Any, status: int, text: str) -> None:
    body = text.encode()
    headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
