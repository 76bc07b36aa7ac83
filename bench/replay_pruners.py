"""Replay searches over recorded learning curves through Optuna's real loop, once per pruner.

    bench/replay_pruners.py --curves bench/data/curves-tuning.jsonl.gz --orders 200 [--trials 40]

A tabular benchmark in the manner of LCBench / HPOBench / YAHPO: every configuration of a
recording (``bench/record_curves.py``) was trained for the full budget, so a search under any
pruner can be replayed without training. Each replay is a random order of *all* the
configurations of a recording (``--orders`` of them, order ``k`` drawn from seed ``k``); with
``--trials K`` searches of ``K`` configurations are replayed too and reported in a table of their
own. Every pruner sees the same orders. Each trial goes through ``study.ask()``, the search's own
:class:`~search.trial.reporter.EpochReporter` (which writes the per-epoch record and asks
``trial.should_prune()``), and ``study.tell()``, so the pruner under test decides from exactly
what it reads in a live search. The ``configured`` row is the pruner that ``octsearch run``
builds from the space file (``--space``; default: the space file named in the recording).

Columns per pruner (definitions are printed with each table): epochs as a fraction of
NopPruner's (mean and 90 % interval over orders), mean regret, P(regret > tol), the share of
orders in which every configuration within ``tol`` of the best was pruned (``best lost``), the
median stop epoch of collapsed trials, and the simulated wall time (recorded ``epoch_s`` of
every epoch run). ``tol`` is one validation volume of the smallest class in balanced accuracy,
``1 / (C * n_min)``, from the recording's validation class counts (``--tol`` overrides it). The
last row is a hindsight bound: an oracle that stops each collapsed trial after one epoch and each
learning trial at the first epoch where its best so far plus the largest later gain seen in the
recording stays below the incumbent.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import multiprocessing
import os
import statistics
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna

from search.contract import write_schedule
from search.optuna_compat import no_experimental_warning
from search.space.search_space import SearchSpace, load_space
from search.trial.reporter import EpochReporter

sys.path.insert(0, str(Path(__file__).resolve().parent))
from recordings import (  # noqa: E402  (a sibling script)
    COLLAPSED_DEFINITION,
    HINDSIGHT_DEFINITION,
    Config,
    Recording,
    epoch_seconds,
    full_curve_best,
    hindsight_run,
    is_collapsed,
    load_recording,
    recording_best,
    validation_counts,
    validation_tolerance,
)

__all__ = ["COLLAPSED_DEFINITION", "HINDSIGHT_DEFINITION", "Config", "Recording", "full_curve_best",
           "is_collapsed", "load_recording", "recording_best", "validation_counts", "validation_tolerance"]

COLUMNS_DEFINITION = (
    "frac: epochs run / NopPruner's, mean [5th-95th percentile] over orders; regret: NopPruner's best minus "
    "this pruner's best (best of COMPLETE trials); P(reg>tol): share of orders with regret > tol; best lost: "
    "share of orders in which every configuration within tol of the order's best was pruned; med stop: median "
    "last epoch (0-based) of collapsed trials over all orders, budget-1 for those never stopped; sim wall: "
    "recorded epoch_s of every epoch run, mean per search")

# ---------------------------------------------------------------------------------------------
# Pruners under test
# ---------------------------------------------------------------------------------------------

PrunerFactory = Callable[[], optuna.pruners.BasePruner]


def _patient_median() -> optuna.pruners.BasePruner:
    with no_experimental_warning():
        return optuna.pruners.PatientPruner(optuna.pruners.MedianPruner(), patience=2)


def pruner_factories(space: SearchSpace, budget: int) -> dict[str, PrunerFactory]:
    """Every pruner of the benchmark, each built fresh per replay (pruners may hold state)."""
    spec = space.pruner
    reach_defaults = dataclasses.replace(spec, inner="reach", inner_options={})
    collapse_only = dataclasses.replace(spec, inner="none", inner_options={})
    with_median = dataclasses.replace(spec, inner="median", inner_options={})
    with_hyperband = dataclasses.replace(spec, inner="hyperband",
                                         inner_options={"min_resource": 1, "max_resource": budget})

    def collapse_with(inner: PrunerFactory) -> PrunerFactory:
        def build() -> optuna.pruners.BasePruner:
            pruner = collapse_only.build()
            pruner._inner = inner()  # noqa: SLF001  (the benchmark's own wrapper, not Optuna's)
            return pruner
        return build

    return {
        "nop": optuna.pruners.NopPruner,
        "median": optuna.pruners.MedianPruner,
        "percentile25": lambda: optuna.pruners.PercentilePruner(25.0),
        "hyperband": lambda: optuna.pruners.HyperbandPruner(min_resource=1, max_resource=budget),
        "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
        "patient(median)": _patient_median,
        "reach": lambda: reach_defaults.build()._inner,  # noqa: SLF001
        "collapse": collapse_only.build,
        "collapse+median": with_median.build,
        "collapse+hyperband": with_hyperband.build,
        "collapse+patient(median)": collapse_with(_patient_median),
        "collapse+reach": reach_defaults.build,
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
    write_schedule(trial, unfreeze_at_epoch=config.unfreeze_at_epoch, epochs=rec.budget)
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
    """The trials of replay ``seed``: ``trials`` configurations without replacement, in random order."""
    rng = np.random.default_rng(seed)
    return [int(i) for i in rng.permutation(n_configs)[: min(trials, n_configs)]]


def hindsight(rec: Recording, order: Sequence[int]) -> list[Outcome]:
    """The hindsight bound's search over ``order`` (see :data:`HINDSIGHT_DEFINITION`)."""
    return [Outcome(c, state, ran, epoch_seconds(c, ran), "hindsight" if state == "pruned" else None)
            for c, state, ran in hindsight_run(rec, order)]


