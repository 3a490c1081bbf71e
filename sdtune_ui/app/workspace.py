"""Workspaces: whose runs, datasets and exports a logged-in user sees and may touch.

Without per-user workspaces (no passwords, or --shared-workspace) everyone works in the data folder itself. With
them (--auth-file), each user works in `users/<name>/` of the data folder (its own runs/, datasets/, exports/) and
sees nothing else; an admin (--admin NAME) works in the data folder itself and sees every user's runs and datasets
too (another user's dataset is named `user/dataset`). Runs started from the CLI land in the data folder's runs/:
an admin's. No gradio here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

from sdtune_ui.errors import DatasetError, SdtuneError

USERS_FOLDER = "users"
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def user_folder(user: str) -> str:
    """The folder name of a user's workspace: the name itself when it is a plain name, else a cleaned name plus a
    short hash (so two names never share a folder)."""
    cleaned = _SAFE.sub("-", user).strip(".-")[:40]
    if cleaned == user and cleaned:
        return cleaned
    return f"{cleaned or 'user'}-{hashlib.sha1(user.encode()).hexdigest()[:8]}"


@dataclass(frozen=True)
class Workspace:
    data_dir: Path      # the app's data folder
    root: Path          # this workspace's folder: the data folder itself, or users/<name>/
    user: str = ""
    admin: bool = True  # sees every workspace

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    @property
    def datasets_dir(self) -> Path:
        return self.root / "datasets"

    @property
    def exports_dir(self) -> Path:
        return self.root / "exports"

    def create(self) -> Workspace:
        for folder in (self.runs_dir, self.datasets_dir, self.exports_dir):
            folder.mkdir(parents=True, exist_ok=True)
        return self

    # ---------------------------------------------------------------- what it sees
    def others(self) -> list[tuple[str, Path]]:
        """(folder name, root) of the other users' workspaces an admin sees."""
        users = self.data_dir / USERS_FOLDER
        if not self.admin or not users.is_dir():
            return []
        return [(p.name, p) for p in sorted(users.iterdir()) if p.is_dir() and p != self.root]

    def run_roots(self) -> list[Path]:
        """The runs folders this workspace sees: its own first."""
        return [self.runs_dir] + [root / "runs" for _, root in self.others()]

    def runs_dir_of(self, run_id: str | None) -> Path:
        """The runs folder that holds run `run_id` among those this workspace sees (its own when none does, so
        the caller's lookup says "there is no run")."""
        if run_id and _SAFE.sub("-", run_id) == run_id:
            for root in self.run_roots():
                if (root / run_id / "config.json").exists():
                    return root
        return self.runs_dir

    def dataset_names(self) -> list[str]:
        """Its datasets by name; for an admin also every user's, as `user/dataset`."""
        from sdtune_ui.app.ops import list_datasets

        names = list_datasets(self.datasets_dir)
        for folder, root in self.others():
            names += [f"{folder}/{name}" for name in list_datasets(root / "datasets")]
        return names

    def dataset_folder(self, name: str, *, create: bool = False) -> Path:
        """The folder of dataset `name` (an admin may name another user's as `user/dataset`)."""
        from sdtune_ui.app.ops import dataset_path

        owner, sep, rest = (name or "").partition("/")
        if sep:
            roots = dict(self.others())
            if owner not in roots:
                raise DatasetError(f"There is no dataset named {name!r}; add images first.")
            return dataset_path(roots[owner] / "datasets", rest, create=create)
        return dataset_path(self.datasets_dir, name, create=create)

    def dataset_name(self, path: str | Path) -> str:
        """The name the app shows for a dataset folder it sees (the inverse of dataset_folder); "" for others."""
        path = Path(path)
        if path.parent == self.datasets_dir:
            return path.name
        for folder, root in self.others():
            if path.parent == root / "datasets":
                return f"{folder}/{path.name}"
        return ""

    def run_name(self, reference: str) -> str:
        """A run folder (or RUN_FOLDER@step-N) this workspace sees by its id, as the pickers list it; "" else."""
        folder, at, step = str(reference or "").partition("@")
        path = Path(folder)
        if not folder or path.parent not in self.run_roots():
            return ""
        return path.name + (f"@{step}" if at else "")

    def sees(self, path: str | Path) -> bool:
        """Whether a path lies in this workspace (an admin's: anywhere in the data folder)."""
        try:
            Path(path).resolve().relative_to((self.data_dir if self.admin else self.root).resolve())
        except (ValueError, OSError):
            return False
        return True

    def shown(self, text: object) -> str:
        """`text` with this server's folders written relative to the workspace (then to the data folder)."""
        from sdtune_ui.app.text import relative_paths

        return relative_paths(text, self.root, self.data_dir)


@dataclass(frozen=True)
class Workspaces:
    """The app's rule: one shared workspace, or one per user (and which users are admins)."""

    data_dir: Path
    per_user: bool = False
    admins: frozenset[str] = field(default_factory=frozenset)

    def whole(self) -> Workspace:
        """The data folder's own workspace, which sees every user's (for the app itself: start-up, the CLI)."""
        return Workspace(self.data_dir, self.data_dir, admin=True)

    def of(self, user: str = "") -> Workspace:
        """The workspace of a logged-in user ("" when the app has no passwords); a user's is made on first use,
        with a copy of the example dataset (folders inside are made when something is written to them)."""
        if not self.per_user or user in self.admins:
            return dataclasses.replace(self.whole(), user=user)
        if not user:
            raise SdtuneError("This app keeps a workspace per user: log in first.")
        workspace = Workspace(self.data_dir, self.data_dir / USERS_FOLDER / user_folder(user), user, admin=False)
        if not workspace.root.exists():
            from sdtune_ui.app.ops import load_example

            load_example(workspace.create().datasets_dir)  # a new user can train at once, on the example
        return workspace
