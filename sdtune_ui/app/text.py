"""Text shown in the app, kept as the user wrote it.

Gradio renders status lines and pop-ups as Markdown/HTML, where `<sks>` is a tag and disappears. Every text
that may hold user input (prompts, tokens, run names, error messages quoting them) goes through these.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

from sdtune_ui.errors import ConfigError

_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]|~])")


def escape_html(text: object) -> str:
    return html.escape(str(text), quote=False)


def escape_markdown(text: object) -> str:
    """`text` shown literally inside Markdown: HTML escaped, Markdown's own characters backslashed."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", escape_html(text))


def code(text: object) -> str:
    """Inline code in Markdown that shows any text literally (backticks inside are avoided)."""
    value = str(text).replace("`", "'")
    return f"`{value}`" if value.strip() else "` `"


def error_html(err: BaseException) -> str:
    """An error for a pop-up: one line per field for settings errors, the field name in bold; all escaped."""
    if isinstance(err, ConfigError) and err.field_errors:
        lines = [f"<b>{escape_html(name)}</b>: {escape_html(message)}" for name, message in err.field_errors.items()]
        head = "Invalid setting:" if len(lines) == 1 else f"{len(lines)} settings need a change:"
        return head + "<br>" + "<br>".join(lines)
    return "<br>".join(escape_html(line) for line in str(err).splitlines())


def error_markdown(err: BaseException) -> str:
    """The same for a Markdown status line (e.g. the live validation under the Start button)."""
    if isinstance(err, ConfigError) and err.field_errors:
        return "\n".join(f"- **{escape_markdown(name)}**: {escape_markdown(message)}"
                         for name, message in err.field_errors.items())
    return escape_markdown(str(err))


def relative_paths(text: object, *folders: str | Path) -> str:
    """`text` with each folder's absolute path written relative to it ("runs/x/train.log", "." for the folder
    itself): replies and messages never show where on the server the app keeps its files."""
    out = str(text)
    roots = {str(Path(folder)): None for folder in folders} | {str(Path(folder).resolve()): None for folder in folders}
    for root in sorted(roots, key=len, reverse=True):  # a workspace inside the data folder goes first
        out = out.replace(f"{root}/", "").replace(root, ".")
    return out
