"""Recordings of full learning curves (``bench/record_curves.py``) and what the benchmarks read of them.

A recording is gzipped JSON lines: a header line (how it was made), then one configuration per
line with its per-epoch metrics records over the full budget. This module holds the benchmark's
one definition of a collapsed trial, a configuration's full-curve best, and the validation set's
resolution (one volume of the smallest class in balanced accuracy) that sets the regret tolerance.
"""

from __future__ import annotations

import gzip
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from search.pruning import resolution
from search.ranking import best_step
from search.trial.reporter import metric_value

COLLAPSE_MARGIN = 0.10  # a collapsed trial never gets above chance + this, in any epoch
COLLAPSED_DEFINITION = (
    f"collapsed trial: its full recorded curve never exceeds chance + {COLLAPSE_MARGIN:.2f} balanced "
    f"accuracy (1/C + {COLLAPSE_MARGIN:.2f}; 0.35 for 4 classes) in any epoch")
HINDSIGHT_DEFINITION = (
    "hindsight bound: stops a collapsed trial after one epoch and a learning trial at the first epoch where its "
    "best so far plus the largest later gain any configuration of the recording made after that epoch stays "
    "below the incumbent")


@dataclass(frozen=True)
class Config:
    """One recorded configuration: its per-epoch metrics over the full budget."""

    index: int
    name: str | None
    params: dict[str, Any]
    unfreeze_at_epoch: int
    state: str  # complete | failed | diverged
    epochs: list[dict[str, Any]]


@dataclass(frozen=True)
class Recording:
    path: str
    header: dict[str, Any]
    configs: list[Config]

    @property
    def metric_key(self) -> str:
        return str(self.header["metric"])

    @property
    def maximize(self) -> bool:
        return self.header["direction"] == "maximize"

    @property
    def budget(self) -> int:
        return int(self.header["epochs"])


def load_recording(path: str | Path) -> Recording:
    """A recording written by ``bench/record_curves.py`` (gzipped JSON lines, header first)."""
    with gzip.open(path, "rt") as f:
        lines = [json.loads(line) for line in f if line.strip()]
    if not lines or "header" not in lines[0]:
        raise SystemExit(f"replay_pruners: {path} is not a recording (no header line)")
    configs = [Config(int(r["index"]), r.get("name"), dict(r["params"]), int(r["unfreeze_at_epoch"]),
                      str(r["state"]), list(r["epochs"])) for r in lines[1:]]
    return Recording(str(path), lines[0]["header"], configs)


def num_classes(config: Config) -> int:
    for m in config.epochs:
        hist = m.get("val/pred_hist")
        if hist:
            return len(hist)
    return 0


def full_curve_best(config: Config, rec: Recording) -> float:
    values = {k: metric_value(m, rec.metric_key) for k, m in enumerate(config.epochs)}
    return best_step(values, rec.maximize)[0]


def is_collapsed(config: Config) -> bool:
    """The benchmark's one definition of a collapsed trial (:data:`COLLAPSED_DEFINITION`)."""
    c = num_classes(config)
    if c == 0:
        return False
    baccs = [metric_value(m, "val/balanced_accuracy") for m in config.epochs]
    finite = [b for b in baccs if not math.isnan(b)]
    return bool(finite) and max(finite) <= 1.0 / c + COLLAPSE_MARGIN


def validation_tolerance(rec: Recording) -> float:
    """One validation volume of the smallest class in balanced accuracy, ``1 / (C * n_min)``, from
    the recording's validation class counts: the reach rule's own :func:`search.pruning.resolution`."""
    for config in rec.configs:
        for m in config.epochs:
            if not math.isnan(tol := resolution(m)):
                return tol
    raise SystemExit(f"replay_pruners: {rec.path} stores no validation confusion matrix; pass --tol")


def validation_counts(rec: Recording) -> list[int]:
    """Validation volumes per class (the rows of the first stored confusion matrix)."""
    for config in rec.configs:
        for m in config.epochs:
            if m.get("val/confusion"):
                return [int(sum(row)) for row in m["val/confusion"]]
    return []


def recording_best(rec: Recording) -> float:
    values = [v for c in rec.configs if not math.isnan(v := full_curve_best(c, rec))]
    return (max(values) if rec.maximize else min(values)) if values else math.nan


def hindsight_run(rec: Recording, order: Sequence[int]) -> list[tuple[Config, str, int]]:
    """How each configuration of ``order`` ends under the hindsight bound (:data:`HINDSIGHT_DEFINITION`):
    ``(config, "complete" | "pruned" | "failed", epochs run)``."""
    sign = 1.0 if rec.maximize else -1.0
    curves = {c.index: [sign * metric_value(m, rec.metric_key) for m in c.epochs[: rec.budget]]
              for c in rec.configs}
    learners = [c for c in rec.configs if not is_collapsed(c) and c.state == "complete"]
    later_gain = [max((_running_best(curves[c.index], len(curves[c.index])) - _running_best(curves[c.index], t + 1)
                       for c in learners), default=0.0) for t in range(rec.budget)]
    incumbent = -math.inf
    out: list[tuple[Config, str, int]] = []
    for i in order:
        c = rec.configs[i]
        ran = min(len(c.epochs), rec.budget)
        stop = 1 if is_collapsed(c) else next(
            (t + 1 for t in range(ran) if _running_best(curves[c.index], t + 1) + later_gain[t] < incumbent), None)
        if stop is not None and stop < ran:
            out.append((c, "pruned", stop))
            continue
        state = "complete" if c.state == "complete" and not math.isnan(full_curve_best(c, rec)) else "failed"
        if state == "complete":
            incumbent = max(incumbent, sign * full_curve_best(c, rec))
        out.append((c, state, ran))
    return out


def _running_best(curve: Sequence[float], upto: int) -> float:
    finite = [v for v in curve[:upto] if not math.isnan(v)]
    return max(finite) if finite else -math.inf


def epoch_seconds(config: Config, epochs: int) -> float:
    """The recorded ``epoch_s`` of the configuration's first ``epochs`` epochs (simulated wall time)."""
    return sum(float(m.get("epoch_s") or 0.0) for m in config.epochs[:epochs])
