"""Search spaces: a YAML file, validated once into a :class:`SearchSpace`.

A space file (every key but ``base`` and ``params`` may be left out)::

    base: configs/scenario_a_fixed.yaml     # trainer config: a path or an inline mapping
    overrides:                              # dotted trainer keys applied to the base
      train.epochs: 8
    objective: {metric: balanced_accuracy, direction: maximize}
    params:                                 # dotted trainer keys, sampled in this order
      model.unfreeze_at_epoch: {type: categorical, choices: [-1, 1, 2, 3]}
      train.lr_head: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
      train.lr_encoder: {type: float, low: 1.0e-6, high: 1.0e-4, log: true,
                         when: "model.unfreeze_at_epoch >= 0"}
    enqueue:                                # trials run first, in this order
      - {name: seed_fixed, params: {model.unfreeze_at_epoch: 3, train.lr_head: 3.0e-3}}
    sampler: {type: tpe, n_startup_trials: 10, multivariate: true, group: true}
    pruner:
      collapse: {max_class_share: 0.9, margin: 0.05, patience: 2, grace_epochs: 1}
      inner: {type: reach, window: 2}         # or median, percentile, hyperband, successive_halving

Relative paths are relative to the folder of the file they are written in: ``base`` and the
path-valued trainer keys of the space (``data.manifest``, ``data.root``, ``data.cache_dir``,
``runtime.xla_cache_dir``, a local ``model.encoder``) to the space file's, those of a base
config file to that file's (:mod:`octtrain.config.paths`). The space holds them absolute, and so does
the copy stored with the study, so every worker resolves them the same way wherever it starts.
A parameter with ``when`` is sampled only when the condition on an earlier parameter holds;
otherwise the trial keeps the base value. :func:`load_space` collects every problem of a file
into one :class:`~search.errors.SearchSpaceError` whose keys are dotted paths into the file
(``params.train.lr_head``).

:meth:`SearchSpace.to_dict` is the canonical form stored with a study: it parses back with
:func:`space_from_dict` and two workers may join one study only if theirs are equal
(:func:`diff_spaces`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from octtrain.config import (
    METRICS_MAX,
    METRICS_MIN,
    DataSection,
    TrainConfig,
    apply_overrides,
    config_from_dict,
    load_config,
    read_yaml,
    resolve_dotted,
    resolve_paths,
    unknown_keys,
    unknown_setting,
)
from octtrain.errors import ConfigError, Problems, clip
from search.errors import SearchSpaceError
from search.space.params import Param, parse_param, probe
from search.space.sampler_pruner import PrunerSpec, SamplerSpec, parse_pruner, parse_sampler

TOP_LEVEL_KEYS = ("base", "overrides", "objective", "params", "enqueue", "sampler", "pruner")


@dataclass(frozen=True)
class Objective:
    metric: str = "balanced_accuracy"  # a validation metric of the trainer
    direction: str = "maximize"

    @property
    def metric_key(self) -> str:
        """The key of the metric in the trainer's per-epoch metrics dict."""
        return f"val/{self.metric}"

    @property
    def maximize(self) -> bool:
        return self.direction == "maximize"


@dataclass(frozen=True)
class Enqueued:
    name: str
    params: dict[str, Any]


@dataclass(frozen=True)
class SearchSpace:
    """A validated search space: base trainer config, distributions and how to search them."""

    base: TrainConfig
    params: tuple[Param, ...]
    objective: Objective = Objective()
    enqueue: tuple[Enqueued, ...] = ()
    sampler: SamplerSpec = SamplerSpec()
    pruner: PrunerSpec = PrunerSpec()
    source: str | None = None

    def suggest(self, trial: optuna.trial.BaseTrial) -> dict[str, Any]:
        """Sample (or read back) every active parameter of ``trial``, in file order."""
        values: dict[str, Any] = {}
        for p in self.params:
            if p.when is None or p.when.holds(values):
                values[p.path] = p.suggest(trial)
        return values

    def trainer_config(self, overrides: Mapping[str, Any]) -> TrainConfig:
        """The base config with dotted ``overrides`` (sampled params, device) applied."""
        return self.base.with_overrides(overrides, source="trial overrides")

    def to_dict(self) -> dict[str, Any]:
        """Canonical, JSON-ready form: what a study stores and compares on join."""
        out = {
            "base": self.base.to_dict(),
            "objective": {"metric": self.objective.metric, "direction": self.objective.direction},
            "params": {p.path: p.to_dict() for p in self.params},
            "enqueue": [{"name": e.name, "params": dict(e.params)} for e in self.enqueue],
            "sampler": self.sampler.to_dict(),
            "pruner": self.pruner.to_dict(),
        }
        return json.loads(json.dumps(out))  # the exact types a JSON round trip gives back


