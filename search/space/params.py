"""Searched parameters: a distribution over one dotted trainer setting, and its condition.

``params.<path>`` of a space file is ``{type: float|int|categorical, ...}``: ``low``/``high``
(``log``, ``step``) for numbers, ``choices`` for categories, and optionally ``when``, a
comparison of an earlier parameter (``"model.unfreeze_at_epoch >= 0"``) that must hold for
the parameter to be sampled. :func:`parse_param` validates one entry and collects problems
under the entry's key path.
"""

from __future__ import annotations

import json
import math
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import optuna
import yaml

from octtrain.config import TrainConfig, unknown_keys, yaml_number
from octtrain.errors import ConfigError, Problems, format_problems

PARAM_TYPES = ("float", "int", "categorical")
PARAM_KEYS = {
    "float": ("type", "low", "high", "log", "step", "when"),
    "int": ("type", "low", "high", "log", "step", "when"),
    "categorical": ("type", "choices", "when"),
}

_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "==": operator.eq, "!=": operator.ne, ">=": operator.ge, "<=": operator.le,
    ">": operator.gt, "<": operator.lt, "in": lambda a, b: a in b,
    "not in": lambda a, b: a not in b,
}
_CONDITION = re.compile(r"^\s*([A-Za-z_][\w.]*)\s+(==|!=|>=|<=|>|<|not in|in)\s+(.+?)\s*$")


@dataclass(frozen=True)
class Condition:
    """``when: "model.unfreeze_at_epoch >= 0"``: a comparison of an earlier parameter."""

    param: str
    op: str
    value: Any

    @classmethod
    def parse(cls, text: str) -> Condition:
        match = _CONDITION.match(text)
        if match is None:
            raise ValueError(f"{text!r} is not 'PARAM OP VALUE' with OP one of {' '.join(_OPS)}")
        param, op, literal = match.groups()
        value = yaml.safe_load(literal)
        if op in ("in", "not in") and not isinstance(value, list):
            raise ValueError(f"{op!r} needs a list, got {literal!r}")
        return cls(param, op, value)

    def holds(self, values: Mapping[str, Any]) -> bool:
        """Whether the condition holds for sampled ``values`` (False if its parameter is off)."""
        if self.param not in values:
            return False
        try:
            return bool(_OPS[self.op](values[self.param], self.value))
        except TypeError:
            return False

    def __str__(self) -> str:
        return f"{self.param} {self.op} {json.dumps(self.value)}"


@dataclass(frozen=True)
class Param:
    """One searched trainer setting, addressed by its dotted path."""

    path: str
    type: str  # float | int | categorical
    low: Any = None
    high: Any = None
    log: bool = False
    step: Any = None  # None: continuous float / step 1 int
    choices: tuple[Any, ...] = ()
    when: Condition | None = None

    def contains(self, value: Any) -> bool:
        """Whether ``value`` is one the distribution can produce."""
        if self.type == "categorical":
            return any(_same_choice(value, c) for c in self.choices)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.type == "int" and not isinstance(value, int):
            return False
        if not self.low <= value <= self.high:
            return False
        if self.step is None:
            return True
        k = (value - self.low) / self.step
        return math.isclose(k, round(k), abs_tol=1e-8)

    def describe(self) -> str:
        """``float [0.0001, 0.01] log``, ``categorical [mean, attentive]``."""
        if self.type == "categorical":
            body = f"categorical [{', '.join(json.dumps(c) for c in self.choices)}]"
        else:
            body = f"{self.type} [{self.low:g}, {self.high:g}]"
            body += " log" if self.log else ""
            body += f" step {self.step:g}" if self.step is not None else ""
        return body + (f" when {self.when}" if self.when else "")

    def suggest(self, trial: optuna.trial.BaseTrial) -> Any:
        if self.type == "float":
            return trial.suggest_float(self.path, self.low, self.high, step=self.step, log=self.log)
        if self.type == "int":
            return trial.suggest_int(self.path, self.low, self.high, step=self.step or 1,
                                     log=self.log)
        return trial.suggest_categorical(self.path, list(self.choices))

    def probe_values(self) -> list[Any]:
        """Values that show whether the trainer accepts the whole range."""
        return list(self.choices) if self.type == "categorical" else [self.low, self.high]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type}
        if self.type == "categorical":
            out["choices"] = list(self.choices)
        else:
            out.update(low=self.low, high=self.high, log=self.log, step=self.step)
        out["when"] = str(self.when) if self.when else None
        return out


