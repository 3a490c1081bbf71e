"""Talking to the Hugging Face Hub with a user's token, safely: the one place that uploads.

The token is passed per call and lives only in memory: it is never written to disk (no `login()`, no git
credential), never logged, and scrubbed from every error message we raise, with the original exception
detached (`from None`) so a traceback cannot show it either.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sdtune_ui.errors import SdtuneError

log = logging.getLogger(__name__)

REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_TOKEN_SHAPE = re.compile(r"hf_[A-Za-z0-9]{8,}")

ApiFactory = Callable[[str], Any]


def scrub(text: str, token: str | None = None) -> str:
    """`text` with the token (and anything shaped like a Hugging Face token) replaced by `***`."""
    if token:
        text = text.replace(token, "***")
    return _TOKEN_SHAPE.sub("hf_***", text)


def check_repo_id(repo_id: str, example: str = "your-name/my-model") -> None:
    if not REPO_ID.match(repo_id or ""):
        raise SdtuneError(f"{repo_id!r} is not a Hub repo id; use the form '{example}'.")


def default_api(token: str) -> Any:
    from huggingface_hub import HfApi

    return HfApi(token=token)


def upload_folder(folder: Path, repo_id: str, *, repo_type: str, token: str, private: bool, commit_message: str,
                  api_factory: ApiFactory | None = None, allow_patterns: list[str] | None = None,
                  ignore_patterns: list[str] | None = None) -> str:
    """Create the repo if needed (new or existing), upload the folder, return the repo's URL.

    Every Hub or network error becomes one clean, token-free SdtuneError.
    """
    token = (token or "").strip()
    if not token:
        raise SdtuneError("Pushing needs a Hugging Face token with write access (huggingface.co/settings/tokens); "
                          "paste it for this push or set HF_TOKEN.")
    log.info("Pushing %s to the Hub %s repo %s", folder, repo_type, repo_id)
    try:
        api = (api_factory or default_api)(token)
        api.create_repo(repo_id=repo_id, repo_type=repo_type, private=private, exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type=repo_type,
                          commit_message=commit_message, allow_patterns=allow_patterns,
                          ignore_patterns=ignore_patterns)
    except Exception as err:  # noqa: BLE001 - every hub/network error becomes one clean, token-free message
        message = scrub(f"{type(err).__name__}: {err}", token)
        log.warning("Pushing to %s failed: %s", repo_id, message)
        raise SdtuneError(f"Could not push to {repo_id}: {message}. Check that the token has write access "
                          "and that the repo name is under your account or organisation.") from None
    prefix = "datasets/" if repo_type == "dataset" else ""
    return f"https://huggingface.co/{prefix}{repo_id}"
