"""Which parameters predict a collapse: every finished trial, by how it ended, per parameter value.

Optuna's importances (and its plots) read COMPLETE trials only; in a Scenario-A study the knobs
that cause collapse sit in the pruned trials. This module reads every trial that ended:

- how it ended (:func:`ending`): **collapsed** (pruned by the collapse rule: its stored
  ``prune_kind``, or for a study stored before kinds, the first word of its reason,
  :func:`search.pruning.prune_kind`; or pruned by another rule at an epoch that was collapsed by
  the collapse rule's own test with its default thresholds: the inner rule can fire first on a
  collapsed trial once a completed trial sets a high bar), **pruned** (by the inner rule at an
  epoch that was not collapsed, or a diverged loss),
  **complete**, or **failed**. Failed trials are counted apart, in no share and no measure (a
  crash says little about a configuration); a FAIL stopped by a signal (re-queued to resume) is no
  ending at all. Running and waiting trials have none yet.
- each parameter's values, binned (:func:`binned`): a categorical parameter by its choices, an
  integer one with few distinct values (or any numeric one with no more values than bins) by value,
  any other in 2-4 quantile bins (by the number of trials) whose edges are rounded to two
  significant digits, so a bin reads ``0.0012 - 0.0035``; the cut between two neighbouring
  values is their midpoint, geometric on a log scale. A trial without the parameter (a
  conditional one, e.g. ``lr_encoder`` of a frozen encoder) is in the bin ``(not set)``.
- how well a parameter predicts a collapse (:func:`information_gain`): the mutual information,
  in bits, of its bin with the outcome collapsed-vs-not over the finished (complete + pruned)
  trials: how much knowing the bin reduces the uncertainty of "did it collapse". It is at most
  the outcome's entropy ``H`` (1 bit for half collapsed): a parameter at ``H`` separates collapsed
  trials from the others on its own. More bins fit noise, so parameters are ranked by the gain
  less its expected value under independence, ``(bins - 1) / (2 n ln 2)`` bits (the G statistic,
  ``2 n ln 2`` times the gain, is chi-square with ``bins - 1`` degrees of freedom under
  independence); the G-test's p-value says how surprising the gain would be if the parameter had
  nothing to do with collapse (approximate on few trials).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from search.contract import end_reason, format_value, stored_epochs, stored_prune_kind, was_preempted
from search.pruning import COLLAPSE_KIND, EpochEvidence, Thresholds, collapsed, prune_kind

NOT_SET = "(not set)"
DISCRETE_MAX = 6  # an integer parameter with at most this many distinct values is binned by value


class Ending(str, Enum):
    COLLAPSED = "collapsed"  # pruned by the collapse rule, or by another at a collapsed epoch
    PRUNED = "pruned"  # by the inner rule, or a diverged loss
    COMPLETE = "complete"
    FAILED = "failed"  # counted apart: in no share and no measure


FINISHED = (Ending.COLLAPSED, Ending.PRUNED, Ending.COMPLETE)


def _collapsed_at_prune(trial: FrozenTrial) -> bool:
    """The last stored epoch of a pruned trial is collapsed (the collapse rule's test)."""
    records = stored_epochs(trial)
    if not records:
        return False
    epoch, metrics = records[-1]
    return collapsed(EpochEvidence.from_metrics(epoch, metrics), Thresholds())


def ending(trial: FrozenTrial) -> Ending | None:
    """How the trial ended; ``None`` while it runs or waits, and for one stopped by a signal."""
    if trial.state == TrialState.COMPLETE:
        return Ending.COMPLETE
    if trial.state == TrialState.PRUNED:
        kind = stored_prune_kind(trial) or prune_kind(end_reason(trial))
        return Ending.COLLAPSED if kind == COLLAPSE_KIND or _collapsed_at_prune(trial) else Ending.PRUNED
    if trial.state == TrialState.FAIL and not was_preempted(trial):
        return Ending.FAILED
    return None


@dataclass
class Counts:
    """Trials by ending; shares are of the finished ones (failed apart)."""

    by: dict[Ending, int] = field(default_factory=lambda: dict.fromkeys(Ending, 0))

    @property
    def finished(self) -> int:
        return sum(self.by[e] for e in FINISHED)

    def share(self, e: Ending) -> float:
        return self.by[e] / self.finished if self.finished else math.nan


@dataclass(frozen=True)
class ParamAttribution:
    name: str
    bins: list[tuple[str, Counts]]  # (label, counts), in value order
    gain: float  # bits: mutual information of the bin with collapsed-vs-not
    adjusted: float  # gain less its expectation under independence, at least 0: the rank
    p_value: float  # G-test; NaN without a collapse or with one bin
    n: int  # the finished trials it rests on


@dataclass(frozen=True)
class Attribution:
    total: Counts
    entropy: float  # bits of collapsed-vs-not over the finished trials
    params: list[ParamAttribution]  # best predictor of a collapse first


def entropy(counts: Sequence[int]) -> float:
    """Entropy in bits of the outcome counts ``counts``; 0 without any."""
    n = sum(counts)
    return -sum(c / n * math.log2(c / n) for c in counts if c) if n else 0.0


def information_gain(table: Sequence[tuple[int, int]]) -> tuple[float, float, float]:
    """``(gain, adjusted, p)`` of bins given as ``(collapsed, not collapsed)`` finished trials each
    (see the module docstring); empty bins do not count."""
    rows = [r for r in table if sum(r)]
    n = sum(sum(r) for r in rows)
    if not n:
        return 0.0, 0.0, math.nan
    h = entropy([sum(r[0] for r in rows), sum(r[1] for r in rows)])
    gain = max(0.0, h - sum(sum(r) / n * entropy(r) for r in rows))
    df = len(rows) - 1
    adjusted = max(0.0, gain - df / (2 * n * math.log(2)))
    if h == 0 or df == 0:
        return gain, adjusted, math.nan
    from scipy.stats import chi2

    return gain, adjusted, float(chi2.sf(2 * n * math.log(2) * gain, df))


def _round2(x: float) -> float:
    return float(f"{x:.2g}")


def _cuts(values: Sequence[float], k: int, log: bool) -> list[float]:
    """Up to ``k - 1`` cut points between quantile groups of ``values``, rounded (see docstring)."""
    ordered = sorted(values)
    cuts: list[float] = []
    for i in range(1, k):
        j = min(len(ordered) - 1, max(1, round(i * len(ordered) / k)))
        lo, hi = ordered[j - 1], ordered[j]
        mid = math.sqrt(lo * hi) if log and lo > 0 else (lo + hi) / 2
        cut = _round2(mid)
        if ordered[0] < cut <= ordered[-1] and cut not in cuts:
            cuts.append(cut)
    return sorted(cuts)


def _bin_count(n: int) -> int:
    return 2 if n < 12 else 3 if n < 40 else 4


def binned(trials: Sequence[FrozenTrial], name: str) -> tuple[list[str], list[str]]:
    """Each trial's bin of parameter ``name`` and every bin's label, in value order."""
    dist = next((t.distributions[name] for t in trials if name in t.distributions), None)
    present = [t.params[name] for t in trials if name in t.params]
    if isinstance(dist, CategoricalDistribution):
        order = [format_value(c) for c in dist.choices]
        labels = [format_value(t.params[name]) if name in t.params else NOT_SET for t in trials]
    elif (not isinstance(dist, (FloatDistribution, IntDistribution)) or len(set(present)) <= _bin_count(len(present))
          or (isinstance(dist, IntDistribution) and len(set(present)) <= DISCRETE_MAX)):
        order = [format_value(v) for v in sorted(set(present), key=_sortable)]
        labels = [format_value(t.params[name]) if name in t.params else NOT_SET for t in trials]
    else:
        cuts = _cuts([float(v) for v in present], _bin_count(len(present)), dist.log)
        edges = [f"{c:.2g}" for c in cuts]
        order = ([f"< {edges[0]}"] + [f"{a} - {b}" for a, b in zip(edges, edges[1:], strict=False)]
                 + [f">= {edges[-1]}"]) if cuts else ["all"]
        labels = [order[bisect.bisect_right(cuts, float(t.params[name]))] if name in t.params else NOT_SET
                  for t in trials]
    if NOT_SET in labels:
        order.append(NOT_SET)
    return labels, [b for b in order if b in labels]


def _sortable(value: Any) -> tuple[int, float, str]:
    return (0, float(value), "") if isinstance(value, (int, float)) else (1, 0.0, str(value))


def attribute(study: optuna.Study) -> Attribution:
    """The study's trials by ending, overall and per parameter bin; parameters ranked."""
    ended = [(t, e) for t in study.get_trials(deepcopy=False) if (e := ending(t)) is not None]
    total = Counts()
    for _, e in ended:
        total.by[e] += 1
    names = list(dict.fromkeys(name for t, _ in ended for name in t.params))
    params = [_attribute_param(ended, name) for name in names]
    params.sort(key=lambda p: (-p.adjusted, -p.gain, p.name))
    return Attribution(total, entropy([total.by[Ending.COLLAPSED], total.finished - total.by[Ending.COLLAPSED]]),
                       params)


def _attribute_param(ended: Sequence[tuple[FrozenTrial, Ending]], name: str) -> ParamAttribution:
    labels, order = binned([t for t, _ in ended], name)
    bins = {label: Counts() for label in order}
    for label, (_, e) in zip(labels, ended, strict=True):
        bins[label].by[e] += 1
    table = [(c.by[Ending.COLLAPSED], c.finished - c.by[Ending.COLLAPSED]) for c in bins.values()]
    gain, adjusted, p = information_gain(table)
    return ParamAttribution(name, list(bins.items()), gain, adjusted, p, sum(c.finished for c in bins.values()))
