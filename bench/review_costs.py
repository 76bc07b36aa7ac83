"""What reviewing costs a search: the worker's trial note, study note (``octsearch why``'s
ranking) and study figures at each trial's end, and the review commands (``octsearch report``,
``why``, ``trials``, ``best`` with its bootstrap intervals), on a study of 40 trials of 10 epochs
(every third one pruned at epoch 2). Prints a table; numbers, not assertions.

    .venv/bin/python bench/review_costs.py                                   # a fresh SQLite file
    .venv/bin/python bench/review_costs.py --storage postgresql+psycopg://postgres@127.0.0.1:5432/test

The study is written through the same attribute writers as a real search (fake epoch metrics of
tests/search/fake_fit.py); a study made on a server is deleted afterwards.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState

from search.contract import write_best_epoch, write_epoch, write_prune_reason
from search.review.html_report import build_report
from search.review.leaderboard import format_best
from search.review.notes import refresh_study_figures, save_study_note, save_trial_note
from search.review.trial_table import format_trials
from search.review.why import format_why
from search.space.search_space import space_from_dict
from search.storage.sql import open_storage
from search.study.join import open_study

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "search"))
from fake_fit import epoch_metrics  # noqa: E402
from search_testing import FAKE_SPACE  # noqa: E402


def build_study(url: str, trials: int, epochs: int) -> optuna.Study:
    raw = copy.deepcopy(FAKE_SPACE)
    raw["base"]["train"]["epochs"] = epochs
    space = space_from_dict(raw)
    study, _ = open_study(space, open_storage(url, heartbeat=False), f"bench-{time.time_ns()}")
    for n in range(trials):
        trial = study.ask()
        space.suggest(trial)
        collapsed = n % 3 == 0
        for e in range(3 if collapsed else epochs):
            write_epoch(trial, e, epoch_metrics(e, collapsed))
            trial.report(0.25 if collapsed else min(0.9, 0.5 + 0.1 * e), e)
        if collapsed:
            write_prune_reason(trial, "stuck: 96% of validation predictions are class 0")
            study.tell(trial, state=TrialState.PRUNED)
        else:
            write_best_epoch(trial, 4)
            study.tell(trial, 0.9)
    return study


def timed(fn: object, *args: object) -> float:
    start = time.perf_counter()
    fn(*args)  # type: ignore[operator]
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--storage", help="default: a SQLite file in a temporary folder")
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    url = args.storage or f"sqlite:///{tempfile.mkdtemp()}/bench.db"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = build_study(url, args.trials, args.epochs)
    last = optuna.Trial(study, study.trials[-1]._trial_id)
    try:
        metric = "balanced_accuracy"
        rows = [("trial note (first: imports optuna_dashboard)", timed(save_trial_note, study, last, metric)),
                ("trial note", timed(save_trial_note, study, last, metric)),
                ("study note (the why ranking)", timed(save_study_note, study)),
                ("study figures (first)", timed(refresh_study_figures, study)),
                ("study figures (refresh)", timed(refresh_study_figures, study)),
                ("octsearch why", timed(format_why, study)),
                ("octsearch trials", timed(format_trials, study)),
                ("octsearch best (bootstrap intervals of every completed trial)", timed(format_best, study))]
        start = time.perf_counter()
        size = len(build_report(study))
        rows.append((f"report ({size / 1e6:.1f} MB)", time.perf_counter() - start))
        print(f"| {args.trials} trials x {args.epochs} epochs, {url.split(':')[0]} | seconds |\n|---|---|")
        for name, seconds in rows:
            print(f"| {name} | {seconds:.2f} |")
    finally:
        if args.storage:
            optuna.delete_study(study_name=study.study_name, storage=url)


if __name__ == "__main__":
    main()
