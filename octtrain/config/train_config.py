"""The trainer config: :class:`TrainConfig` (a whole YAML file), how it is loaded and overridden,
and the few process knobs that come from the environment (:class:`EnvKnobs`).

A config is validated once: :func:`config_from_dict` builds every section of
:mod:`octtrain.config.sections` and collects *every* problem (unknown key, wrong type, bad value) into
one :class:`~octtrain.errors.ConfigError` that names the file and the dotted key path.

Relative paths (``data.manifest``, ``data.root``, ``data.cache_dir``, ...) are relative to the
folder of the file they are written in (a ``--set`` value: to the working directory), and a
loaded config holds them absolute (:mod:`octtrain.config.paths`), so it means the same files in
whatever directory a process starts.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from octtrain.config.paths import resolve_dotted, resolve_paths
from octtrain.config.schema import build, did_you_mean, read_yaml, yaml_number
from octtrain.config.sections import (
    DataSection,
    LogSection,
    ModelSection,
    RuntimeSection,
    TrainSection,
    check,
    raise_if,
)
from octtrain.errors import ConfigError, Problems


@dataclass
class TrainConfig:
    """A complete, validated trainer config: the whole YAML file."""

    data: DataSection
    model: ModelSection = field(default_factory=ModelSection)
    train: TrainSection = field(default_factory=TrainSection)
    runtime: RuntimeSection = field(default_factory=RuntimeSection)
    log: LogSection = field(default_factory=LogSection)

    def __post_init__(self) -> None:
        p: Problems = []
        unfreeze = self.model.unfreeze_at_epoch
        check(p, unfreeze < self.train.epochs, "model.unfreeze_at_epoch",
               f"epoch {unfreeze} is never reached with train.epochs={self.train.epochs}")
        raise_if(p)

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML-ready dict; ``config_from_dict(cfg.to_dict())`` gives back ``cfg``."""
        return _plain(dataclasses.asdict(self))

    def with_overrides(self, overrides: Mapping[str, Any], source: str = "overrides") -> TrainConfig:
        """A new config with dotted-path values replaced, validated as a whole."""
        return config_from_dict(apply_overrides(self.to_dict(), overrides, source), source=source)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# ---------------------------------------------------------------------------------------------
# Loading: YAML file, dotted overrides, validation of the whole tree
# ---------------------------------------------------------------------------------------------


def config_from_dict(raw: Mapping[str, Any], source: str | None = None) -> TrainConfig:
    """Validate a whole raw config; every problem goes into one ConfigError."""
    if not isinstance(raw, Mapping):
        raise ConfigError([("", f"the top level must be a mapping, got {type(raw).__name__}")], source)
    problems: Problems = []
    cfg = build(TrainConfig, dict(raw), "", problems)
    if problems:
        raise ConfigError(problems, source)
    assert isinstance(cfg, TrainConfig)
    return cfg


def load_config(path: str | Path, overrides: Sequence[str] | Mapping[str, Any] = ()) -> TrainConfig:
    """Load and validate a trainer YAML file, applying ``--set`` style overrides first.
    Relative paths: the file's against its folder, the overrides' against the working
    directory."""
    raw = read_yaml(path)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError([("", "the top level must be a mapping of sections")], str(path))
    over = overrides if isinstance(overrides, Mapping) else parse_overrides(overrides)
    raw = resolve_paths(raw, Path(path).parent)
    over = resolve_dotted(over, Path.cwd())
    return config_from_dict(apply_overrides(raw, over, source=str(path)), source=str(path))


def apply_overrides(raw: Mapping[str, Any], overrides: Mapping[str, Any],
                    source: str | None = None) -> dict[str, Any]:
    """A copy of a raw (unvalidated) config dict with dotted-path values set, e.g.
    ``{"train.lr_head": 0.003}``; an override may complete a partial config before validation.
    Keys that are not trainer settings are a ConfigError naming them."""
    out = copy.deepcopy(dict(raw))
    problems: Problems = []
    for key, value in overrides.items():
        problem = unknown_setting(key)
        if problem is not None:
            problems.append((key, problem))
            continue
        node: Any = out
        *sections, leaf = key.split(".")
        for part in sections:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[leaf] = value
    if problems:
        raise ConfigError(problems, source)
    return out


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """``["train.lr_head=0.003", "model.head.hidden=256"]`` → dotted-key dict (values as YAML)."""
    out: dict[str, Any] = {}
    problems: Problems = []
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            problems.append((item, "an override must look like section.key=value"))
            continue
        try:
            out[key] = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as err:
            problems.append((key, f"value {text!r} is not valid YAML ({err.__class__.__name__})"))
    if problems:
        raise ConfigError(problems, "--set")
    return out


def leaf_paths(cls: Any = None, prefix: str = "") -> list[str]:
    """Every settable dotted path of the trainer config, e.g. ``model.head.hidden``."""
    cls = TrainConfig if cls is None else cls
    hints = typing.get_type_hints(cls)
    out: list[str] = []
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(hints[f.name]):
            out.extend(leaf_paths(hints[f.name], key + "."))
        else:
            out.append(key)
    return out


def unknown_setting(path: str, *, sections: bool = True) -> str | None:
    """None when ``path`` is a trainer setting (or, with ``sections``, a section such as
    ``model.head``); else the problem: ``unknown key: not a trainer config setting (did you
    mean model.head.hidden?)``."""
    known = leaf_paths()
    if path in known or (sections and any(p.startswith(path + ".") for p in known)):
        return None
    return f"unknown key: not a trainer config setting{did_you_mean(path, known)}"


# ---------------------------------------------------------------------------------------------
# Knobs from the environment
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EnvKnobs:
    """Process knobs that are no part of a run's config (they do not change its results).

    Read once, from the environment, by :func:`octtrain.fit`, and passed down from there:
    ``OCTTRAIN_DIST_TIMEOUT_S``, ``OCTTRAIN_RANK_GRACE_S``, ``OCTTRAIN_XLA_CACHE_DIR`` (set by
    ``octsearch`` for its trials).
    """

    dist_timeout_s: float = 300.0  # how long a gloo/nccl collective waits for a missing peer
    rank_grace_s: float = 10.0  # after a rank dies, how long its peers get to fail on their own
    xla_cache_dir: str | None = None  # runtime.xla_cache_dir when the config sets none (searches)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> EnvKnobs:
        """The knobs set in ``env`` (default: ``os.environ``); a bad value is a ConfigError."""
        env = os.environ if env is None else env
        problems: Problems = []
        seconds: dict[str, float] = {}
        for name, var in (("dist_timeout_s", "OCTTRAIN_DIST_TIMEOUT_S"),
                          ("rank_grace_s", "OCTTRAIN_RANK_GRACE_S")):
            text = env.get(var)
            value = getattr(cls, name) if text is None else yaml_number(text)
            check(problems, value is not None and value > 0, var,
                  f"must be a number of seconds > 0, got {text!r}")
            seconds[name] = float(value or 0)
        raise_if(problems)
        return cls(**seconds, xla_cache_dir=env.get("OCTTRAIN_XLA_CACHE_DIR") or None)