# ---------------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Score:
    """One replayed search under one pruner."""

    epochs: int
    best: float  # best value among COMPLETE trials (what Optuna's best_trial reports)
    best_lost: bool  # every configuration within tol of the order's best was pruned
    wall_s: float
    collapsed_stops: tuple[tuple[int, int], ...] = ()  # (unfreeze epoch, last epoch run) per collapsed trial


def score(outcomes: Sequence[Outcome], rec: Recording, tol: float) -> Score:
    def best_of(configs: Sequence[Config]) -> float:
        values = [v for c in configs if not math.isnan(v := full_curve_best(c, rec))]
        return (max(values) if rec.maximize else min(values)) if values else math.nan

    complete = [o.config for o in outcomes if o.state == "complete"]
    reachable = best_of([o.config for o in outcomes if o.config.state == "complete"])
    near = [o for o in outcomes if o.config.state == "complete" and _within(full_curve_best(o.config, rec),
                                                                         reachable, tol, rec.maximize)]
    collapsed = [o for o in outcomes if is_collapsed(o.config)]
    return Score(
        epochs=sum(o.epochs_run for o in outcomes),
        best=best_of(complete),
        best_lost=bool(near) and all(o.state == "pruned" for o in near),
        wall_s=sum(o.wall_s for o in outcomes),
        collapsed_stops=tuple((o.config.unfreeze_at_epoch, o.epochs_run - 1) for o in collapsed),
    )


def _within(value: float, best: float, tol: float, maximize: bool) -> bool:
    if math.isnan(value) or math.isnan(best):
        return False
    return value >= best - tol - 1e-12 if maximize else value <= best + tol + 1e-12


HINDSIGHT = "hindsight bound"


def evaluate_orders(rec: Recording, factories: Mapping[str, PrunerFactory], trials: int, seeds: Sequence[int],
                    tol: float) -> dict[str, list[Score]]:
    """Scores per pruner, one per order (order ``k`` drawn from seed ``k``); the hindsight bound last."""
    out: dict[str, list[Score]] = {name: [] for name in [*factories, HINDSIGHT]}
    for seed in seeds:
        order = draw_order(len(rec.configs), trials, seed)
        for name, factory in factories.items():
            out[name].append(score(replay(rec, factory, order), rec, tol))
        out[HINDSIGHT].append(score(hindsight(rec, order), rec, tol))
    return out


_JOB: dict[str, Any] = {}