def _same_choice(a: Any, b: Any) -> bool:
    # True == 1 in Python, but a bool choice and an int choice are different settings.
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    return type(a) is type(b) and a == b


def parse_param(path: str, spec: Any, key: str, earlier: list[Param], p: Problems) -> Param | None:
    """The entry ``spec`` of ``path`` as a Param, or None; problems go under ``key``.

    ``earlier`` are the parameters listed before it, the only ones ``when`` may refer to.
    """
    if not isinstance(spec, Mapping):
        p.append((key, f"must be a mapping with a type, got {spec!r}"))
        return None
    kind = spec.get("type")
    if kind not in PARAM_TYPES:
        p.append((f"{key}.type", f"unknown type {kind!r} (known: {', '.join(PARAM_TYPES)})"))
        return None
    unknown_keys(spec, PARAM_KEYS[kind], key, p)
    when = _parse_when(path, spec.get("when"), key, earlier, p)
    if kind == "categorical":
        return _parse_categorical(path, spec, key, when, p)
    return _parse_range(path, kind, spec, key, when, p)


def _parse_when(path: str, raw: Any, key: str, earlier: list[Param],
                p: Problems) -> Condition | None:
    if raw is None:
        return None
    try:
        when = Condition.parse(str(raw))
    except ValueError as err:
        p.append((f"{key}.when", str(err)))
        return None
    if when.param not in {e.path for e in earlier}:
        p.append((f"{key}.when", f"{when.param!r} is not a parameter listed before "
                  f"{path!r}: conditions refer to earlier parameters"))
    return when


def _parse_categorical(path: str, spec: Mapping[str, Any], key: str, when: Condition | None,
                       p: Problems) -> Param | None:
    choices = spec.get("choices")
    if not isinstance(choices, list) or not choices:
        p.append((f"{key}.choices", f"must be a non-empty list, got {choices!r}"))
        return None
    bad = [c for c in choices if not (c is None or isinstance(c, (bool, int, float, str)))]
    if bad:
        p.append((f"{key}.choices", f"choices must be numbers, strings, booleans or null, "
                  f"got {bad[0]!r}"))
    dupes = [c for i, c in enumerate(choices) if any(_same_choice(c, d) for d in choices[:i])]
    if dupes:
        p.append((f"{key}.choices", f"{dupes[0]!r} is listed twice"))
    return Param(path, "categorical", choices=tuple(choices), when=when)


def _parse_range(path: str, kind: str, spec: Mapping[str, Any], key: str,
                 when: Condition | None, p: Problems) -> Param | None:
    """A ``float`` or ``int`` entry: ``low``, ``high``, ``log`` and ``step``."""
    integer = kind == "int"
    low = yaml_number(spec.get("low"), integer=integer)
    high = yaml_number(spec.get("high"), integer=integer)
    log = spec.get("log", False)
    step = spec.get("step")
    what = "an integer" if integer else "a number"
    for name, value in (("low", low), ("high", high)):
        if value is None:
            p.append((f"{key}.{name}", f"must be {what}, got {spec.get(name)!r}"))
    if not isinstance(log, bool):
        p.append((f"{key}.log", f"must be true or false, got {log!r}"))
        log = False
    if step is not None:
        step = yaml_number(step, integer=integer)
        if step is None or step <= 0:
            p.append((f"{key}.step", f"must be {what} > 0, got {spec.get('step')!r}"))
            step = None
    if low is None or high is None:
        return None
    if low > high:
        p.append((key, f"low {low!r} > high {high!r}"))
    if log and low <= 0:
        p.append((f"{key}.low", f"a log distribution needs low > 0, got {low!r}"))
    if log and step is not None and not (integer and step == 1):
        p.append((f"{key}.step", "step and log cannot be used together"))
    if step is not None and low <= high:
        k = (high - low) / step
        if not math.isclose(k, round(k), abs_tol=1e-8):
            p.append((f"{key}.step", f"high - low = {high - low:g} is not a multiple of step "
                      f"{step:g}"))
    return Param(path, kind, low=low, high=high, log=log, step=step, when=when)


def probe(base: TrainConfig, param: Param, key: str, p: Problems) -> None:
    """Whether the trainer accepts the ends of the range (or every choice) on the base."""
    for value in param.probe_values():
        try:
            base.with_overrides({param.path: value})
        except ConfigError as err:
            p.append((key, f"the trainer rejects {value!r}: {format_problems(err.problems)}"))
