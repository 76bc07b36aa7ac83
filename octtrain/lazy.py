"""Names of a package imported on first use (PEP 562), so that importing the package does not
load what they need (torch, transformers): an ``octsearch`` worker, a trial process and the
review commands import ``octtrain`` for its config, errors and stop signals alone."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def on_first_use(package: str, names: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package``: ``names`` maps each lazy attribute to the module,
    relative to ``package``, that defines it. The first access imports it and keeps the value in
    the package, so later ones are plain lookups."""

    def __getattr__(name: str) -> Any:
        module = names.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module}"), name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__
