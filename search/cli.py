"""``octsearch``: run a search, review it, export the best config, open the dashboard.

Errors a user can cause print one line, ``octsearch: error: ...``, and exit 2 (1 when a
worker stops because its trials keep failing, 128 + N when stopped by signal N: SIGINT 130,
SIGTERM 143); ``--debug`` shows the traceback instead. Progress goes to stderr, tables to
stdout.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna

from octtrain.errors import OcttrainError, one_line
from search.errors import OctsearchError, WorkerError
from search.interrupts import Terminated, exit_status, stop_signals
from search.storage import DEFAULT_OUTAGE_S, DEFAULT_STORAGE, check_shared, open_storage, redact
from search.trial import STOP_GRACE_S
from search.worker import DEFAULT_KEEP_BEST, CheckpointRetention, TrialEndCallback

if TYPE_CHECKING:
    from search.space import SearchSpace
    from search.storage import StudyStorage
    from search.trial import Assignment

DEVICES = ("auto", "xla", "cuda", "cpu")


STORAGE_ENV = "OCTSEARCH_STORAGE"  # the default --storage: keeps a password off the command line


def _common(parser: argparse.ArgumentParser, *, study: bool = True) -> None:
    # The default is read when the command runs, never shown: it may hold a password.
    parser.add_argument("--storage", metavar="URL",
                        help=f"sqlite:///FILE, postgresql+psycopg://..., mysql+pymysql://... or "
                             f"grpc://HOST:PORT (octsearch serve-storage) "
                             f"(default: ${STORAGE_ENV}, else {DEFAULT_STORAGE})")
    if study:
        parser.add_argument("--study", metavar="NAME",
                            help="study name (default: the space file's name; for review "
                                 "commands, the storage's only study)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")


def _add_review_outputs(sub: Any) -> None:
    """``finalize`` and ``report``: what a review writes (a final model, an HTML file)."""
    final = sub.add_parser("finalize", help="retrain the best trial and evaluate it once on the test split")
    final.add_argument("--space", type=Path, help="name the study by its space file")
    final.add_argument("--runs-dir", type=Path, default=Path("runs"), metavar="DIR",
                       help="the final run goes to DIR/STUDY-ID/final (default: runs)")
    final.add_argument("--train-on-val", action="store_true",
                       help="train on train + val for the best trial's epoch count")
    final.add_argument("--device", choices=DEVICES, help="runtime.device of the final run")
    final.add_argument("--force", action="store_true",
                       help="evaluate on a test split already used (the reuse is recorded)")
    _common(final)
    final.set_defaults(func=cmd_finalize)

    report = sub.add_parser("report", help="write the study as one self-contained HTML file")
    report.add_argument("--out", required=True, type=Path, help="output HTML file")
    _common(report)
    report.add_argument("--space", type=Path, help="name the study by its space file")
    report.set_defaults(func=cmd_report)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="octsearch",
        description="Hyperparameter search for octtrain with collapse-aware pruning.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    _add_run(sub)

    check = sub.add_parser("check", help="validate a search space file, list it, and check its data and device")
    check.add_argument("--space", required=True, type=Path, help="search space YAML file")
    check.add_argument("--device", choices=DEVICES, help="runtime.device of every trial")
    check.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    check.set_defaults(func=cmd_check)

    for name, func, text in (("trials", cmd_trials, "table of every trial"),
                             ("trial", cmd_trial, "one trial in detail: why it ended"),
                             ("best", cmd_best, "the best trial in detail")):
        p = sub.add_parser(name, help=text)
        _common(p)
        p.add_argument("--space", type=Path, help="name the study by its space file")
        if name == "trial":
            p.add_argument("number", type=int, help="the trial's number")
        if name == "trials":
            p.add_argument("--sort", choices=("number", "value"), default="number", help="row order (default: number)")
            p.add_argument("--state", action="append", default=[], metavar="STATE", help="only trials in this "
                           "state (complete, pruned, fail, running, waiting); repeatable")
            p.add_argument("--columns", help="comma-separated columns (default: what fits 120 characters)")
            p.add_argument("--format", choices=("table", "csv", "json"), default="table", help="(default: table)")
        p.set_defaults(func=func)

    export = sub.add_parser("export-best", help="write the best trial's complete trainer config (YAML)")
    export.add_argument("--out", required=True, type=Path, help="output YAML file")
    export.add_argument("--space", type=Path, help="name the study by its space file")
    _common(export)
    export.set_defaults(func=cmd_export_best)

    _add_review_outputs(sub)
    dash = sub.add_parser("dashboard", help="serve optuna-dashboard on the storage")
    dash.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    dash.add_argument("--port", type=int, default=8080, help="port (default: 8080)")
    dash.add_argument("--artifacts-dir", type=Path, default=Path("runs/artifacts"), metavar="DIR",
                      help="the artifact store that octsearch run wrote (default: runs/artifacts)")
    dash.add_argument("--read-only", action="store_true",
                      help="refuse every change (delete, create, upload, note edits): for shared studies")
    _common(dash, study=False)
    dash.set_defaults(func=cmd_dashboard)

    proxy = sub.add_parser("serve-storage", help="serve the storage to many workers through Optuna's gRPC "
                                                 "proxy (--storage grpc://HOST:PORT)")
    proxy.add_argument("--host", default="127.0.0.1",
                       help="address to bind (default: 127.0.0.1; 0.0.0.0 for other hosts)")
    proxy.add_argument("--port", type=int, default=13000, help="port (default: 13000)")
    proxy.add_argument("--db-outage-s", type=float, default=DEFAULT_OUTAGE_S, metavar="SECONDS",
                       help="ride out a database unreachable for up to this long, retrying each "
                            f"call while its client waits (default: {DEFAULT_OUTAGE_S:g})")
    _common(proxy, study=False)
    proxy.set_defaults(func=cmd_serve_storage)
    return parser


def _add_run(sub: Any) -> None:
    """``octsearch run``: its options."""
    run = sub.add_parser("run", help="create or join a study and run trials until N finished")
    run.add_argument("--space", required=True, type=Path, help="search space YAML file")
    run.add_argument("--trials", required=True, type=int, metavar="N",
                     help="finished (complete + pruned) trials wanted in the study, all workers "
                          "together")
    run.add_argument("--timeout", type=float, metavar="SECONDS",
                     help="start no new trial after this many seconds")
    run.add_argument("--seed", type=int, help="sampler seed (give each worker its own)")
    run.add_argument("--device", choices=DEVICES, help="runtime.device of every trial")
    run.add_argument("--parallel", default="1", metavar="N|auto",
                     help="trials at once in this worker, each on its own devices (TPU chips, "
                          "GPUs, or a share of the CPU cores); auto: one per chip/GPU "
                          "(default: 1)")
    run.add_argument("--devices-per-trial", type=int, metavar="K",
                     help="devices of each trial: runtime.num_processes of every trial "
                          "(default: the space's)")
    run.add_argument("--runs-dir", type=Path, default=Path("runs"), metavar="DIR",
                     help="trial run directories go to DIR/STUDY-ID/trial_NNNN, ID the "
                          "study's creation id (default: runs)")
    run.add_argument("--artifacts-dir", type=Path, metavar="DIR", help="artifact store of "
                     "the trials' run files, for the dashboard (default: RUNS_DIR/artifacts)")
    run.add_argument("--keep-best", type=int, default=DEFAULT_KEEP_BEST, metavar="K",
                     help="keep best.pt of the study's top K complete trials only (default: 3)")
    run.add_argument("--keep-last", action="store_true",
                     help="keep each ended trial's last.pt (default: deleted when it ends)")
    run.add_argument("--checkpoint-dir", type=Path, metavar="DIR",
                     help="resume checkpoints of preempted trials go to DIR/STUDY-ID/trial_NNNN/"
                          "resume.pt; every worker must see it at the same path, e.g. a shared "
                          "mount (default: --runs-dir)")
    run.add_argument("--max-failures", type=int, default=3, metavar="K",
                     help="stop this worker after K failed trials in a row (default: 3)")
    run.add_argument("--db-outage-s", type=float, default=DEFAULT_OUTAGE_S, metavar="SECONDS",
                     help="ride out a database unreachable for up to this long, retrying; "
                          f"trial processes too (default: {DEFAULT_OUTAGE_S:g})")
    run.add_argument("--fit-target", default="octtrain:fit", metavar="MODULE:FUNCTION",
                     help=argparse.SUPPRESS)  # a stand-in trainer with octtrain.fit's contract (tests)
    _common(run)
    run.set_defaults(func=cmd_run)


def _storage_url(args: argparse.Namespace) -> str:
    """``--storage``, else ``$OCTSEARCH_STORAGE``, else the SQLite file of the working folder."""
    return str(args.storage or os.environ.get(STORAGE_ENV) or DEFAULT_STORAGE)


def _study_name(args: argparse.Namespace) -> str | None:
    if args.study:
        return str(args.study)
    space = getattr(args, "space", None)
    return space.stem if space is not None else None


def cmd_run(args: argparse.Namespace) -> int:
    """A worker. Its stop signals are handled from the start (search.interrupts): a SIGTERM while
    it starts up exits 143 with one line, like one while it runs trials."""
    with stop_signals(STOPPING):
        return _start_worker(args)


def _start_worker(args: argparse.Namespace) -> int:
    from search.space import load_space
    from search.trial import auto_parallel, host_devices, parse_parallel, plan_slots
    from search.worker import check_host, check_storage, preflight

    if args.trials < 1:
        raise OctsearchError(f"--trials must be at least 1, got {args.trials}")
    if args.keep_best < 0:
        raise OctsearchError(f"--keep-best must be at least 0, got {args.keep_best}")
    if args.max_failures < 1:
        raise OctsearchError(f"--max-failures must be at least 1, got {args.max_failures}")
    if args.timeout is not None and not args.timeout > 0:
        raise OctsearchError(f"--timeout must be a positive number of seconds, got {args.timeout:g}")
    if args.devices_per_trial is not None and args.devices_per_trial < 1:
        raise OctsearchError(f"--devices-per-trial must be at least 1, got {args.devices_per_trial}")
    parallel = parse_parallel(args.parallel)
    if not args.db_outage_s >= 0:
        raise OctsearchError(f"--db-outage-s must be 0 or more seconds, got {args.db_outage_s:g}")
    url = check_shared(_storage_url(args))
    space = load_space(args.space)
    preflight(space.base, args.device)
    check_storage(url)
    per_trial = args.devices_per_trial or space.base.runtime.num_processes
    kind, available = host_devices(args.device or space.base.runtime.device)
    slots = plan_slots(kind, available, parallel or auto_parallel(kind, available, per_trial),
                       per_trial)
    check_host(space.base, host_folders(args), trials_at_once=len(slots))
    storage = open_storage(url, outage_s=args.db_outage_s, out=sys.stderr)
    name = _study_name(args)
    assert name is not None
    return _run(args, space, storage, name, slots)


STOPPING = ("already stopping: the running trials write their resume checkpoints and are "
            f"re-queued (up to {STOP_GRACE_S:g} s)")


def _run(args: argparse.Namespace, space: SearchSpace, storage: StudyStorage, name: str,
         slots: list[Assignment]) -> int:
    from search.contract import runs_folder
    from search.review import format_leaderboard
    from search.study import count_trials, open_study
    from search.worker import WorkerOptions, kept_bytes, run_worker

    study, created = open_study(space, storage, name, seed=args.seed)
    finished, running = count_trials(study)
    print(f"octsearch: {'created' if created else 'joined'} study {name!r} in "
          f"{redact(storage.url)}: {finished}/{args.trials} finished, {running} running; run "
          f"directories under {args.runs_dir / runs_folder(study)}", file=sys.stderr)
    if len(slots) > 1:
        print(f"octsearch: {len(slots)} trials at once: "
              + ", ".join(f"slot {s.slot} on {s.label}" for s in slots), file=sys.stderr)
    options = WorkerOptions(n_trials=args.trials, timeout_s=args.timeout, device=args.device,
                            num_processes=args.devices_per_trial, runs_dir=args.runs_dir,
                            checkpoint_dir=args.checkpoint_dir,
                            max_consecutive_failures=args.max_failures,
                            fit_target=args.fit_target, slots=tuple(slots),
                            on_trial_end=trial_end_callbacks(args.runs_dir, args.artifacts_dir,
                                                             args.keep_best, args.keep_last))
    summary = run_worker(study, space, storage, options, out=sys.stderr)
    print(f"octsearch: stopped: {summary.stopped}; this worker ran {len(summary.trials)} "
          f"trials; checkpoints kept: {kept_bytes(study) / 1e6:.1f} MB", file=sys.stderr)
    print(format_leaderboard(study))
    return 0


def host_folders(args: argparse.Namespace) -> dict[str, Path]:
    """The folders a worker's trials write to, by the option that names them."""
    from search.review import default_artifacts_dir

    folders = {"--runs-dir": args.runs_dir,
               "--artifacts-dir": args.artifacts_dir or default_artifacts_dir(args.runs_dir)}
    if args.checkpoint_dir is not None:
        folders["--checkpoint-dir"] = args.checkpoint_dir
    return folders


