"""A stand-in for ``octtrain.fit`` with the same contract, for fast worker tests.

Run in the trial process as the fit target ``fake_fit:fit`` (this folder on PYTHONPATH). It
learns when ``model.head.hidden > 0`` (balanced accuracy 0.5 + 0.1·epoch, up to 0.9) and
collapses onto class 0 when ``hidden == 0`` or ``train.class_weights`` is ``none`` (97 % of
predictions, balanced accuracy 0.25). A test picks a misbehaviour for a trial by enqueuing one
of these exact ``train.lr_head`` values, which a sampler never draws:

* ``SLOW``: learns slowly (balanced accuracy 0.35 + 0.05·epoch): a late bloomer, which the reach
  rule prunes while it still improves;

* ``DIVERGE``: raises :class:`octtrain.DivergedError` in epoch 1;
* ``CRASH``: prints a line and dies with exit status 3 in epoch 1 (no result);
* ``RAISE``: raises ``RuntimeError("boom")`` in epoch 1;
* ``HANG``: writes its pid to ``pid`` in the run directory in epoch 1, then hangs until a
  stop is requested (SIGTERM), and dies without a result.

With ``FAKE_FIT_REPORT_TIMES=1`` the duration of every ``on_epoch_end`` call (in a trial process:
the search's per-epoch report, a prune included) is appended to :data:`REPORT_TIMES` in the run
directory, one ``EPOCH SECONDS`` line each (bench/pod_load.py).

Every epoch touches ``started_E`` in the run directory, then sleeps ``FAKE_FIT_EPOCH_S`` seconds
(default 0). With ``preempt_to``, a stop request (SIGTERM) is honoured at the next epoch start:
its "resume checkpoint" is that epoch's number, which ``resume_from`` continues. The devices the
process was given (its CPU affinity and the slot's variables) go to ``assignment.json`` in the
run directory. With ``FAKE_FIT_RUN_FILES=1`` it writes octtrain's run files too
(``config.yaml``, ``class_to_idx.json`` naming :data:`CLASSES`, ``metrics.jsonl``). With
``FAKE_FIT_CHECKPOINTS=1`` it writes a dummy ``best.pt`` and ``last.pt`` (1000 bytes each); with
``FAKE_FIT_LAST_PT_BYTES=N``, a ``last.pt`` of N bytes at the end of every epoch, through
octtrain's atomic writer (a full disk: a HostError, as from the real trainer).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from octtrain.callback import EpochCallback
from octtrain.config.train_config import TrainConfig
from octtrain.data.records import save_class_to_idx
from octtrain.errors import DivergedError
from octtrain.files import write_atomic
from octtrain.runtime.preempt import Preempted, stop_requested
from octtrain.tracking.tracker import Tracker

NUM_CLASSES = 4
CLASSES = ("normal", "drusen", "cnv", "fluid")
DIVERGE, CRASH, RAISE, HANG, SLOW = 0.00123, 0.00234, 0.00345, 0.00456, 0.00567
REPORT_TIMES = "report_times.txt"
ASSIGNMENT_VARS = ("OCTSEARCH_SLOT", "OCTSEARCH_CPU_CORES", "OMP_NUM_THREADS",
                   "CUDA_VISIBLE_DEVICES", "TPU_VISIBLE_CHIPS")


@dataclass
class FakeFitResult:
    out_dir: Path
    epochs_run: int = 0
    best_epoch: int = -1
    best_value: float = math.nan
    stopped_early: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)
    class_to_idx: dict[str, int] = field(default_factory=dict)


def epoch_metrics(epoch: int, collapsed: bool, slow: bool = False) -> dict[str, Any]:
    """A metrics dict shaped like octtrain's, 32 validation volumes (16/6/5/5 when collapsed);
    ``slow``: learning at a third of the pace, from 0.35."""
    if collapsed:  # 97% class 0; a loss no better than the class prior's (1.24)
        confusion = [[16, 0, 0, 0], [5, 1, 0, 0], [5, 0, 0, 0], [5, 0, 0, 0]]
        per_class = [1.0, 0.0, 0.0, 0.0]  # as the tables show it (not derived from the matrix)
        bacc, loss = 0.25, 1.4
    else:
        bacc, loss = min(0.9, 0.35 + 0.05 * epoch if slow else 0.5 + 0.1 * epoch), 1.0
        confusion = [[h if i == j else 0 for j, h in enumerate([12, 8, 6, 6])] for i in range(4)]
        per_class = [bacc] * NUM_CLASSES
    hist = [sum(row[j] for row in confusion) for j in range(4)]
    total = sum(hist)
    return {
        "epoch": epoch,
        "train/loss": 1.0, "train/accuracy": 0.5, "train/balanced_accuracy": bacc,
        "val/loss": loss, "val/accuracy": bacc, "val/balanced_accuracy": bacc,
        "val/macro_f1": bacc, "val/per_class_accuracy": per_class,
        "val/per_class_f1": [math.nan] + per_class[1:],  # NaN must survive storage
        "val/confusion": confusion,
        "val/pred_hist": hist, "val/pred_entropy": 0.5,
        "val/max_class_share": max(hist) / total, "val/majority_class": hist.index(max(hist)),
        "lr/head": 1e-3, "lr/encoder": 0.0, "encoder_trainable": False,
        "io/load_s": 0.0, "train/compute_s": 0.0, "epoch_s": 0.0,
    }


def fit(cfg: TrainConfig, *, out_dir: str | Path | None = None,
        on_epoch_end: EpochCallback | None = None,
        progress: bool = True, resume_from: str | Path | None = None,
        preempt_to: str | Path | None = None) -> FakeFitResult:
    run_dir = Path(out_dir or "runs/fake")
    run_dir.mkdir(parents=True, exist_ok=True)
    seen = {var: os.environ.get(var) for var in ASSIGNMENT_VARS}
    (run_dir / "assignment.json").write_text(json.dumps(
        {**seen, "affinity": sorted(os.sched_getaffinity(0))}))
    result = FakeFitResult(out_dir=run_dir)
    tracker = _run_files(cfg, run_dir) if os.environ.get("FAKE_FIT_RUN_FILES") == "1" else None
    if os.environ.get("FAKE_FIT_CHECKPOINTS") == "1":
        for name in ("best.pt", "last.pt"):
            (run_dir / name).write_bytes(b"\0" * 1000)
    try:
        _epochs(cfg, run_dir, on_epoch_end, progress, result, tracker, resume_from, preempt_to)
    finally:
        if tracker is not None:
            tracker.close()
    return result


def _epochs(cfg: TrainConfig, run_dir: Path, on_epoch_end: EpochCallback | None, progress: bool,
            result: FakeFitResult, tracker: Tracker | None, resume_from: str | Path | None,
            preempt_to: str | Path | None) -> None:
    behaviour = cfg.train.lr_head
    collapsed = cfg.model.head.hidden == 0 or cfg.train.class_weights == "none"
    start = json.loads(Path(resume_from).read_text())["epoch"] if resume_from else 0
    for epoch in range(start, cfg.train.epochs):
        (run_dir / f"started_{epoch}").touch()
        stop = stop_requested()
        if preempt_to is not None and stop is not None:  # a resume "checkpoint": the epoch
            Path(preempt_to).parent.mkdir(parents=True, exist_ok=True)
            Path(preempt_to).write_text(json.dumps({"epoch": epoch}))
            raise Preempted(preempt_to, epoch, 0, epoch, stop)
        time.sleep(float(os.environ.get("FAKE_FIT_EPOCH_S", "0")))
        if epoch == 1:
            if behaviour == DIVERGE:
                raise DivergedError(epoch, math.nan)
            if behaviour == CRASH:
                print("fake_fit: about to crash", flush=True)
                os._exit(3)
            if behaviour == RAISE:
                raise RuntimeError("boom")
            if behaviour == HANG:
                (run_dir / "pid").write_text(str(os.getpid()))
                while stop_requested() is None:  # hangs until SIGTERM (the trial process's
                    time.sleep(0.05)  # handler only requests a stop)...
                os._exit(1)  # ... then dies without a result, as a trainer that cannot stop
        size = int(os.environ.get("FAKE_FIT_LAST_PT_BYTES", "0"))
        if size:  # the epoch's checkpoint, written as octtrain writes its own
            write_atomic(run_dir / "last.pt", b"\0" * size, what="the last checkpoint")
        metrics = epoch_metrics(epoch, collapsed, slow=behaviour == SLOW)
        if progress:
            print(f"fake epoch {epoch} bal_acc {metrics['val/balanced_accuracy']:.2f}",
                  file=sys.stderr, flush=True)
        result.history.append(metrics)
        if tracker is not None:
            tracker.log_epoch(epoch, metrics)
        result.epochs_run = epoch + 1
        if on_epoch_end is not None:
            with _timed(run_dir, epoch):
                on_epoch_end(epoch, metrics)


@contextmanager
def _timed(run_dir: Path, epoch: int) -> Iterator[None]:
    """Append the duration of the block to REPORT_TIMES if FAKE_FIT_REPORT_TIMES=1, also when
    it raises (a pruned trial's last report)."""
    if os.environ.get("FAKE_FIT_REPORT_TIMES") != "1":
        yield
        return
    start = time.perf_counter()
    try:
        yield
    finally:
        with open(run_dir / REPORT_TIMES, "a") as out:
            out.write(f"{epoch} {time.perf_counter() - start:.6f}\n")


def _run_files(cfg: TrainConfig, run_dir: Path) -> Tracker:
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    save_class_to_idx(run_dir / "class_to_idx.json", {name: i for i, name in enumerate(CLASSES)})
    return Tracker(run_dir, cfg.log, cfg.to_dict(),
                   class_to_idx={name: i for i, name in enumerate(CLASSES)})
