"""Per-epoch service overhead of a trial, with many workers: the database directly vs through
Optuna's gRPC storage proxy (``octsearch serve-storage``).

What a trial process does at the end of each epoch is :class:`search.trial.reporter.EpochReporter`:
store the epoch's metrics with the trial, report the objective, and ask the study's pruner (the
pruner of ``--space``, spaces/smoke.yaml by default: the collapse rule with an inner median) for
a decision with its reason. Here ``--workers`` processes do exactly that at once, each replaying
recorded epochs (real metrics dicts from ``--curves``) into trials of one study, and the time of
every ``EpochReporter`` call is measured. A trial the pruner stops is told PRUNED and the worker
goes on with the next recorded configuration, as a worker would.

The reference epoch time is the median ``epoch_s`` of the recording (the real trainer on the
default phantoms, the smoke space's configurations), unless ``--epoch-s`` gives one.

    .venv/bin/python bench/service_overhead.py --workers 8 --epochs 8 --trials 2
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import multiprocessing
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import optuna

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from search.space.search_space import load_space  # noqa: E402
from search.storage.sql import open_storage  # noqa: E402
from search.storage.urls import redact  # noqa: E402
from search.study.join import open_study, stored_space  # noqa: E402
from search.trial.reporter import EpochReporter  # noqa: E402

DEFAULT_DB = os.environ.get("OCTSEARCH_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def read_curves(path: Path) -> tuple[list[list[dict[str, Any]]], float]:
    """The recorded configurations (a list of epoch metrics dicts each) and the median epoch_s."""
    with gzip.open(path, "rt") as f:
        records = [json.loads(line) for line in f][1:]  # the first line is the header
    curves = [r["epochs"] for r in records if r.get("epochs")]
    return curves, statistics.median(e["epoch_s"] for c in curves for e in c)


def worker(url: str, study_name: str, curves: list[list[dict[str, Any]]], epochs: int, trials: int,
           gap_s: float, start: Any) -> list[float]:
    """One worker's trial processes, in turn: per-epoch EpochReporter times in seconds."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(url, heartbeat=False)  # as a trial process opens it
    study = optuna.load_study(study_name=study_name, storage=storage,
                              sampler=optuna.samplers.RandomSampler())
    space = stored_space(study)
    study.pruner = space.pruner.build()
    times: list[float] = []
    start.wait()
    for curve in curves[:trials]:
        trial = study.ask()
        reporter = EpochReporter(trial, space.objective.metric_key)
        state = optuna.trial.TrialState.COMPLETE
        for metrics in curve[:epochs]:
            t0 = time.perf_counter()
            try:
                reporter(int(metrics["epoch"]), metrics)
            except optuna.TrialPruned:
                state = optuna.trial.TrialState.PRUNED
            times.append(time.perf_counter() - t0)
            if state == optuna.trial.TrialState.PRUNED:
                break
            time.sleep(gap_s)  # the next epoch's training
        value = max(float(m["val/balanced_accuracy"]) for m in curve[:epochs])
        study.tell(trial, value if state == optuna.trial.TrialState.COMPLETE else None, state=state)
    return times


def measure(url: str, space_path: Path, curves: list[list[dict[str, Any]]],
            args: argparse.Namespace) -> list[list[float]]:
    """Per-worker epoch times of ``args.workers`` processes on a new study in ``url``."""
    name = f"overhead-{uuid.uuid4().hex[:8]}"
    storage = open_storage(url, heartbeat=False)
    # Without the space's enqueued trials: every worker replays recorded epochs, not params.
    open_study(dataclasses.replace(load_space(space_path), enqueue=()), storage, name)
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Manager().Event()
    jobs = [(url, name, curves[i * args.trials:(i + 1) * args.trials], args.epochs, args.trials,
             args.gap_s, start) for i in range(args.workers)]
    try:
        with ctx.Pool(args.workers) as pool:
            pending = pool.starmap_async(worker, jobs)
            time.sleep(1.0)  # let them import and connect before the clock starts
            start.set()
            return pending.get(timeout=600)
    finally:
        optuna.delete_study(study_name=name, storage=storage)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_proxy(url: str) -> tuple[subprocess.Popen[str], str]:
    """``octsearch serve-storage`` in front of ``url`` on a free port, and its grpc:// URL."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "search.cli", "serve-storage", "--storage", url,
                             "--port", str(port)], env=env, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    line = proc.stderr.readline()
    if "use --storage" not in line:
        proc.kill()
        raise SystemExit(f"service_overhead: the proxy did not start: {line.strip()}")
    return proc, f"grpc://127.0.0.1:{port}"


def row(mode: str, per_worker: list[list[float]], epoch_s: float) -> str:
    times = sorted(t for w in per_worker for t in w)
    median = statistics.median(times)
    p95 = times[min(len(times) - 1, int(0.95 * len(times)))]
    worst = max(statistics.median(w) for w in per_worker if w)
    return (f"{mode:<8}  {len(per_worker):>7}  {len(times):>6}  {1e3 * median:>9.1f}  {1e3 * p95:>8.1f}  "
            f"{1e3 * worst:>15.1f}  {100 * median / epoch_s:>10.2f}  {100 * p95 / epoch_s:>7.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--storage", default=DEFAULT_DB, help="the database (default: the PostgreSQL test server)")
    parser.add_argument("--space", type=Path, default=REPO / "spaces" / "smoke.yaml")
    parser.add_argument("--curves", type=Path, default=REPO / "bench" / "data" / "curves-tuning.jsonl.gz")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=8, help="epochs per trial (at most the recorded 10)")
    parser.add_argument("--trials", type=int, default=2, help="trials per worker")
    parser.add_argument("--gap-s", type=float, default=0.2, help="pause between a worker's epochs")
    parser.add_argument("--epoch-s", type=float, help="reference epoch time (default: the recording's median)")
    parser.add_argument("--modes", default="direct,proxy", help="direct, proxy or both (comma-separated)")
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    curves, recorded_epoch_s = read_curves(args.curves)
    if len(curves) < args.workers * args.trials:
        raise SystemExit(f"service_overhead: {args.curves} holds {len(curves)} configurations, fewer than "
                         f"--workers x --trials = {args.workers * args.trials}")
    epoch_s = args.epoch_s or recorded_epoch_s
    source = "--epoch-s" if args.epoch_s else f"median epoch_s of {args.curves.name}"
    print(f"service overhead per epoch: {args.workers} workers x {args.trials} trials x <= {args.epochs} "
          f"epochs, {args.gap_s:g} s between epochs; pruner of {args.space.name}; database "
          f"{redact(args.storage)}; reference epoch {epoch_s:.2f} s ({source})")
    print(f"{'mode':<8}  {'workers':>7}  {'epochs':>6}  {'median ms':>9}  {'p95 ms':>8}  "
          f"{'worst worker ms':>15}  {'median %':>10}  {'p95 %':>7}")
    for mode in args.modes.split(","):
        if mode == "direct":
            print(row(mode, measure(args.storage, args.space, curves, args), epoch_s), flush=True)
            continue
        proxy, url = start_proxy(args.storage)
        try:
            print(row(mode, measure(url, args.space, curves, args), epoch_s), flush=True)
        finally:
            proxy.send_signal(signal.SIGTERM)
            proxy.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
