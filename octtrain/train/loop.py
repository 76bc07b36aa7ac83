"""The training loop: ``fit(cfg)`` fine-tunes the classifier and returns what it found.

Reads top to bottom: set-up (data, class weights, model, optimizer, schedule: :func:`_set_up`),
then per epoch: :func:`~octtrain.train.epoch.train_epoch` → log the train metrics →
:func:`~octtrain.train.epoch.validate` → select and checkpoint → report → decide (the caller's
``on_epoch_end`` and early stopping).

Written once for every device (see :mod:`octtrain.runtime.backend` and :mod:`octtrain.train.epoch`); with
several processes, every rank runs :func:`_train_rank` and rank 0 alone writes the run directory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import functools
import math
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from octtrain.callback import EpochCallback, EpochChannel, EpochDecision
from octtrain.config import EnvKnobs, TrainConfig
from octtrain.data import (
    SPLITS,
    Loaders,
    Splits,
    blank_volumes,
    blank_warning,
    build_datasets,
    build_loaders,
    class_table,
    replaced_note,
    replaced_volumes,
    save_class_to_idx,
)
from octtrain.errors import ConfigError, DataError, host_errors
from octtrain.files import write_atomic
from octtrain.model import OctClassifier, build_model, check_fits, estimate_memory
from octtrain.runtime import Preempted, Runtime, agreed_stop, init_runtime, launch, stop_on_signals, stop_requested
from octtrain.tracking import Tracker
from octtrain.train.checkpoint import Checkpointer
from octtrain.train.early_stop import EarlyStopping
from octtrain.train.epoch import StopAtStep, StopCheck, TrainProgress, Update, train_epoch, validate
from octtrain.train.loss import resolve_class_weights
from octtrain.train.optim import build_optimizer, build_scheduler
from octtrain.train.progress import ProgressBar, early_stopping_line, epoch_line
from octtrain.train.resume import ResumePoint, rank_state, restore, save_resume
from octtrain.train.run_dir import default_run_dir
from octtrain.train.startup import StartupClock


@dataclass
class FitResult:
    out_dir: Path
    epochs_run: int
    best_epoch: int  # -1 when no epoch produced a finite metric
    best_value: float  # of cfg.train.early_stopping.metric on validation
    metric: str
    stopped_early: bool
    class_to_idx: dict[str, int]
    history: list[dict[str, Any]] = field(default_factory=list)


def fit(
    cfg: TrainConfig,
    *,
    out_dir: str | Path | None = None,
    on_epoch_end: EpochCallback | None = None,
    progress: bool = True,
    resume_from: str | Path | None = None,
    preempt_to: str | Path | None = None,
) -> FitResult:
    """Train with ``cfg``; write the run directory; return the best epoch and the history.

    ``on_epoch_end(epoch, metrics)`` runs after every validation (epochs count from 0); any
    exception it raises propagates out of ``fit`` unchanged after the run directory is closed
    (a search stops a trial this way). Raises :class:`DivergedError` when the training loss is
    NaN/inf, :class:`ConfigError`/:class:`DataError` for bad settings or data.

    ``preempt_to``: when a stop is requested (:mod:`octtrain.runtime.preempt`), stop at the next
    optimizer-step boundary, write a resume checkpoint there and raise
    :class:`~octtrain.runtime.preempt.Preempted`. ``resume_from``: continue the run of that resume
    checkpoint (same config); ``on_epoch_end`` then sees only the epochs not done before, and
    the checkpoint is deleted when this run returns.
    """
    knobs = EnvKnobs.from_env()
    if resume_from is not None and not Path(resume_from).is_file():
        raise ConfigError([("", f"no resume checkpoint {str(resume_from)!r}")])
    run_dir = _make_run_dir(out_dir)
    write_atomic(run_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False),
                 "the run's config")
    resume = _Resume(_path(resume_from), _path(preempt_to))
    rank_fn = functools.partial(_train_rank, cfg=cfg, run_dir=run_dir, progress=progress,
                                resume=resume)
    runtime_cfg = cfg.runtime
    if runtime_cfg.xla_cache_dir is None and knobs.xla_cache_dir:  # a search's per-host cache
        runtime_cfg = dataclasses.replace(runtime_cfg, xla_cache_dir=knobs.xla_cache_dir)
    if cfg.runtime.num_processes == 1:
        runtime = init_runtime(runtime_cfg)
        result = rank_fn(runtime, EpochChannel(on_epoch_end))
    else:
        result = launch(rank_fn, runtime_cfg, on_epoch_end, knobs)
    if resume.resume_from is not None:
        resume.resume_from.unlink(missing_ok=True)  # the run it saved is complete now
    return result  # type: ignore[no-any-return]


def _path(value: str | Path | None) -> Path | None:
    return None if value is None else Path(value)


@dataclass(frozen=True)
class _Resume:
    resume_from: Path | None  # continue this run's resume checkpoint
    preempt_to: Path | None  # on a stop request, write one here and raise Preempted


def _make_run_dir(out_dir: str | Path | None) -> Path:
    path = Path(out_dir) if out_dir is not None else default_run_dir()
    with host_errors("the run directory", path):
        path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass
class _Run:
    """Everything the epochs of one rank share, built once by :func:`_set_up`."""

    splits: Splits
    loaders: Loaders
    model: OctClassifier
    update: Update


def _train_rank(runtime: Runtime, channel: EpochChannel, *, cfg: TrainConfig, run_dir: Path,
                progress: bool, resume: _Resume) -> FitResult:
    clock = StartupClock()
    run = _set_up(runtime, cfg, run_dir, clock)
    clock.watch_first_step(run.update.optimizer)
    show = progress and runtime.is_master
    epochs, key = cfg.train.epochs, f"val/{cfg.train.early_stopping.metric}"
    checkpointer = Checkpointer(run_dir, cfg.to_dict(), run.splits.class_to_idx,
                                cfg.train.early_stopping.metric)
    stopper = EarlyStopping(cfg.train.early_stopping)
    at = _start(runtime, run, cfg, resume, stopper)
    history, partial = at.history, at.progress
    tracker = Tracker(run_dir, cfg.log, cfg.to_dict(), enabled=runtime.is_master,
                      class_to_idx=run.splits.class_to_idx)
    for done in history:  # a resumed run's metrics.jsonl holds every epoch too
        tracker.log_epoch(done["epoch"], done)
    check = functools.partial(agreed_stop, runtime) if resume.preempt_to is not None else None
    stop: _Stop | None = None
    epoch = at.epoch - 1
    try:
        with stop_on_signals() if check is not None else contextlib.nullcontext():
            for epoch in range(at.epoch, epochs):
                t_epoch, compiles_before = time.monotonic(), runtime.compile_count()
                train_metrics = _train(runtime, run, cfg, epoch, partial, check, resume.preempt_to,
                                       stopper, history, show)
                partial = TrainProgress()
                tracker.log_train(epoch, train_metrics)  # before validation, which may hang or die
                bar = ProgressBar(len(run.loaders.val), f"epoch {epoch + 1}/{epochs} val",
                                  enabled=show)
                metrics = {"epoch": epoch, **train_metrics,
                           **validate(run.model, run.loaders.val, runtime, bar),
                           **_compiles(runtime, compiles_before)}
                names = {i: n for n, i in run.splits.class_to_idx.items()}  # a reader's "class 0"
                metrics["val/majority_class_name"] = names.get(metrics["val/majority_class"], "")
                if epoch == at.epoch:  # what the run paid before its first optimizer step
                    metrics.update(clock.metrics(runtime.compile_seconds()))
                is_best = stopper.update(epoch, float(metrics[key]))
                metrics.update(_best(stopper), epoch_s=time.monotonic() - t_epoch)
                history.append(metrics)
                if runtime.is_master:
                    checkpointer.save(runtime, epoch, run.model, run.update.optimizer,
                                      run.update.scheduler, metrics, is_best)
                    tracker.log_epoch(epoch, metrics)
                    if show:
                        print(epoch_line(metrics, epochs, key, is_best), flush=True)
                stop = _decide(runtime, channel, stopper, epoch, metrics)
                if stop is _Stop.EARLY_STOPPING and show:
                    print(early_stopping_line(key, cfg.train.early_stopping.patience), flush=True)
                if stop is not None:
                    break
    finally:
        tracker.close(stop.name.lower() if stop is not None else None)
    return FitResult(run_dir, epoch + 1, stopper.best_epoch, _best(stopper)["best/value"],
                     cfg.train.early_stopping.metric, stop is not None, run.splits.class_to_idx,
                     history)


def _train(runtime: Runtime, run: _Run, cfg: TrainConfig, epoch: int, partial: TrainProgress,
           check: StopCheck | None, preempt_to: Path | None, stopper: EarlyStopping,
           history: list[dict[str, Any]], show: bool) -> dict[str, Any]:
    """The training part of ``epoch``, from ``partial`` on; a stop request (``check``) ends in
    the resume checkpoint at ``preempt_to`` and :class:`~octtrain.runtime.preempt.Preempted`."""
    run.model.set_encoder_trainable(cfg.model.encoder_trainable(epoch))
    run.loaders.set_epoch(epoch, partial.micro_batch)
    bar = ProgressBar(run.loaders.micro_batches, f"epoch {epoch + 1}/{cfg.train.epochs} train",
                      enabled=show)
    try:
        return train_epoch(epoch, run.model, run.update, run.loaders, runtime, bar, partial, check)
    except StopAtStep as stopped:
        assert preempt_to is not None  # check is None otherwise
        raise _preempt(runtime, run, cfg, preempt_to, epoch, stopped.progress, stopper, history,
                       show) from None


def _start(runtime: Runtime, run: _Run, cfg: TrainConfig, resume: _Resume,
           stopper: EarlyStopping) -> ResumePoint:
    """Where the epochs start: epoch 0, or the resume checkpoint's position (loaded into the
    model, optimizer, scheduler, early stopping and generators)."""
    if resume.resume_from is None:
        return ResumePoint(0, TrainProgress(), [])
    return restore(resume.resume_from, runtime, model=run.model, update=run.update,
                   stopper=stopper, config=cfg.to_dict())


def _preempt(runtime: Runtime, run: _Run, cfg: TrainConfig, path: Path, epoch: int,
             progress: TrainProgress, stopper: EarlyStopping, history: list[dict[str, Any]],
             show: bool) -> Preempted:
    """Write the resume checkpoint of a run stopped before micro-batch ``progress.micro_batch``
    of ``epoch`` (every rank calls this: each sends its generators and partial sums)."""
    ranks = runtime.all_gather_object(rank_state(runtime, progress), "octtrain.resume_state")
    if runtime.is_master:
        save_resume(path, runtime, epoch=epoch, ranks=ranks, model=run.model, update=run.update,
                    stopper=stopper, history=history, config=cfg.to_dict())
    runtime.barrier("octtrain.resume_saved")
    preempted = Preempted(path, epoch, progress.micro_batch, len(history),
                          stop_requested() or signal.SIGTERM)
    if show:
        print(f"octtrain: {preempted}", flush=True)
    return preempted


def _set_up(runtime: Runtime, cfg: TrainConfig, run_dir: Path, clock: StartupClock) -> _Run:
    """Data, class weights, model, optimizer and schedule of this rank, in a fixed order of
    random draws: the weights are initialised alike on every rank, augmentation is not."""
    check_fits(estimate_memory(cfg, runtime.precision), runtime.memory_available(), runtime.kind)
    runtime.seed(cfg.train.seed)
    splits = build_datasets(cfg.data)
    if len(splits.val) == 0:
        raise DataError("the validation split is empty: add patients or raise data.val_fraction")
    shares = runtime.all_gather_object(blank_volumes(splits, runtime.rank, runtime.world_size),
                                       "octtrain.blank_volumes")
    blank = [volume for share in shares for volume in share]  # (split, path)
    if blank and runtime.is_master:
        print(f"octtrain: {blank_warning(blank)}", file=sys.stderr, flush=True)
    if cfg.data.nonfinite == "replace":
        mine = replaced_volumes(splits, runtime.rank, runtime.world_size)
        shares = runtime.all_gather_object(mine, "octtrain.nonfinite")
        replaced = [volume for share in shares for volume in share]
        if replaced and runtime.is_master:
            print(f"octtrain: {replaced_note(replaced)}", file=sys.stderr, flush=True)
    if runtime.is_master:
        save_class_to_idx(run_dir / "class_to_idx.json", splits.class_to_idx)
        if cfg.data.classes is None:  # every label found became a class: show them to check
            print("volumes per class and split (data.classes would pin the classes):\n" + class_table(
                {s: getattr(splits, s).labels for s in SPLITS}, splits.class_to_idx), flush=True)

    # Class weights from the whole training split, computed once on rank 0 and sent to all.
    weights = (resolve_class_weights(cfg.train.class_weights, splits.train.labels,
                                     splits.num_classes)
               if runtime.is_master else None)
    weights = runtime.broadcast_object(weights, "octtrain.class_weights")
    loaders = build_loaders(splits, cfg.data, cfg.train, runtime.world_size, runtime.rank,
                            runtime.kind)
    clock.mark("data")

    torch.manual_seed(cfg.train.seed)  # the initial weights depend on the seed only (checkpoint.py)
    model = build_model(cfg.model, *cfg.data.shape, splits.num_classes,
                        runtime.checkpoint_function()).to(runtime.device)
    optimizer = build_optimizer(model, cfg.train)
    steps_per_epoch = loaders.micro_batches // cfg.train.grad_accum_steps
    update = Update(optimizer, build_scheduler(optimizer, cfg.train, steps_per_epoch),
                    weights.to(runtime.device) if weights is not None else None,
                    cfg.train.label_smoothing, cfg.train.grad_accum_steps, cfg.train.grad_clip)
    runtime.seed(cfg.train.seed, per_rank=True)  # augmentation differs per rank from here on
    clock.mark("model")
    return _Run(splits, loaders, model, update)


def _compiles(runtime: Runtime, before: int | None) -> dict[str, int]:
    """``xla/compiles``: graphs compiled during the epoch (on XLA only)."""
    after = runtime.compile_count()
    return {"xla/compiles": after - before} if after is not None and before is not None else {}


def _best(stopper: EarlyStopping) -> dict[str, Any]:
    return {"best/epoch": stopper.best_epoch,
            "best/value": stopper.best if stopper.best is not None else math.nan}


class _Stop(enum.Enum):
    """Why every rank leaves the loop before the last epoch."""

    CALLBACK = "on_epoch_end raised"  # its exception propagates out of fit
    EARLY_STOPPING = "no improvement for train.early_stopping.patience epochs"


def _decide(runtime: Runtime, channel: EpochChannel, stopper: EarlyStopping, epoch: int,
            metrics: dict[str, Any]) -> _Stop | None:
    """Why every rank stops after ``epoch``, or None to go on. Call on every rank.

    The callback's verdict is decided on rank 0 and sent to every rank, so a pruned trial ends
    all ranks at this epoch instead of leaving some in a collective.
    """
    decision = channel.decide(epoch, metrics) if runtime.is_master else None
    decision = runtime.broadcast_object(decision, f"octtrain.decision.{epoch}")
    if decision is EpochDecision.STOP:
        return _Stop.CALLBACK
    return _Stop.EARLY_STOPPING if stopper.should_stop else None
