"""Small pieces every tab uses: errors as readable messages, waiting in the GPU queue with a visible position."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator
from typing import Any

import gradio as gr

from sdtune_ui.errors import SdtuneError


def user_errors(fn: Callable) -> Callable:
    """Show the core's errors (written for a person) as a gr.Error message instead of a stack trace."""
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen_wrapper(*args: Any, **kwargs: Any) -> Iterator:
            try:
                yield from fn(*args, **kwargs)
            except SdtuneError as err:
                raise gr.Error(str(err), print_exception=False) from None
        return gen_wrapper

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SdtuneError as err:
            raise gr.Error(str(err), print_exception=False) from None
    return wrapper


def wait_in_queue(jobs: Any, label: str, fn: Callable[[], Any], poll_s: float = 0.5) -> Iterator[str | Any]:
    """Queue `fn` on the GPU queue; yield a line with the queue position while waiting, then the result.

    The last item yielded is `("done", result)`; the job's exception is raised here.
    """
    job = jobs.submit(label, fn)
    while not job.wait(poll_s):
        ahead = jobs.position(job)
        yield f"{label}: waiting for the GPU ({ahead} job(s) ahead)..." if ahead else f"{label}: running..."
    if job.error is not None:
        raise job.error
    yield ("done", job.result)


# Words of field names spelled as people write them.
_ACRONYMS = {word.lower(): word for word in ("LR", "EMA", "TI", "SNR", "LoRA", "Adam")}


def humanize(name: str) -> str:
    """`max_train_steps` -> `Max train steps` (a widget label from a config field name)."""
    words = [_ACRONYMS.get(word, word) for word in name.split("_")]
    text = " ".join(words)
    return text[:1].upper() + text[1:]
