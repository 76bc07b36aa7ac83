"""Checkpoint retention: what a study keeps on disk once its trials end.

``last.pt`` exists to resume a running trial and is deleted when the trial ends (unless
``octsearch run --keep-last``); ``best.pt`` is kept for the study's top ``--keep-best K``
COMPLETE trials (ranked by value in the study's direction) and deleted for the others, pruned and
failed trials included, once they fall out of the top k. Only run directories this worker can see
(``run_dir`` recorded on each trial, search/contract.py) are touched. Resume checkpoints
(``resume.pt``, search/worker/requeue.py) are never touched here.
"""

from __future__ import annotations

from pathlib import Path
from typing import TextIO

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.contract import stored_run_dir
from search.notices import notice
from search.ranking import ranked

DEFAULT_KEEP_BEST = 3
CHECKPOINTS = ("best.pt", "last.pt")
ENDED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _delete(path: Path) -> int:
    size = _size(path)
    try:
        path.unlink()
    except FileNotFoundError:
        return 0
    return size


def top_trials(study: optuna.Study, keep_best: int) -> set[int]:
    """Numbers of the study's best ``keep_best`` COMPLETE trials (ties: the earlier first)."""
    return {t.number for t in ranked(study)[:keep_best]}


def _run_dir(trial: FrozenTrial) -> Path | None:
    value = stored_run_dir(trial)
    return Path(value) if value else None


def prune_checkpoints(study: optuna.Study, *, keep_best: int = DEFAULT_KEEP_BEST,
                      keep_last: bool = False, out: TextIO | None = None) -> int:
    """Delete the checkpoints the study no longer needs; the bytes deleted. A progress line
    on ``out`` when something was deleted."""
    keep = top_trials(study, keep_best)
    trials = study.get_trials(deepcopy=False)
    busy = {_run_dir(t) for t in trials if t.state not in ENDED}  # never a running trial's dir
    freed, files = 0, 0
    for trial in trials:
        run_dir = _run_dir(trial)
        if run_dir is None or trial.state not in ENDED or run_dir in busy:
            continue
        doomed = [] if keep_last else [run_dir / "last.pt"]
        if trial.number not in keep:
            doomed.append(run_dir / "best.pt")
        for path in doomed:
            size = _delete(path) if path.exists() else 0
            freed, files = freed + size, files + (size > 0)
    if files and out is not None:
        notice(out, f"checkpoints: deleted {files} file(s), {freed / 1e6:.1f} MB; "
                    f"{kept_bytes(study) / 1e6:.1f} MB kept")
    return freed


def kept_bytes(study: optuna.Study) -> int:
    """Bytes of ``best.pt`` and ``last.pt`` still on disk in the study's visible run dirs."""
    total = 0
    for trial in study.get_trials(deepcopy=False):
        run_dir = _run_dir(trial)
        if run_dir is not None:
            total += sum(_size(run_dir / name) for name in CHECKPOINTS)
    return total


class CheckpointRetention:
    """The worker's trial-end callback for disk: after each ``tell``, :func:`prune_checkpoints`
    (a failure is one line; it never fails the trial). It says so the first time it deletes
    something; the worker's closing line gives the totals (:meth:`summary`)."""

    def __init__(self, keep_best: int = DEFAULT_KEEP_BEST, keep_last: bool = False) -> None:
        if keep_best < 0:
            raise ValueError(f"keep_best must be at least 0, but got keep_best={keep_best}.")
        self.keep_best, self.keep_last = keep_best, keep_last
        self.freed = 0  # bytes this worker deleted

    def before_tell(self, study: optuna.Study, trial: optuna.Trial, out: TextIO | None) -> None:
        pass

    def after_tell(self, study: optuna.Study, trial: optuna.Trial, out: TextIO | None) -> None:
        try:
            first = self.freed == 0
            self.freed += prune_checkpoints(study, keep_best=self.keep_best, keep_last=self.keep_last,
                                            out=out if first else None)
            if first and self.freed:
                notice(out, "checkpoints: later deletions are summed up when the worker stops")
        except Exception as err:  # noqa: BLE001 - disk housekeeping never fails a trial
            notice(out, f"checkpoint retention failed: {type(err).__name__}: {err}")

    def summary(self, study: optuna.Study) -> str:
        """``checkpoints: deleted 12.3 MB, 45.6 MB kept``: the closing line's part."""
        return f"checkpoints: deleted {self.freed / 1e6:.1f} MB, {kept_bytes(study) / 1e6:.1f} MB kept"
