"""SQL statements a trial process sends per epoch (search/trial/reporter.py ``EpochReporter``), by kind.

A study on ``--storage`` gets ``--others`` running trials with 5 recorded epochs each and 4
completed ones; then one more trial reports up to 8 recorded epochs of a configuration that
learns (so that the pruner lets it run), and every statement its storage engine sends is
counted with a SQLAlchemy cursor hook. The pruner is the one of ``--space``.

    .venv/bin/python bench/epoch_sql.py
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import gzip
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from search.space.search_space import load_space  # noqa: E402
from search.storage.sql import open_storage  # noqa: E402
from search.storage.urls import redact  # noqa: E402
from search.study.join import open_study, stored_space  # noqa: E402
from search.trial.reporter import EpochReporter  # noqa: E402

DEFAULT_DB = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def kind(statement: str) -> str:
    """``SELECT trials``, ``INSERT INTO``...: the verb and the first table read."""
    words = statement.split()
    table = statement.split(" FROM ", 1)[1].split()[0] if " FROM " in statement else " ".join(words[1:2])
    return f"{words[0]} {table}"


def report_epochs(reporter: EpochReporter, curve: list[dict[str, Any]], epochs: int) -> list[float]:
    times = []
    for metrics in curve[:epochs]:
        t0 = time.perf_counter()
        try:
            reporter(int(metrics["epoch"]), metrics)
        except optuna.TrialPruned:
            break
        times.append(time.perf_counter() - t0)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--storage", default=DEFAULT_DB)
    parser.add_argument("--space", type=Path, default=REPO / "spaces" / "smoke.yaml")
    parser.add_argument("--curves", type=Path, default=REPO / "bench" / "data" / "curves-tuning.jsonl.gz")
    parser.add_argument("--others", type=int, default=7, help="other running trials")
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with gzip.open(args.curves, "rt") as f:
        curves = [r["epochs"] for r in (json.loads(line) for line in list(f)[1:]) if r.get("epochs")]
    learns = next(c for c in curves[args.others + 4:] if len(c) >= 8
                  and min(float(m["val/balanced_accuracy"]) for m in c[2:8]) > 0.5)
    name = f"epoch-sql-{uuid.uuid4().hex[:8]}"
    admin = open_storage(args.storage, heartbeat=False)
    open_study(dataclasses.replace(load_space(args.space), enqueue=()), admin, name)
    storage = open_storage(args.storage, heartbeat=False)  # as a trial process opens it
    try:
        study = optuna.load_study(study_name=name, storage=storage, sampler=optuna.samplers.RandomSampler())
        space = stored_space(study)
        study.pruner = space.pruner.build()
        others = [study.ask() for _ in range(args.others + 4)]
        for trial, curve in zip(others, curves, strict=False):
            report_epochs(EpochReporter(trial, space.objective.metric_key), curve, 5)
        for trial in others[:4]:
            study.tell(trial, 0.5)
        trial = study.ask()
        counts: collections.Counter[str] = collections.Counter()
        assert isinstance(storage, optuna.storages.RDBStorage), "a database URL, not grpc://"
        sqlalchemy.event.listen(storage.engine, "before_cursor_execute",
                                lambda _c, _cur, statement, *_: counts.update([kind(statement)]))
        times = report_epochs(EpochReporter(trial, space.objective.metric_key), learns, 8)
    finally:
        optuna.delete_study(study_name=name, storage=admin)
    n = max(len(times), 1)
    print(f"SQL per epoch: {redact(args.storage)}, {args.others} other running trials, pruner of "
          f"{args.space.name}, {len(times)} epochs; median {1e3 * sorted(times)[len(times) // 2]:.1f} ms")
    print(f"{'statements':>10}  kind")
    print(f"{sum(counts.values()) / n:>10.1f}  all")
    for what, count in counts.most_common():
        print(f"{count / n:>10.1f}  {what}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