def _evaluate_chunk(seeds: Sequence[int]) -> dict[str, list[Score]]:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    rec, space, names, trials, tol = (_JOB[k] for k in ("rec", "space", "names", "trials", "tol"))
    factories = {n: f for n, f in pruner_factories(space, rec.budget).items() if n in names}
    return evaluate_orders(rec, factories, trials, seeds, tol)


def evaluate(rec: Recording, space: SearchSpace, names: Sequence[str], trials: int, orders: int, tol: float,
             jobs: int = 1) -> dict[str, list[Score]]:
    """:func:`evaluate_orders` over orders ``0 .. orders-1``, on ``jobs`` processes (same result)."""
    _JOB.update(rec=rec, space=space, names=list(names), trials=trials, tol=tol)
    chunks = [list(range(orders))[k::jobs] for k in range(max(1, jobs))]
    if jobs <= 1:
        parts = [_evaluate_chunk(chunks[0])]
    else:
        with multiprocessing.get_context("fork").Pool(jobs) as pool:
            parts = pool.map(_evaluate_chunk, chunks)
    merged: dict[str, list[tuple[int, Score]]] = {}
    for chunk, part in zip(chunks, parts, strict=True):
        for name, scores in part.items():
            merged.setdefault(name, []).extend(zip(chunk, scores, strict=True))
    return {name: [s for _, s in sorted(pairs, key=lambda p: p[0])] for name, pairs in merged.items()}


def summarize(scores: Mapping[str, list[Score]], tol: float, maximize: bool = True) -> dict[str, dict[str, float]]:
    """Per pruner: the columns of the table and of ``--json`` (fractions and regret against nop)."""
    nop = scores["nop"]
    out: dict[str, dict[str, float]] = {}
    for name, per_order in scores.items():
        pairs = list(zip(per_order, nop, strict=True))
        fractions = [s.epochs / n.epochs for s, n in pairs if n.epochs]
        regrets = [(n.best - s.best) if maximize else (s.best - n.best) for s, n in pairs]
        regrets = [r if not math.isnan(r) else math.inf for r in regrets]  # no complete trial at all
        stops = [stop for s in per_order for _, stop in s.collapsed_stops]
        out[name] = {
            "epochs_fraction": statistics.fmean(fractions),
            "epochs_fraction_p05": float(np.percentile(fractions, 5)),
            "epochs_fraction_p95": float(np.percentile(fractions, 95)),
            "regret": statistics.fmean(regrets),
            "p_regret": sum(r > tol + 1e-12 for r in regrets) / len(regrets),
            "best_lost": sum(s.best_lost for s in per_order) / len(per_order),
            "median_stop_epoch": float(statistics.median(stops)) if stops else math.nan,
            "wall_s": statistics.fmean(s.wall_s for s in per_order),
            "tol": tol,
        }
    return out


JSON_KEYS = ("epochs_fraction", "regret", "p_regret", "best_lost", "median_stop_epoch", "tol")