def trial_end_callbacks(runs_dir: Path, artifacts_dir: Path | None = None, keep_best: int = DEFAULT_KEEP_BEST,
                        keep_last: bool = False) -> tuple[TrialEndCallback, ...]:
    """What ``octsearch run`` does at each trial's end: review evidence (run files as artifacts,
    the dashboard note and figures), then checkpoint retention (``--keep-best``, ``--keep-last``)."""
    from search.review import ReviewEvidence, default_artifacts_dir

    return (ReviewEvidence(artifacts_dir or default_artifacts_dir(runs_dir)),
            CheckpointRetention(keep_best, keep_last))


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


def _review_study(args: argparse.Namespace) -> optuna.Study:
    from search.study import load_review_study

    storage = open_storage(_storage_url(args), heartbeat=False, create=False)
    return load_review_study(storage, _study_name(args))


def cmd_trials(args: argparse.Namespace) -> int:
    from search.review import format_trials

    keys = [k.strip() for k in args.columns.split(",") if k.strip()] if args.columns else None
    print(format_trials(_review_study(args), sort=args.sort, states=args.state, keys=keys,
                        fmt=args.format))
    return 0


def cmd_trial(args: argparse.Namespace) -> int:
    from search.review import format_trial

    print(format_trial(_review_study(args), args.number))
    return 0