# ---------------------------------------------------------------------------------------------
# Loading and validation
# ---------------------------------------------------------------------------------------------


def load_space(path: str | Path) -> SearchSpace:
    """Read and validate a space file; every problem goes into one SearchSpaceError."""
    return space_from_dict(read_yaml(path, SearchSpaceError), source=str(path),
                           folder=Path(path).parent)


def space_from_dict(raw: Any, source: str | None = None,
                    folder: Path | None = None) -> SearchSpace:
    """Validate a raw space (a parsed file, or :meth:`SearchSpace.to_dict`); relative paths
    are resolved against ``folder`` (the space file's; ``None``: kept as they are)."""
    if not isinstance(raw, Mapping):
        raise SearchSpaceError([("", f"the top level must be a mapping, got {type(raw).__name__}")],
                               source)
    p: Problems = []
    unknown_keys(raw, TOP_LEVEL_KEYS, "", p)
    base = _parse_base(raw.get("base"), raw.get("overrides"), folder, p)
    objective = _parse_objective(raw.get("objective"), p)
    params = _parse_params(raw.get("params"), base, p)
    declared = [str(path) for path in raw["params"]] if isinstance(raw.get("params"), Mapping) else []
    enqueue = _parse_enqueue(raw.get("enqueue"), params, declared, base, p)
    sampler = parse_sampler(raw.get("sampler"), p)
    pruner = parse_pruner(raw.get("pruner"), p)
    if pruner.inner == "reach" and not objective.maximize:
        p.append(("pruner.inner.type", f"reach judges a maximized objective; objective.metric {objective.metric} "
                  "is minimized (use median, percentile, hyperband or successive_halving)"))
    if p:
        raise SearchSpaceError(p, source)
    assert base is not None
    return SearchSpace(base=base, params=tuple(params), objective=objective,
                       enqueue=tuple(enqueue), sampler=sampler, pruner=pruner, source=source)


def _config_problems(err: ConfigError, prefix: str) -> Problems:
    where = f" (in {err.source})" if err.source else ""
    return [(f"{prefix}.{key}" if key else prefix, f"{msg}{where}") for key, msg in err.problems]


def _parse_base(base: Any, overrides: Any, folder: Path | None,
                p: Problems) -> TrainConfig | None:
    """The trainer config of a space: a path (loaded with the trainer's own loader) or an inline
    mapping, with the dotted overrides applied before validation, so they may complete it;
    relative paths written in the space are resolved against ``folder``."""
    if overrides is None:
        overrides = {}
    if not isinstance(overrides, Mapping):
        p.append(("overrides", f"must be a mapping of dotted trainer keys, got {overrides!r}"))
        return None
    if folder is not None:
        overrides = resolve_dotted(overrides, folder)
    try:
        if isinstance(base, str):
            return load_config((folder or Path()) / Path(base).expanduser(), overrides)
        if isinstance(base, Mapping):
            inline = base if folder is None else resolve_paths(base, folder)
            return config_from_dict(apply_overrides(inline, overrides, source="overrides"))
    except ConfigError as err:
        p.extend(_config_problems(err, "base"))
        return None
    p.append(("base", f"must be a trainer config path or mapping, got {base!r}"))
    return None


def _parse_objective(raw: Any, p: Problems) -> Objective:
    if raw is None:
        return Objective()
    if not isinstance(raw, Mapping):
        p.append(("objective", f"must be a mapping with metric and direction, got {raw!r}"))
        return Objective()
    unknown_keys(raw, ("metric", "direction"), "objective", p)
    metric = raw.get("metric", "balanced_accuracy")
    if metric not in METRICS_MAX + METRICS_MIN:
        p.append(("objective.metric",
                  f"must be one of {', '.join(METRICS_MAX + METRICS_MIN)}, got {metric!r}"))
        return Objective()
    natural = "maximize" if metric in METRICS_MAX else "minimize"
    direction = raw.get("direction", natural)
    if direction not in ("maximize", "minimize"):
        p.append(("objective.direction", f"must be maximize or minimize, got {direction!r}"))
    elif direction != natural:
        p.append(("objective.direction", f"{metric} is better when "
                  f"{'higher' if natural == 'maximize' else 'lower'}: use {natural}"))
    return Objective(metric=metric, direction=natural)