def format_table(summary: Mapping[str, Mapping[str, float]]) -> str:
    headers = ["pruner", "frac [90% interval]", "regret", "P(reg>tol)", "best lost", "med stop", "sim wall"]
    rows = [[name, f"{r['epochs_fraction']:.2f} [{r['epochs_fraction_p05']:.2f}-{r['epochs_fraction_p95']:.2f}]",
             f"{r['regret']:.3f}", f"{r['p_regret']:.2f}", f"{r['best_lost']:.2f}",
             "n/a" if math.isnan(r["median_stop_epoch"]) else f"{r['median_stop_epoch']:.1f}",
             f"{r['wall_s'] / 60:.1f} min"] for name, r in summary.items()]
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=True)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(line, widths, strict=True)).rstrip()
             for line in [headers, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_stops_by_unfreeze(per_order: Sequence[Score], budget: int) -> str:
    """Where one pruner stopped the collapsed trials, by the epoch their encoder unfreezes (all orders)."""
    by: dict[int, list[int]] = {}
    for s in per_order:
        for unfreeze, stop in s.collapsed_stops:
            by.setdefault(unfreeze, []).append(stop)
    rows = []
    for unfreeze in sorted(by):
        stops = by[unfreeze]
        ran_out = sum(1 for x in stops if x >= budget - 1)
        rows.append(f"  unfreeze {'never' if unfreeze < 0 else unfreeze:>5}: {len(stops):4d} collapsed trials, "
                    f"median stop epoch {statistics.median(stops):.1f}, latest {max(stops)}, ran the budget {ran_out}")
    return "\n".join(rows)


def describe(rec: Recording, trials: int, orders: int, tol: float) -> str:
    n_collapsed = sum(is_collapsed(c) for c in rec.configs)
    h = rec.header
    what = "all configurations" if trials >= len(rec.configs) else f"{trials} configurations drawn"
    return (f"{rec.path}: {len(rec.configs)} configurations x {rec.budget} epochs of {h.get('space_file')} on "
            f"{h.get('manifest')} (sampler seed {h.get('seed')}); {n_collapsed} collapsed; best full-curve "
            f"{rec.metric_key} {recording_best(rec):.3f}; validation class counts {validation_counts(rec)}, "
            f"tol {tol:.4f}; {orders} orders of {what}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--curves", action="append", required=True, help="a recording (repeat for more)")
    parser.add_argument("--orders", "--seeds", type=int, default=200, dest="orders",
                        help="replayed searches per pruner and recording (default 200)")
    parser.add_argument("--trials", type=int, help="also replay searches of this many configurations")
    parser.add_argument("--tol", type=float, help="regret tolerance (default: one minority validation volume)")
    parser.add_argument("--pruners", help="comma-separated rows to run (default: all; nop always runs)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="processes (default: all cores)")
    parser.add_argument("--space", help="space file whose pruner is 'configured' (default: the recording's)")
    parser.add_argument("--json", help="write the summary here")
    args = parser.parse_args(argv)
    if args.orders < 1 or (args.trials is not None and args.trials < 1) or args.jobs < 1:
        parser.error(f"--orders, --trials and --jobs must be >= 1, got {args.orders}, {args.trials}, {args.jobs}")
    if args.tol is not None and not args.tol >= 0:
        parser.error(f"--tol must be >= 0, got {args.tol}")
    for path in args.curves:
        if not Path(path).is_file():
            parser.error(f"--curves {path!r} does not exist")
    return args


def _names(args: argparse.Namespace, space: SearchSpace, budget: int) -> list[str]:
    known = list(pruner_factories(space, budget))
    if not args.pruners:
        return known
    asked = [n.strip() for n in args.pruners.split(",") if n.strip()]
    unknown = [n for n in asked if n not in known]
    if unknown:
        raise SystemExit(f"replay_pruners: unknown pruner {', '.join(unknown)} (known: {', '.join(known)})")
    return ["nop", *[n for n in asked if n != "nop"]]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    doc: dict[str, Any] = {"recordings": {}, "subsets": {}, "orders": args.orders}
    for path in args.curves:
        rec = load_recording(path)
        space = load_space(args.space or rec.header["space_file"])
        tol = args.tol if args.tol is not None else validation_tolerance(rec)
        names = _names(args, space, rec.budget)
        sizes = [len(rec.configs)] + ([args.trials] if args.trials and args.trials < len(rec.configs) else [])
        for size in sizes:
            scores = evaluate(rec, space, names, size, args.orders, tol, args.jobs)
            summary = summarize(scores, tol, rec.maximize)
            print(describe(rec, size, args.orders, tol))
            print(format_table(summary))
            if "configured" in scores:
                print("configured pruner: collapsed trials by unfreeze epoch (all orders)")
                print(format_stops_by_unfreeze(scores["configured"], rec.budget))
            print(flush=True)
            rows = {name: {k: row[k] for k in JSON_KEYS} for name, row in summary.items()}
            if size == len(rec.configs):
                doc["recordings"][path] = rows
            else:
                doc["subsets"][path] = {"trials": size, **rows}
    print(COLLAPSED_DEFINITION)
    print(COLUMNS_DEFINITION)
    print(HINDSIGHT_DEFINITION)
    if args.json:
        doc["definitions"] = {"collapsed": COLLAPSED_DEFINITION, "columns": COLUMNS_DEFINITION,
                              "hindsight": HINDSIGHT_DEFINITION}
        Path(args.json).write_text(json.dumps(doc, indent=2, allow_nan=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
