"""Small pieces every tab uses: errors as readable messages, waiting in the GPU queue with a visible position,
who is asking (the page and the logged-in user)."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gradio as gr

from sdtune_ui.app.text import error_html, escape_markdown, relative_paths
from sdtune_ui.errors import Cancelled, SdtuneError


def user_errors(fn: Callable | None = None, *, status: tuple[int, int] | None = None,
                data_dir: Path | None = None) -> Callable:
    """Show the core's errors (written for a person) as a pop-up instead of a stack trace.

    For a generator handler, `status=(index, outputs)` names its status line: after a failure or a cancel
    that line says what happened (instead of a stale "waiting..."), and the other outputs keep their content.
    `data_dir`: paths inside it are shown relative to it (`errors_for(ctx)` passes the app's).
    """
    def _show(err: SdtuneError) -> gr.Error:
        # Gradio renders the pop-up as HTML: escaped, so `<sks>` survives; one line per field for settings errors.
        text = error_html(err)
        return gr.Error(relative_paths(text, data_dir) if data_dir is not None else text, print_exception=False)

    def decorate(fn: Callable) -> Callable:
        if inspect.isgeneratorfunction(fn):
            @functools.wraps(fn)
            def gen_wrapper(*args: Any, **kwargs: Any) -> Iterator:
                try:
                    yield from fn(*args, **kwargs)
                except Cancelled:
                    if status is None:
                        raise gr.Error("Cancelled.", print_exception=False) from None
                    yield status_row(status, "Cancelled.")
                except SdtuneError as err:
                    if status is not None:
                        message = relative_paths(err, data_dir) if data_dir is not None else str(err)
                        yield status_row(status, f"Stopped: {escape_markdown(message)}")
                    raise _show(err) from None
            return gen_wrapper

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except Cancelled:
                raise gr.Error("Cancelled.", print_exception=False) from None
            except SdtuneError as err:
                raise _show(err) from None
        return wrapper

    return decorate(fn) if fn is not None else decorate


def errors_for(ctx: Any) -> Callable:
    """`user_errors` for a tab of this app: the same, with paths shown relative to the app's data folder."""
    return functools.partial(user_errors, data_dir=ctx.data_dir)


def workspace_of(ctx: Any, request: gr.Request | None) -> Any:
    """The workspace (app/workspace.py) of the user a request comes from."""
    return ctx.workspace(page_of(request)[1])


def discard_upload(ctx: Any, *files: Any) -> int:
    """Remove uploaded files once handled (only files in Gradio's upload folder): a 300 MB zip must not stay."""
    from gradio.utils import get_upload_folder

    from sdtune_ui.app.uploads import discard_uploads

    paths = [item for entry in files for item in (entry if isinstance(entry, (list, tuple)) else [entry])]
    root = ctx.uploads.root if getattr(ctx, "uploads", None) is not None else get_upload_folder()
    return discard_uploads(paths, root)


def status_row(status: tuple[int, int], text: str) -> tuple:
    index, outputs = status
    row: list[Any] = [gr.skip()] * outputs
    row[index] = text
    return tuple(row)


def keep_on_failure(event: Any, outputs: list[Any]) -> Any:
    """After a failed action, leave its outputs as they were and clear their red "Error" badge.

    Gradio marks every output of a failed event with an error badge until that output is updated again,
    even after later successes elsewhere; an update that changes nothing clears it.
    """
    return event.failure(lambda: [gr.skip()] * len(outputs) if len(outputs) > 1 else gr.skip(), None, outputs,
                         show_progress="hidden", api_visibility="private")


def page_of(request: gr.Request | None) -> tuple[str, str]:
    """(the page's session id, the logged-in user or "") of a request."""
    if request is None:
        return "", ""
    return str(getattr(request, "session_hash", "") or ""), str(getattr(request, "username", "") or "")


def wait_in_queue(jobs: Any, label: str, fn: Callable[..., Any], poll_s: float = 0.5, *,
                  request: gr.Request | None = None, stops_with_page: bool = False,
                  takes_job: bool = False) -> Iterator[str | Any]:
    """Queue `fn` on the GPU queue; yield a line with the queue position while waiting, then the result.

    The last item yielded is `("done", result)`; the job's exception is raised here. `takes_job`: `fn(job)`
    may report progress and check for a cancel. Closing the generator early (the page went away) cancels
    the job when it stops with its page.
    """
    owner, user = page_of(request)
    target = fn if takes_job else (lambda job: fn())
    job = jobs.submit_job(label, target, owner=owner, user=user, stops_with_page=stops_with_page)
    try:
        yield from watch_job(jobs, job, label, poll_s)
    finally:
        if not job.done_event.is_set() and stops_with_page:
            jobs.cancel_job(job)
    yield ("done", job.result)


def watch_job(jobs: Any, job: Any, label: str, poll_s: float = 0.5) -> Iterator[str]:
    """A line about a queued job every `poll_s` until it ends: its place in the queue while it waits, then the
    progress it reports. The job's exception is raised here."""
    while not job.wait(poll_s):
        ahead = jobs.position(job)
        if ahead:
            yield f"{label}: waiting for the GPU ({ahead} job(s) ahead)..."
        elif job.total_count:
            yield f"{label}: {job.unit} {job.done_count} of {job.total_count}..."
        else:
            yield f"{label}: running..."
    if job.error is not None:
        raise job.error


# Words of field names spelled as people write them.
_ACRONYMS = {word.lower(): word for word in ("LR", "EMA", "TI", "SNR", "LoRA", "Adam")}


def humanize(name: str) -> str:
    """`max_train_steps` -> `Max train steps` (a widget label from a config field name)."""
    words = [_ACRONYMS.get(word, word) for word in name.split("_")]
    text = " ".join(words)
    return text[:1].upper() + text[1:]
