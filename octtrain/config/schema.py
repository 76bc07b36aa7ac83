"""Raw YAML to typed dataclasses, collecting every problem instead of stopping at the first.

The generic half of config validation, shared by the trainer config and the search space:

* :func:`read_yaml` reads a file; a missing file, bad syntax or a key given twice in one
  mapping (PyYAML would keep the last silently) is one problem naming the file;
* :func:`build` turns a mapping into a (nested) dataclass from its type hints: unknown keys,
  wrong types and the section's own ``__post_init__`` checks all land in one problems list;
* :func:`yaml_number` reads a number the way a user means it (YAML 1.1 reads ``1e-5``, with no
  dot, as a string);
* :func:`unknown_keys` and :func:`did_you_mean` name keys a section does not know, with the
  closest known one.

A section may define a static ``_normalize_raw(raw) -> raw`` to accept shorthand spellings.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from octtrain.errors import ConfigError, Problems, ProblemsError


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping.

    PyYAML keeps the last of two equal keys, so a second ``train:`` section would silently
    replace the first. The check runs as each mapping is constructed and names both lines.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # ``<<: *anchor`` merges are PyYAML's own business
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            try:
                first = seen.get(key)
            except TypeError:
                continue  # an unhashable key: the base class reports it
            if first is not None:
                raise yaml.constructor.ConstructorError(
                    None, None,
                    f"duplicate key {key!r} (first at line {first}, again at line {line})",
                    key_node.start_mark,
                )
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | Path, error: type[ProblemsError] = ConfigError) -> Any:
    """A YAML file's content; a missing file, bad syntax or a duplicate key raises ``error``
    naming the file."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise error([("", "file not found")], str(path)) from None
    except OSError as err:
        raise error([("", f"cannot read ({err.strerror})")], str(path)) from None
    try:
        return yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err)
        raise error([("", f"invalid YAML{where}: {problem}")], str(path)) from None


def yaml_number(value: Any, *, integer: bool = False) -> int | float | None:
    """``value`` as an int (``integer``) or a float, or None when it is not one.

    Booleans are not numbers. A float may be given as a string, because YAML 1.1 reads
    ``1e-5`` (no dot) as the string ``"1e-5"``; an integer must be an integer.
    """
    if isinstance(value, bool):
        return None
    if integer:
        return value if isinstance(value, int) else None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """`` (did you mean X?)`` with the known name closest to ``name``; empty when none is close."""
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def join_key(prefix: str, key: str) -> str:
    """The dotted path of ``key`` inside ``prefix`` (``""``: the top level)."""
    return f"{prefix}.{key}" if prefix else key


def unknown_keys(keys: Iterable[Any], known: Sequence[str], prefix: str, problems: Problems,
                 *, kind: str = "key") -> None:
    """A problem for each of ``keys`` not in ``known``, under ``prefix.key``:
    ``unknown key (known: a, b) (did you mean b?)``; ``kind`` names what a key is."""
    for key in keys:
        if key not in known:
            listed = ", ".join(known) or "none"
            problems.append((join_key(prefix, str(key)),
                             f"unknown {kind} (known: {listed}){did_you_mean(str(key), known)}"))


# ---------------------------------------------------------------------------------------------
# Building dataclasses
# ---------------------------------------------------------------------------------------------


