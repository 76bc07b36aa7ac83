"""The ``sampler:`` and ``pruner:`` sections of a space file, validated into specs that build them.

``sampler: {type: tpe|random, ...}`` and ``pruner: {collapse: {...}, inner: {type: ...}}`` (or
``pruner: none``: no pruning).
Only the options listed in :data:`SAMPLERS`, :data:`INNER_PRUNERS` and
:data:`COLLAPSE_OPTIONS` are accepted; defaults of the classes are filled in, so that a
space that spells a default out and one that leaves it out compare equal when a worker joins
a study.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import optuna

from octtrain.config import unknown_keys, yaml_number
from octtrain.errors import Problems
from search.optuna_compat import no_experimental_warning
from search.pruning import CollapsePruner, ReachPruner

# Options a space file may pass to each sampler and inner pruner, with their kinds.
SAMPLERS: dict[str, tuple[type, dict[str, str]]] = {
    "tpe": (optuna.samplers.TPESampler, {
        "n_startup_trials": "int", "n_ei_candidates": "int", "multivariate": "bool",
        "group": "bool", "constant_liar": "bool", "seed": "int"}),
    "random": (optuna.samplers.RandomSampler, {"seed": "int"}),
}
_PERCENTILE_OPTIONS = {"n_startup_trials": "int", "n_warmup_steps": "int", "interval_steps": "int",
                       "n_min_trials": "int"}
INNER_PRUNERS: dict[str, tuple[type | None, dict[str, str]]] = {
    "none": (None, {}),
    "reach": (ReachPruner, {
        "settle_epochs": "int", "grace_epochs": "int", "window": "int", "optimism": "float",
        "tolerance_volumes": "float", "n_startup_trials": "int"}),
    "median": (optuna.pruners.MedianPruner, _PERCENTILE_OPTIONS),
    "percentile": (optuna.pruners.PercentilePruner, {"percentile": "float", **_PERCENTILE_OPTIONS}),
    "hyperband": (optuna.pruners.HyperbandPruner, {
        "min_resource": "int", "max_resource": "int|auto", "reduction_factor": "int",
        "bootstrap_count": "int"}),
    "successive_halving": (optuna.pruners.SuccessiveHalvingPruner, {
        "min_resource": "int|auto", "reduction_factor": "int", "min_early_stopping_rate": "int",
        "bootstrap_count": "int"}),
}
COLLAPSE_OPTIONS = {"max_class_share": "float", "margin": "float", "patience": "int",
                    "grace_epochs": "int", "settle_epochs": "int", "train_margin": "float",
                    "loss_margin": "float", "stuck_patience": "int", "max_prediction_change": "float"}


@dataclass(frozen=True)
class SamplerSpec:
    type: str = "tpe"
    options: dict[str, Any] = field(default_factory=dict)

    def build(self, seed: int | None = None) -> optuna.samplers.BaseSampler:
        """The sampler; ``seed`` (e.g. ``--seed``) wins over a seed in the space file."""
        cls, _ = SAMPLERS[self.type]
        options = dict(self.options)
        if seed is not None:
            options["seed"] = seed
        with no_experimental_warning():
            return cls(**options)

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, **self.options}


@dataclass(frozen=True)
class PrunerSpec:
    """The collapse pruner's options and its inner pruner; ``off``: no pruning at all
    (``pruner: none`` in a space file, for a baseline search that runs every trial out)."""

    collapse: dict[str, Any] = field(default_factory=dict)
    inner: str = "none"
    inner_options: dict[str, Any] = field(default_factory=dict)
    off: bool = False

    def build(self) -> optuna.pruners.BasePruner:
        if self.off:
            return optuna.pruners.NopPruner()
        cls, _ = INNER_PRUNERS[self.inner]
        inner = cls(**self.inner_options) if cls is not None else None
        return CollapsePruner(**self.collapse, inner=inner)

    def to_dict(self) -> dict[str, Any] | str:
        if self.off:
            return "none"
        inner = {"type": self.inner, **self.inner_options}
        return {"collapse": dict(self.collapse), "inner": inner}


def _check_options(raw: Mapping[str, Any], table: dict[str, str], prefix: str,
                   p: Problems) -> dict[str, Any]:
    """The options of ``raw`` (all but ``type``; null: the class default) of the kinds in
    ``table``; a problem for each unknown or ill-typed one."""
    given = {name: value for name, value in raw.items() if name != "type" and value is not None}
    unknown_keys(given, list(table), prefix, p, kind="option")
    out: dict[str, Any] = {}
    for name, value in given.items():
        kind = table.get(name)
        if kind is None:
            continue
        checked = _option_value(kind, value)
        if checked is None:
            p.append((f"{prefix}.{name}", f"must be {kind.replace('|', ' or ')}, got {value!r}"))
            continue
        out[name] = checked
    return out


def _option_value(kind: str, value: Any) -> Any:
    """``value`` as an option of ``kind`` (``int``, ``float``, ``bool``, ``int|auto``), or None."""
    if kind == "bool":
        return value if isinstance(value, bool) else None
    if kind == "int|auto" and value == "auto":
        return value
    return yaml_number(value, integer=kind != "float")


def _with_defaults(cls: Any, options: dict[str, Any], table: dict[str, str]) -> dict[str, Any]:
    """The options with the class defaults filled in, so that equal spaces compare equal."""
    params = inspect.signature(cls).parameters
    full = {name: params[name].default for name in table
            if name in params and params[name].default not in (inspect.Parameter.empty, None)}
    full.update(options)
    return full


def parse_sampler(raw: Any, p: Problems) -> SamplerSpec:
    if raw is None:
        raw = {"type": "tpe"}
    if not isinstance(raw, Mapping) or raw.get("type") not in SAMPLERS:
        got = raw.get("type") if isinstance(raw, Mapping) else raw
        p.append(("sampler.type", f"unknown sampler {got!r} (known: {', '.join(SAMPLERS)})"))
        return SamplerSpec()
    cls, table = SAMPLERS[raw["type"]]
    options = _check_options(raw, table, "sampler", p)
    spec = SamplerSpec(raw["type"], _with_defaults(cls, options, table))
    try:
        spec.build()
    except (ValueError, TypeError) as err:
        p.append(("sampler", str(err)))
    return spec


def parse_pruner(raw: Any, p: Problems) -> PrunerSpec:
    if raw is None:
        raw = {}
    if raw == "none":
        return PrunerSpec(off=True)
    if not isinstance(raw, Mapping):
        p.append(("pruner", f"must be 'none' or a mapping with collapse and inner, got {raw!r}"))
        return PrunerSpec()
    unknown_keys(raw, ("collapse", "inner"), "pruner", p)
    collapse_raw = raw.get("collapse") or {}
    inner_raw = raw.get("inner") or {"type": "none"}
    if not isinstance(collapse_raw, Mapping):
        p.append(("pruner.collapse", f"must be a mapping of options, got {collapse_raw!r}"))
        collapse_raw = {}
    collapse = _with_defaults(CollapsePruner, _check_options(
        collapse_raw, COLLAPSE_OPTIONS, "pruner.collapse", p), COLLAPSE_OPTIONS)
    if not isinstance(inner_raw, Mapping) or inner_raw.get("type") not in INNER_PRUNERS:
        got = inner_raw.get("type") if isinstance(inner_raw, Mapping) else inner_raw
        p.append(("pruner.inner.type",
                  f"unknown pruner {got!r} (known: {', '.join(INNER_PRUNERS)})"))
        return PrunerSpec(collapse=collapse)
    try:
        CollapsePruner(**collapse)
    except ValueError as err:
        p.append(("pruner.collapse", str(err)))
    kind = inner_raw["type"]
    cls, table = INNER_PRUNERS[kind]
    options = _check_options(inner_raw, table, "pruner.inner", p)
    if kind == "percentile" and "percentile" not in options:
        p.append(("pruner.inner.percentile", "is required for the percentile pruner"))
        return PrunerSpec(collapse=collapse)
    if cls is None:
        return PrunerSpec(collapse=collapse)
    try:
        cls(**options)
    except (ValueError, TypeError) as err:
        p.append(("pruner.inner", str(err)))
    return PrunerSpec(collapse, kind, _with_defaults(cls, options, table))
