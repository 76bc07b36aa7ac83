"""Replay searches over recorded learning curves through Optuna's real loop, once per pruner.

    bench/replay_pruners.py --curves bench/data/curves-tuning.jsonl.gz --trials 40 --seeds 5

A tabular benchmark in the manner of LCBench / HPOBench / YAHPO: every configuration of a
recording (``bench/record_curves.py``) was trained for the full budget, so a search under any
pruner can be replayed without training. For each replay seed the order of the trials is drawn
from the recording (``--trials`` of its configurations, without replacement); every pruner sees
the same order for a seed. Each trial goes through ``study.ask()``, the search's own
:class:`~search.trial.reporter.EpochReporter` (which writes the per-epoch record and asks
``trial.should_prune()``), and ``study.tell()``, so the pruner under test decides from exactly
what it reads in a live search. The ``configured`` row is the pruner that ``octsearch run``
builds from the space file (``--space``; default: the space file named in the recording).

Columns (mean ± sd over seeds, per recording): epochs used and their fraction of NopPruner's,
best objective found, regret against NopPruner, collapsed trials run to the end of the budget,
median epoch (0-based) at which collapsed trials stopped, false prunes, simulated wall time
(the recorded ``epoch_s`` of every epoch run). Definitions are printed with the table.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import math
import statistics
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna

from search.contract import UNFREEZE_ATTR, best_step
from search.optuna_compat import no_experimental_warning
from search.space.search_space import SearchSpace, load_space
from search.trial.reporter import EpochReporter, metric_value

COLLAPSE_MARGIN = 0.10  # a collapsed trial never gets above chance + this, in any epoch
FALSE_PRUNE_TOLERANCE = 0.02  # a pruned trial whose full curve reaches best - this was a loss
COLLAPSED_DEFINITION = (
    f"collapsed trial: its full recorded curve never exceeds chance + {COLLAPSE_MARGIN:.2f} balanced "
    f"accuracy (1/C + {COLLAPSE_MARGIN:.2f}; 0.35 for 4 classes) in any epoch")
FALSE_PRUNE_DEFINITION = (
    f"false prune: a pruned trial whose full recorded curve reaches within {FALSE_PRUNE_TOLERANCE} of the "
    "best full-curve value in the recording")


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


# ---------------------------------------------------------------------------------------------
# Pruners under test
# ---------------------------------------------------------------------------------------------

PrunerFactory = Callable[[], optuna.pruners.BasePruner]


def pruner_factories(space: SearchSpace, budget: int) -> dict[str, PrunerFactory]:
    """Every pruner of the benchmark, each built fresh per replay (pruners may hold state)."""
    spec = space.pruner
    collapse_only = dataclasses.replace(spec, inner="none", inner_options={})
    with_median = dataclasses.replace(spec, inner="median", inner_options={})
    with_hyperband = dataclasses.replace(spec, inner="hyperband",
                                         inner_options={"min_resource": 1, "max_resource": budget})
    return {
        "nop": optuna.pruners.NopPruner,
        "median": optuna.pruners.MedianPruner,
        "percentile25": lambda: optuna.pruners.PercentilePruner(25.0),
        "hyperband": lambda: optuna.pruners.HyperbandPruner(min_resource=1, max_resource=budget),
        "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
        "collapse": collapse_only.build,
        "collapse+median": with_median.build,
        "collapse+hyperband": with_hyperband.build,
        "configured": spec.build,
    }


# ---------------------------------------------------------------------------------------------
# Replay
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """How one replayed trial ended under one pruner."""

    config: Config
    state: str  # complete | pruned | failed
    epochs_run: int
    wall_s: float
    reason: str | None


def replay_trial(study: optuna.Study, config: Config, rec: Recording) -> Outcome:
    trial = study.ask()
    trial.set_user_attr(UNFREEZE_ATTR, config.unfreeze_at_epoch)
    reporter = EpochReporter(trial, rec.metric_key)
    wall = 0.0
    for epoch, metrics in enumerate(config.epochs[: rec.budget]):
        wall += float(metrics.get("epoch_s") or 0.0)
        try:
            reporter(epoch, metrics)
        except optuna.TrialPruned as err:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            return Outcome(config, "pruned", epoch + 1, wall, str(err))
    ran = min(len(config.epochs), rec.budget)
    if config.state == "diverged":  # octsearch run prunes a diverged trial, with its reason
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        return Outcome(config, "pruned", ran, wall, "diverged")
    value = full_curve_best(dataclasses.replace(config, epochs=config.epochs[: rec.budget]), rec)
    if config.state == "failed" or math.isnan(value):
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        return Outcome(config, "failed", ran, wall, None)
    study.tell(trial, value)
    return Outcome(config, "complete", ran, wall, None)


def replay(rec: Recording, factory: PrunerFactory, order: Sequence[int]) -> list[Outcome]:
    """One search: the configurations ``order`` (indices into ``rec.configs``), one pruner."""
    with no_experimental_warning():
        # A fixed name: Hyperband assigns brackets from a hash of the study name.
        study = optuna.create_study(direction="maximize" if rec.maximize else "minimize", study_name="replay",
                                    sampler=optuna.samplers.RandomSampler(seed=0), pruner=factory())
    return [replay_trial(study, rec.configs[i], rec) for i in order]


def draw_order(n_configs: int, trials: int, seed: int) -> list[int]:
    """The trials of replay ``seed``: ``trials`` configurations without replacement."""
    rng = np.random.default_rng(seed)
    return [int(i) for i in rng.permutation(n_configs)[: min(trials, n_configs)]]


# ---------------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Score:
    epochs: int
    best: float
    collapsed_run_to_end: int
    median_stop_epoch: float  # of collapsed trials, 0-based; NaN when there are none
    false_prunes: int
    wall_s: float
    collapsed_stops: tuple[tuple[int, int], ...] = ()  # (unfreeze epoch, last epoch run) per collapsed trial


def score(outcomes: Sequence[Outcome], rec: Recording, recording_best: float) -> Score:
    # The study's best: the best value among COMPLETE trials (what Optuna's best_trial reports).
    values = [full_curve_best(o.config, rec) for o in outcomes if o.state == "complete"]
    best = (max(values) if rec.maximize else min(values)) if values else math.nan
    collapsed = [o for o in outcomes if is_collapsed(o.config)]
    stops = [o.epochs_run - 1 for o in collapsed]
    return Score(
        epochs=sum(o.epochs_run for o in outcomes),
        best=best,
        collapsed_run_to_end=sum(1 for o in collapsed if o.state != "pruned" and o.epochs_run >= rec.budget),
        median_stop_epoch=float(statistics.median(stops)) if stops else math.nan,
        false_prunes=sum(1 for o in outcomes if o.state == "pruned" and o.reason != "diverged"
                         and _near_best(full_curve_best(o.config, rec), recording_best, rec.maximize)),
        wall_s=sum(o.wall_s for o in outcomes),
        collapsed_stops=tuple((o.config.unfreeze_at_epoch, o.epochs_run - 1) for o in collapsed),
    )


def _near_best(value: float, best: float, maximize: bool) -> bool:
    if math.isnan(value):
        return False
    return value >= best - FALSE_PRUNE_TOLERANCE if maximize else value <= best + FALSE_PRUNE_TOLERANCE


def recording_best(rec: Recording) -> float:
    values = [v for c in rec.configs if not math.isnan(v := full_curve_best(c, rec))]
    return (max(values) if rec.maximize else min(values)) if values else math.nan


def evaluate(rec: Recording, factories: Mapping[str, PrunerFactory], trials: int,
             seeds: int) -> dict[str, list[Score]]:
    """Scores per pruner, one per seed; every pruner replays the same orders."""
    ref = recording_best(rec)
    out: dict[str, list[Score]] = {name: [] for name in factories}
    for seed in range(seeds):
        order = draw_order(len(rec.configs), trials, seed)
        for name, factory in factories.items():
            out[name].append(score(replay(rec, factory, order), rec, ref))
    return out


def summarize(scores: Mapping[str, list[Score]], maximize: bool = True) -> dict[str, dict[str, float]]:
    """Per pruner: means and sds over seeds of every column (regret and fractions against nop)."""
    nop = scores["nop"]
    out: dict[str, dict[str, float]] = {}
    for name, per_seed in scores.items():
        pairs = list(zip(per_seed, nop, strict=True))
        cols: dict[str, list[float]] = {
            "epochs": [s.epochs for s in per_seed],
            "epochs_fraction": [s.epochs / n.epochs if n.epochs else math.nan for s, n in pairs],
            "best": [s.best for s in per_seed],
            "regret": [(n.best - s.best) if maximize else (s.best - n.best) for s, n in pairs],
            "collapsed_run_to_end": [s.collapsed_run_to_end for s in per_seed],
            "median_stop_epoch": [s.median_stop_epoch for s in per_seed],
            "false_prunes": [s.false_prunes for s in per_seed],
            "wall_s": [s.wall_s for s in per_seed],
        }
        row: dict[str, float] = {}
        for col, xs in cols.items():
            finite = [x for x in xs if not math.isnan(x)]
            row[col] = statistics.fmean(finite) if finite else math.nan
            row[f"{col}_sd"] = statistics.stdev(finite) if len(finite) > 1 else 0.0
        out[name] = row
    return out


def format_table(summary: Mapping[str, Mapping[str, float]]) -> str:
    headers = ["pruner", "epochs", "frac", "best", "regret", "collapsed→end", "med stop", "false prunes", "sim wall"]

    def pm(row: Mapping[str, float], col: str, fmt: str) -> str:
        mean, sd = row[col], row[f"{col}_sd"]
        return "n/a" if math.isnan(mean) else f"{mean:{fmt}} ± {sd:{fmt}}"

    rows = [[name, pm(r, "epochs", ".0f"), pm(r, "epochs_fraction", ".2f"), pm(r, "best", ".3f"),
             pm(r, "regret", ".3f"), pm(r, "collapsed_run_to_end", ".1f"), pm(r, "median_stop_epoch", ".1f"),
             pm(r, "false_prunes", ".1f"), f"{r['wall_s'] / 60:.1f} min"] for name, r in summary.items()]
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=True)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(line, widths, strict=True)) for line in [headers, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_stops_by_unfreeze(per_seed: Sequence[Score], budget: int) -> str:
    """Where one pruner stopped the collapsed trials, by the epoch their encoder unfreezes (all seeds)."""
    by: dict[int, list[int]] = {}
    for s in per_seed:
        for unfreeze, stop in s.collapsed_stops:
            by.setdefault(unfreeze, []).append(stop)
    rows = []
    for unfreeze in sorted(by):
        stops = by[unfreeze]
        ran_out = sum(1 for x in stops if x >= budget - 1)
        rows.append(f"  unfreeze {'never' if unfreeze < 0 else unfreeze:>5}: {len(stops):3d} collapsed trials, "
                    f"median stop epoch {statistics.median(stops):.1f}, latest {max(stops)}, ran the budget {ran_out}")
    return "\n".join(rows)


def describe(rec: Recording, trials: int, seeds: int) -> str:
    n_collapsed = sum(is_collapsed(c) for c in rec.configs)
    h = rec.header
    return (f"{rec.path}: {len(rec.configs)} configurations x {rec.budget} epochs of {h.get('space_file')} on "
            f"{h.get('manifest')} (sampler seed {h.get('seed')}); {n_collapsed} collapsed; best full-curve "
            f"{rec.metric_key} {recording_best(rec):.3f}; replayed {trials} trials x {seeds} seeds")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--curves", action="append", required=True, help="a recording (repeat for more)")
    parser.add_argument("--trials", type=int, default=40, help="trials per replayed search")
    parser.add_argument("--seeds", type=int, default=5, help="replayed searches per pruner")
    parser.add_argument("--space", help="space file whose pruner is 'configured' (default: the recording's)")
    parser.add_argument("--json", help="write the summary here")
    args = parser.parse_args(argv)
    if args.trials < 1 or args.seeds < 1:
        parser.error(f"--trials and --seeds must be >= 1, got {args.trials} and {args.seeds}")
    for path in args.curves:
        if not Path(path).is_file():
            parser.error(f"--curves {path!r} does not exist")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    per_file: dict[str, dict[str, dict[str, float]]] = {}
    pooled: dict[str, list[Score]] = {}
    for path in args.curves:
        rec = load_recording(path)
        space = load_space(args.space or rec.header["space_file"])
        scores = evaluate(rec, pruner_factories(space, rec.budget), args.trials, args.seeds)
        summary = summarize(scores, rec.maximize)
        per_file[path] = summary
        for name, s in scores.items():
            pooled.setdefault(name, []).extend(s)
        print(describe(rec, args.trials, args.seeds))
        print(format_table(summary))
        print("configured pruner: collapsed trials by unfreeze epoch (all seeds)")
        print(format_stops_by_unfreeze(scores["configured"], rec.budget))
        print()
    print(COLLAPSED_DEFINITION)
    print(FALSE_PRUNE_DEFINITION)
    print("collapsed→end: collapsed trials that ran the whole budget; med stop: median last epoch (0-based) "
          "of collapsed trials, budget-1 for those never stopped; regret: NopPruner's best minus this best")
    if args.json:
        keys = ("epochs_fraction", "regret", "false_prunes", "collapsed_run_to_end", "median_stop_epoch")
        pooled_summary = summarize(pooled, rec.maximize)
        doc: dict[str, Any] = {name: {k: row[k] for k in keys} for name, row in pooled_summary.items()}
        doc["recordings"] = {p: {name: {k: row[k] for k in keys} for name, row in s.items()}
                             for p, s in per_file.items()}
        doc["definitions"] = {"collapsed": COLLAPSED_DEFINITION, "false_prune": FALSE_PRUNE_DEFINITION}
        Path(args.json).write_text(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
