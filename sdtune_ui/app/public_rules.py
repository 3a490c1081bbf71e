"""The rules for a public app (a Space or a share link) and for a per-user app's users: a run may read only the
app's own data and Hub or demo models, loads no pickle files, and keeps within the public limits; and a base model
is checked to load before a run starts."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from sdtune_ui.config import TrainConfig
from sdtune_ui.errors import ConfigError

HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")  # user/name


def check_public_config(config: TrainConfig, data_dir: Path, *, limits: bool = True) -> None:
    """On a Space or a share link, a run may only read the app's own data and Hub/demo models, never loads
    pickle files, and keeps within the public limits of every number (TrainConfig's field metadata).

    A visitor must not make the server read arbitrary folders (e.g. `/root`) as datasets or models, run code
    from a pickle, or queue settings no GPU can honour (resolution 65536, batch 100000). `data_dir`: the folder
    runs may read (a user's workspace on a per-user app); `limits=False` leaves the numbers to the usual limits.
    """
    from sdtune_ui.config import limit_errors
    from sdtune_ui.generate.artifacts import parse_choice
    from sdtune_ui.models import OFFLINE_MODELS
    from sdtune_ui.models.loading import PICKLE_SUFFIXES

    errors = limit_errors(config, public=True) if limits else {}
    if config.allow_pickle:
        errors["allow_pickle"] = ("This public app never loads pickle files (.ckpt/.bin can run code): choose a "
                                  "model in safetensors format.")
    data = Path(config.data).expanduser()
    if not _inside(data, data_dir):
        errors["data"] = "Choose a dataset from the Dataset tab (this public app only reads its own data folder)."
    model = config.model.strip()
    looks_local = (model.startswith(("/", ".", "~", "\\")) or model.lower().endswith((".safetensors", *PICKLE_SUFFIXES))
                   or model.count("/") > 1 or _exists(model))
    if model not in OFFLINE_MODELS and looks_local:
        errors["model"] = "This public app loads models from the Hub (user/name) or the built-in demo models only."
    if config.class_data and not _inside(Path(config.class_data), data_dir):
        errors["class_data"] = "Leave empty on the public app (class images are generated into its data folder)."
    if config.init_from.strip() and not _inside(Path(parse_choice(config.init_from.strip())[0]), data_dir):
        errors["init_from"] = "Choose one of this app's runs to start from (a public app reads only its own data)."
    from sdtune_ui.data.conditions import TINY_DEPTH
    from sdtune_ui.models import TINY_CONTROLNETS

    for name, tiny in (("controlnet_model", TINY_CONTROLNETS), ("depth_model", (TINY_DEPTH,))):
        value = str(getattr(config, name)).strip()
        if value and value not in tiny and (not HUB_ID.match(value) or ".." in value or _exists(value)):
            errors[name] = "This public app loads models from the Hub (user/name) or the tiny-* demos only."
    if errors:
        raise ConfigError(errors)


def check_workspace_rules(config: TrainConfig, workspace: Any, *, public: bool) -> None:
    """What a run started by this workspace's user may read: a public app's visitor only the data folder (a user of
    a per-user app only their workspace), within the public limits; a user of a per-user app (not an admin) the
    same, with the usual limits. Admins and the owner of a local app: anything."""
    if public:
        check_public_config(config, workspace.data_dir if workspace.admin else workspace.root)
    elif not workspace.admin:
        check_public_config(config, workspace.root, limits=False)


def check_model(model: str, *, allow_local_paths: bool) -> None:
    """Refuse at Start a base model that cannot load: not a demo name, a local model (when allowed) or a Hub
    id (user/name) that exists (offline: that is in this machine's Hugging Face cache)."""
    from sdtune_ui.models import OFFLINE_MODELS

    model = model.strip()
    if model in OFFLINE_MODELS:
        return
    path = Path(model).expanduser() if _exists(model) else None
    if path is not None and allow_local_paths:
        if path.is_dir() and not (path / "model_index.json").exists():
            raise ConfigError({"model": f"{model} is a folder but not a diffusers pipeline (no model_index.json)."})
        return
    if HUB_ID.match(model) and ".." not in model:
        _check_hub_model(model)
        return
    local = ", a local diffusers folder or a .safetensors file" if allow_local_paths else ""
    raise ConfigError({"model": f"{model[:100]!r} is not a model this app can load: choose one from the list, or "
                                f"type a Hub id (user/name){local}."})


def _check_hub_model(repo_id: str) -> None:
    import huggingface_hub
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    if huggingface_hub.constants.HF_HUB_OFFLINE:
        from sdtune_ui.models.loading import unavailable_offline

        problem = unavailable_offline(repo_id)  # says it needs the network once, or a local folder
        if problem:
            raise ConfigError({"model": problem})
        return
    try:
        huggingface_hub.model_info(repo_id, timeout=10)
    except GatedRepoError:
        return  # exists; loading says whether the token may read it
    except RepositoryNotFoundError:
        raise ConfigError({"model": f"There is no model {repo_id} on the Hugging Face Hub (check the spelling; a "
                                    "private model needs HF_TOKEN)."}) from None
    except Exception:  # noqa: BLE001 - the Hub unreachable: loading reports it with its own message
        return


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return True


def _exists(path: str) -> bool:
    try:
        return Path(path).expanduser().exists()
    except (OSError, RuntimeError, ValueError):  # too long for a path, ~unknown-user, a NUL byte
        return False