def type_name(tp: Any) -> str:
    """How a message names a field type: ``a number``, ``a string or null``, ``a list``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_name(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        return "a list"
    if origin is dict:
        return "a mapping"
    if tp is type(None):
        return "null"
    return {int: "an integer", float: "a number", bool: "true/false", str: "a string"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def coerce(tp: Any, value: Any, key: str, problems: Problems) -> Any:
    """``value`` as type ``tp``, or a problem recorded under ``key`` (returns None then)."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if value is None:
            value = {}
        if not isinstance(value, Mapping):
            problems.append((key, f"must be a mapping, got {value!r}"))
            return None
        return build(tp, dict(value), key, problems)
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(tp, value, key, problems)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            problems.append((key, f"must be a list, got {value!r}"))
            return None
        return [coerce(item_tp, v, f"{key}[{i}]", problems) for i, v in enumerate(value)]
    if origin is dict:
        key_tp, item_tp = typing.get_args(tp)
        if not isinstance(value, Mapping):
            problems.append((key, f"must be a mapping, got {value!r}"))
            return None
        return {coerce(key_tp, k, f"{key}.{k}", problems): coerce(item_tp, v, f"{key}.{k}", problems)
                for k, v in value.items()}
    if origin is tuple:
        item_tps = typing.get_args(tp)
        if not isinstance(value, (list, tuple)) or len(value) != len(item_tps):
            problems.append((key, f"must be a list of {len(item_tps)} values, got {value!r}"))
            return None
        pairs = enumerate(zip(item_tps, value, strict=True))
        return tuple(coerce(t, v, f"{key}[{i}]", problems) for i, (t, v) in pairs)
    out = _coerce_scalar(tp, value, key)
    if out is None:
        problems.append((key, f"must be {type_name(tp)}, got {value!r}"))
    return out


def _coerce_union(tp: Any, value: Any, key: str, problems: Problems) -> Any:
    args = typing.get_args(tp)
    if value is None and type(None) in args:
        return None
    for arg in args:
        if arg is type(None):
            continue
        trial: Problems = []
        out = coerce(arg, value, key, trial)
        if not trial:
            return out
    problems.append((key, f"must be {type_name(tp)}, got {value!r}"))
    return None


def _coerce_scalar(tp: Any, value: Any, key: str) -> Any:
    """``value`` as a bool, int, float or str; None when it is not one."""
    if tp is bool:
        return value if isinstance(value, bool) else None
    if tp is int:
        return yaml_number(value, integer=True)
    if tp is float:
        return yaml_number(value)
    if tp is str:
        return value if isinstance(value, str) else None
    # A field type this builder does not know is a programming error, not a user's.
    raise TypeError(f"unsupported config field type {tp!r} at {key}")


def build(cls: Any, raw: dict[str, Any], prefix: str, problems: Problems) -> Any:
    """Dataclass ``cls`` from ``raw``, or None with every problem recorded under ``prefix``.

    A section's own checks (its ``__post_init__`` raising :class:`ConfigError`) run even when
    some fields did not parse, with defaults in their place, so that one pass reports every
    problem of a file.
    """
    normalize = getattr(cls, "_normalize_raw", None)
    if normalize is not None:
        raw = normalize(dict(raw))
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown_keys(sorted(set(raw) - set(fields)), list(fields), prefix, problems)
    kwargs: dict[str, Any] = {}
    before = len(problems)
    for name, f in fields.items():
        key = join_key(prefix, name)
        if name in raw:
            kwargs[name] = coerce(hints[name], raw[name], key, problems)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            if dataclasses.is_dataclass(hints[name]):
                kwargs[name] = coerce(hints[name], {}, key, problems)
            else:
                problems.append((key, "is required"))
    bad = {key for key, _ in problems[before:]}
    if bad and not _fill_defaults(fields, raw, kwargs):
        return None
    try:
        built = cls(**kwargs)
    except ConfigError as err:
        for k, m in err.problems:
            key = join_key(prefix, k) if k else prefix
            if key not in bad:
                problems.append((key, m))
        return None
    return None if bad else built


def _fill_defaults(fields: Mapping[str, dataclasses.Field[Any]], raw: Mapping[str, Any],
                   kwargs: dict[str, Any]) -> bool:
    """Put defaults in place of the fields that did not parse; False if one has no default
    (or is required and missing: the class cannot be built at all)."""
    for name, f in fields.items():
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if required and name not in kwargs:
            return False
        if kwargs.get(name) is None and name in raw and raw[name] is not None:
            if f.default is not dataclasses.MISSING:
                kwargs[name] = f.default
            elif f.default_factory is not dataclasses.MISSING:
                kwargs[name] = f.default_factory()
            else:
                return False
    return True
