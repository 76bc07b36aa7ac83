"""``octsearch``: run a search, review it, export the best config, open the dashboard.

Errors a user can cause print one line, ``octsearch: error: ...``, and exit 2 (1 when a
worker stops because its trials keep failing, 128 + N when stopped by signal N: SIGINT 130,
SIGTERM 143); ``--debug`` shows the traceback instead. Progress goes to stderr, tables to
stdout. The options every command shares are in ``options``, ``octsearch run`` in ``run``; the
other commands are here, each a thin call of the review, study or storage function that does it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna

from octtrain.errors import OcttrainError, one_line
from search.cli.options import DEVICES, STORAGE_ENV, add_common, review_study, storage_url
from search.cli.run import add_run, host_folders, trial_end_callbacks
from search.errors import OctsearchError, WorkerError
from search.interrupts import Terminated, exit_status, exiting, stop_signals
from search.storage import DEFAULT_OUTAGE_S

__all__ = ["STORAGE_ENV", "build_parser", "host_folders", "main", "trial_end_callbacks"]


def _add_review_tables(sub: Any) -> None:
    """``trials``, ``trial``, ``best`` and ``export-best``: what a review reads off the study."""
    for name, func, text in (("trials", cmd_trials, "table of every trial"),
                             ("trial", cmd_trial, "one trial in detail: why it ended"),
                             ("best", cmd_best, "the best trial in detail")):
        p = sub.add_parser(name, help=text)
        add_common(p)
        p.add_argument("--space", type=Path, help="name the study by its space file")
        if name == "trial":
            p.add_argument("number", type=int, help="the trial's number")
        if name == "trials":
            p.add_argument("--sort", choices=("number", "value"), default="number",
                           help="row order (default: number)")
            p.add_argument("--state", action="append", default=[], metavar="STATE",
                           help="only trials in this state (complete, pruned, fail, running, "
                                "waiting); repeatable")
            p.add_argument("--columns", help="comma-separated columns (default: what fits 120 "
                                             "characters)")
            p.add_argument("--format", choices=("table", "csv", "json"), default="table",
                           help="(default: table)")
        p.set_defaults(func=func)

    export = sub.add_parser("export-best",
                            help="write the best trial's complete trainer config (YAML)")
    export.add_argument("--out", required=True, type=Path, help="output YAML file")
    export.add_argument("--trial", type=int, metavar="N",
                        help="export completed trial N instead (e.g. one tied with the best)")
    export.add_argument("--space", type=Path, help="name the study by its space file")
    add_common(export)
    export.set_defaults(func=cmd_export_best)


def _add_review_outputs(sub: Any) -> None:
    """``finalize``, ``report``, ``why`` and ``rerun``: what a review writes or explains (a final
    model, an HTML file, why trials ended as they did, a rerun without pruning)."""
    final = sub.add_parser("finalize", help="retrain the best trial and evaluate it once on the "
                                             "test split")
    final.add_argument("--space", type=Path, help="name the study by its space file")
    final.add_argument("--runs-dir", type=Path, default=Path("runs"), metavar="DIR",
                       help="the final run goes to DIR/STUDY-ID/final (default: runs)")
    final.add_argument("--train-on-val", action="store_true",
                       help="train on train + val for the best trial's epoch count")
    final.add_argument("--no-retrain", action="store_true",
                       help="evaluate the trial's kept best.pt on the test split, train nothing")
    final.add_argument("--device", choices=DEVICES, help="runtime.device of the final run")
    final.add_argument("--force", action="store_true",
                       help="evaluate on a test split already used (the reuse is recorded)")
    add_common(final)
    final.set_defaults(func=cmd_finalize)

    report = sub.add_parser("report", help="write the study as one self-contained HTML file")
    report.add_argument("--out", required=True, type=Path, help="output HTML file")
    report.add_argument("--space", type=Path, help="name the study by its space file")
    add_common(report)
    report.set_defaults(func=cmd_report)

    why = sub.add_parser("why", help="which parameters predict a collapse, and the pruned trials "
                                     "that may have bloomed late")
    why.add_argument("--space", type=Path, help="name the study by its space file")
    add_common(why)
    why.set_defaults(func=cmd_why)

    compare = sub.add_parser("compare", help="two trials side by side: parameters, curves, matrices")
    compare.add_argument("a", type=int, metavar="A", help="a trial number")
    compare.add_argument("b", type=int, metavar="B", help="another trial number")
    compare.add_argument("--space", type=Path, help="name the study by its space file")
    add_common(compare)
    compare.set_defaults(func=cmd_compare)

    rerun = sub.add_parser("rerun", help="queue trial N's configuration again, to run without pruning")
    rerun.add_argument("number", type=int, metavar="N", help="the trial to run again")
    rerun.add_argument("--space", type=Path, help="name the study by its space file")
    add_common(rerun)
    rerun.set_defaults(func=cmd_rerun)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="octsearch",
        description="Hyperparameter search for octtrain with collapse-aware pruning.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    add_run(sub)

    check = sub.add_parser("check", help="validate a search space file, list it, and check "
                                         "its data and device on this host")
    check.add_argument("--space", required=True, type=Path, help="search space YAML file")
    check.add_argument("--device", choices=DEVICES, help="runtime.device of every trial")
    check.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    check.set_defaults(func=cmd_check)

    _add_review_tables(sub)
    _add_review_outputs(sub)
    dash = sub.add_parser("dashboard", help="serve optuna-dashboard on the storage")
    dash.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    dash.add_argument("--port", type=int, default=8080, help="port (default: 8080)")
    dash.add_argument("--artifacts-dir", type=Path, default=Path("runs/artifacts"), metavar="DIR",
                      help="the artifact store that octsearch run wrote (default: runs/artifacts)")
    dash.add_argument("--read-only", action="store_true",
                      help="refuse every change (delete, create, upload, note edits): for shared studies")
    add_common(dash, study=False)
    dash.set_defaults(func=cmd_dashboard)

    proxy = sub.add_parser("serve-storage", help="serve the storage to many workers through "
                                                 "Optuna's gRPC proxy (--storage grpc://HOST:PORT)")
    proxy.add_argument("--host", default="127.0.0.1",
                       help="address to bind (default: 127.0.0.1; 0.0.0.0 for other hosts)")
    proxy.add_argument("--port", type=int, default=13000, help="port (default: 13000)")
    proxy.add_argument("--db-outage-s", type=float, default=DEFAULT_OUTAGE_S, metavar="SECONDS",
                       help="ride out a database unreachable for up to this long, retrying each "
                            f"call while its client waits (default: {DEFAULT_OUTAGE_S:g})")
    add_common(proxy, study=False)
    proxy.set_defaults(func=cmd_serve_storage)
    return parser


def cmd_check(args: argparse.Namespace) -> int:
    from search.space import load_space
    from search.worker import preflight

    space = load_space(args.space)
    checked = preflight(space.base, args.device)
    print(f"{args.space}: valid; objective {space.objective.metric} ({space.objective.direction})")
    for line in checked:
        print(f"  {line}")
    for p in space.params:
        print(f"  {p.path}: {p.describe()}")
    for e in space.enqueue:
        print(f"  enqueue {e.name}: {e.params}")
    print(f"  sampler: {space.sampler.to_dict()}")
    print(f"  pruner: {space.pruner.to_dict()}")
    return 0


def cmd_trials(args: argparse.Namespace) -> int:
    from search.review import format_trials

    keys = [k.strip() for k in args.columns.split(",") if k.strip()] if args.columns else None
    print(format_trials(review_study(args), sort=args.sort, states=args.state, keys=keys,
                        fmt=args.format))
    return 0


def cmd_trial(args: argparse.Namespace) -> int:
    from search.review import format_trial

    print(format_trial(review_study(args), args.number))
    return 0


def cmd_best(args: argparse.Namespace) -> int:
    from search.review import format_best

    print(format_best(review_study(args)))
    return 0


def cmd_export_best(args: argparse.Namespace) -> int:
    from search.review import export_best

    out = export_best(review_study(args), args.out, args.trial)
    print(f"octsearch: wrote {out}; reproduce with: octtrain train --config {out}",
          file=sys.stderr)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from search.review import format_compare

    print(format_compare(review_study(args), args.a, args.b))
    return 0


def cmd_finalize(args: argparse.Namespace) -> int:
    from search.review import FinalizeOptions, finalize

    finalize(review_study(args),
             FinalizeOptions(runs_dir=args.runs_dir, train_on_val=args.train_on_val,
                             force=args.force, device=args.device, retrain=not args.no_retrain))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from search.review import write_report

    out = write_report(review_study(args), args.out)
    print(f"octsearch: wrote {out}", file=sys.stderr)
    return 0


def cmd_why(args: argparse.Namespace) -> int:
    from search.review import format_why

    print(format_why(review_study(args)))
    return 0


def cmd_rerun(args: argparse.Namespace) -> int:
    from search.study import enqueue_rerun

    print(f"octsearch: {enqueue_rerun(review_study(args), args.number)}", file=sys.stderr)
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    from search.review import serve

    serve(storage_url(args), args.host, args.port, artifacts_dir=args.artifacts_dir,
          read_only=args.read_only)
    return 0


def cmd_serve_storage(args: argparse.Namespace) -> int:
    """The proxy in the foreground; Ctrl-C exits 130, SIGTERM 143 (128 + the signal)."""
    from search.storage import serve

    try:
        if not args.db_outage_s >= 0:
            raise OctsearchError(f"--db-outage-s must be 0 or more seconds, got {args.db_outage_s:g}")
        with stop_signals("already stopping"):
            serve(storage_url(args), args.host, args.port, outage_s=args.db_outage_s)
    except KeyboardInterrupt as err:
        print("octsearch: storage proxy stopped", file=sys.stderr)
        return exit_status(err)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # octsearch prints its own progress
    try:
        return int(args.func(args))
    except (OctsearchError, OcttrainError) as err:
        if args.debug:
            raise
        print(f"octsearch: error: {one_line(err)}", file=sys.stderr)
        return 1 if isinstance(err, WorkerError) else 2
    except KeyboardInterrupt as err:
        if args.debug:
            raise
        what = f" by {err}" if isinstance(err, Terminated) else ""
        print(f"octsearch: interrupted{what}", file=sys.stderr)
        exiting()  # a signal during the interpreter's shutdown: no traceback (found by the chaos soak)
        return exit_status(err)
    except BrokenPipeError:  # `octsearch trials | head`: the reader left; no traceback
        sys.stderr.close()
        return 0

