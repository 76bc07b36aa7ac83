"""``octsearch run``: its options, the checks before a study is opened, and the worker it starts with
the trial-end callbacks (review evidence, checkpoint retention)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from search.cli.options import DEVICES, add_common, storage_url, study_name
from search.errors import OctsearchError
from search.interrupts import stop_signals
from search.storage import DEFAULT_OUTAGE_S, check_shared, open_storage, redact
from search.trial import STOP_GRACE_S
from search.worker import DEFAULT_KEEP_BEST, CheckpointRetention, TrialEndCallback

if TYPE_CHECKING:
    from search.space import SearchSpace
    from search.storage import StudyStorage
    from search.trial import Assignment


def add_run(sub: Any) -> None:
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
    add_common(run)
    run.set_defaults(func=cmd_run)


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
    url = check_shared(storage_url(args))
    space = load_space(args.space)
    preflight(space.base, args.device)
    check_storage(url)
    per_trial = args.devices_per_trial or space.base.runtime.num_processes
    kind, available = host_devices(args.device or space.base.runtime.device)
    slots = plan_slots(kind, available, parallel or auto_parallel(kind, available, per_trial),
                       per_trial)
    check_host(space.base, host_folders(args), trials_at_once=len(slots))
    storage = open_storage(url, outage_s=args.db_outage_s, out=sys.stderr)
    name = study_name(args)
    assert name is not None
    return _run(args, space, storage, name, slots)


STOPPING = ("already stopping: the running trials write their resume checkpoints and are "
            f"re-queued (up to {STOP_GRACE_S:g} s)")


def _run(args: argparse.Namespace, space: SearchSpace, storage: StudyStorage, name: str,
         slots: list[Assignment]) -> int:
    from search.contract import runs_folder
    from search.review import format_leaderboard
    from search.study import count_trials, open_study
    from search.worker import WorkerOptions, run_worker, waiting_explained

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
    retention = next(c for c in options.on_trial_end if isinstance(c, CheckpointRetention))
    print(f"octsearch: stopped: {summary.stopped}; this worker ran {len(summary.trials)} "
          f"trials; {retention.summary(study)}", file=sys.stderr)
    waiting = waiting_explained(study, args.trials)
    if waiting is not None:
        print(f"octsearch: {waiting}", file=sys.stderr)
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
