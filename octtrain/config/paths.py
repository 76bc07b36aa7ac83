"""Path-valued config keys, made absolute against the folder of the file they are written in.

A relative ``data.manifest`` means the same file whichever directory a process starts in:
:func:`resolve_paths` makes every relative path of a raw config absolute against a folder
(a config file's folder, a search space file's folder, or the working directory for
``--set`` on the command line), so that configs are stored with absolute paths and every
worker of a search resolves them the same way.

``model.encoder`` names a preset (``tiny``), a Hugging Face hub id or a local
``save_pretrained`` folder; it is a path only where it starts with ``./`` or ``../`` or names a
folder that exists there.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

PATH_KEYS = ("data.manifest", "data.root", "data.cache_dir", "runtime.xla_cache_dir")
MAYBE_PATH_KEYS = ("model.encoder",)  # a path only where it looks like or is one


def _absolute(value: str, folder: Path) -> str:
    path = Path(value).expanduser()
    return str(path) if path.is_absolute() else os.path.normpath(folder / path)


def _is_local(value: str, folder: Path) -> bool:
    return value.startswith(("./", "../", "~")) or (folder / value).exists()


def resolve_value(key: str, value: Any, folder: Path) -> Any:
    """``value`` of the dotted ``key``, absolute against ``folder`` if it is a relative path."""
    if not isinstance(value, str) or not value:
        return value
    if key in PATH_KEYS or (key in MAYBE_PATH_KEYS and _is_local(value, folder)):
        return _absolute(value, folder)
    return value


def resolve_paths(raw: Any, folder: str | Path) -> Any:
    """A copy of a raw (nested) config with its relative paths absolute against ``folder``;
    anything that is not a mapping is returned as is (validation reports it)."""
    if not isinstance(raw, Mapping):
        return raw
    base = Path(folder).resolve()
    out = {k: dict(v) if isinstance(v, Mapping) else v for k, v in raw.items()}
    for key in (*PATH_KEYS, *MAYBE_PATH_KEYS):
        section, leaf = key.split(".")
        node = out.get(section)
        if isinstance(node, dict) and leaf in node:
            node[leaf] = resolve_value(key, node[leaf], base)
    return out


def resolve_dotted(overrides: Mapping[str, Any], folder: str | Path) -> dict[str, Any]:
    """Dotted overrides (``{"data.manifest": "m.csv"}``) with relative paths made absolute."""
    base = Path(folder).resolve()
    return {key: resolve_value(key, value, base) for key, value in overrides.items()}