def cmd_best(args: argparse.Namespace) -> int:
    from search.review import format_best

    print(format_best(_review_study(args)))
    return 0


def cmd_export_best(args: argparse.Namespace) -> int:
    from search.review import export_best

    out = export_best(_review_study(args), args.out)
    print(f"octsearch: wrote {out}; reproduce with: octtrain train --config {out}",
          file=sys.stderr)
    return 0


def cmd_finalize(args: argparse.Namespace) -> int:
    from search.review import FinalizeOptions, finalize

    finalize(_review_study(args),
             FinalizeOptions(runs_dir=args.runs_dir, train_on_val=args.train_on_val,
                             force=args.force, device=args.device))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from search.review import write_report

    out = write_report(_review_study(args), args.out)
    print(f"octsearch: wrote {out}", file=sys.stderr)
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    from search.review import serve

    serve(_storage_url(args), args.host, args.port, artifacts_dir=args.artifacts_dir,
          read_only=args.read_only)
    return 0


def cmd_serve_storage(args: argparse.Namespace) -> int:
    """The proxy in the foreground; Ctrl-C exits 130, SIGTERM 143 (128 + the signal)."""
    from search.storage import serve

    try:
        if not args.db_outage_s >= 0:
            raise OctsearchError(f"--db-outage-s must be 0 or more seconds, got {args.db_outage_s:g}")
        with stop_signals("already stopping"):
            serve(_storage_url(args), args.host, args.port, outage_s=args.db_outage_s)
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
        return exit_status(err)
    except BrokenPipeError:  # `octsearch trials | head`: the reader left; no traceback
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