def _parse_params(raw: Any, base: TrainConfig | None, p: Problems) -> list[Param]:
    if not isinstance(raw, Mapping) or not raw:
        p.append(("params", f"must be a non-empty mapping of dotted trainer keys, got {raw!r}"))
        return []
    params: list[Param] = []
    for path, spec in raw.items():
        key = f"params.{path}"
        before = len(p)
        unknown = unknown_setting(str(path), sections=False)
        if unknown is not None:
            p.append((key, unknown))
        param = parse_param(str(path), spec, key, params, p)
        if param is None or len(p) > before:
            continue
        if base is not None:
            probe(base, param, key, p)
        params.append(param)
    return params


def _parse_enqueue(raw: Any, params: list[Param], declared: list[str],
                   base: TrainConfig | None, p: Problems) -> list[Enqueued]:
    """The enqueued trials of ``raw``, checked against the valid ``params``.

    A value of a parameter written under ``params`` (``declared``) that is invalid is skipped,
    not blamed: its problem is reported once, under ``params``, not once per enqueued trial.
    With no parameter written at all, names are not checked (``params`` is the problem).
    """
    if raw is None:
        return []
    if not isinstance(raw, list):
        p.append(("enqueue", f"must be a list of {{name, params}} entries, got {raw!r}"))
        return []
    by_path = {q.path: q for q in params}
    out: list[Enqueued] = []
    for i, entry in enumerate(raw):
        key = f"enqueue[{i}]"
        if not isinstance(entry, Mapping) or not isinstance(entry.get("params"), Mapping):
            p.append((key, f"must be a mapping with params (and a name), got {entry!r}"))
            continue
        unknown_keys(entry, ("name", "params"), key, p)
        name = str(entry.get("name", f"enqueued_{i}"))
        values = dict(entry["params"])
        before = len(p)
        for path, value in values.items():
            if path not in by_path:
                if declared and path not in declared:
                    p.append((f"{key}.params.{path}",
                              f"not a searched parameter (searched: {', '.join(declared)})"))
            elif not by_path[path].contains(value):
                p.append((f"{key}.params.{path}",
                          f"{value!r} is outside its distribution {by_path[path].describe()}"))
        if len(p) > before:
            continue
        active: dict[str, Any] = {}
        for q in params:
            if q.path not in values:
                continue
            if q.when is not None and q.when.param in values and not q.when.holds(values):
                p.append((f"{key}.params.{q.path}", f"is not sampled because "
                          f"'{q.when}' is false for this trial: remove it"))
                continue
            active[q.path] = values[q.path]
        if len(p) > before:
            continue
        if base is not None:
            try:
                base.with_overrides(active)
            except ConfigError as err:
                p.extend(_config_problems(err, f"{key}.params"))
                continue
        out.append(Enqueued(name, active))
    return out


# ---------------------------------------------------------------------------------------------
# Comparing stored and current spaces
# ---------------------------------------------------------------------------------------------


def diff_spaces(stored: Any, current: Any, prefix: str = "", defaults: Any = None) -> list[str]:
    """Every difference between two canonical spaces, as ``key: stored X, this file Y``.

    ``defaults`` (shaped like ``current``): a key missing from ``stored`` whose value here is
    its default is no difference: a setting added to octsearch after the study was stored.
    """
    if isinstance(stored, Mapping) and isinstance(current, Mapping):
        out: list[str] = []
        known = defaults if isinstance(defaults, Mapping) else {}
        for key in list(stored) + [k for k in current if k not in stored]:
            path = f"{prefix}.{key}" if prefix else str(key)
            if key not in current:
                out.append(f"{path}: only in the stored study ({_short(stored[key])})")
            elif key not in stored:
                if key in known and known[key] == current[key]:
                    continue
                out.append(f"{path}: not in the stored study (this file: {_short(current[key])})")
            else:
                out.extend(diff_spaces(stored[key], current[key], path, known.get(key)))
        return out
    if stored != current:
        return [f"{prefix}: stored {_short(stored)}, this file {_short(current)}"]
    return []


def trainer_defaults() -> dict[str, Any]:
    """The default trainer config as a canonical space holds it (``base``)."""
    default = TrainConfig(data=DataSection(manifest="-")).to_dict()  # data needs a source
    return json.loads(json.dumps(default))  # type: ignore[no-any-return]


def _short(value: Any) -> str:
    return clip(json.dumps(value), 80)
