"""The training loop: ``fit(cfg)`` fine-tunes the classifier and returns what it found.

Reads top to bottom: set-up (data, class weights, model, optimizer, schedule), then per epoch
train → log train metrics → validate → early stopping / checkpoint → ``on_epoch_end``.

Written once for every device (see :mod:`octtrain.runtime`), with XLA's rules as the common
denominator: fixed shapes (``drop_last`` for train, validation padded to full batches with a
validity mask), no host sync inside a step (loss and confusion counts accumulate on the device
and are read once per epoch), a graph cut per micro-batch. Metrics are confusion *counts*
summed over ranks, never averaged means.
"""

from __future__ import annotations

import functools
import json
import math
import random
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from octtrain.callback import EpochCallback, EpochChannel, EpochDecision
from octtrain.checkpoint import save_checkpoint
from octtrain.config import EnvKnobs, TrainConfig
from octtrain.dataset import Splits, build_splits
from octtrain.early_stop import EarlyStopping
from octtrain.errors import ConfigError, DataError, DivergedError
from octtrain.launch import launch
from octtrain.loss import cross_entropy_with_smoothing, resolve_class_weights
from octtrain.metrics import summarize
from octtrain.model import OctClassifier, build_model
from octtrain.progress import ProgressBar
from octtrain.runtime import Runtime, init_runtime
from octtrain.schedule import lr_factor
from octtrain.splits import save_class_to_idx
from octtrain.tracking import Tracker


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
) -> FitResult:
    """Train with ``cfg``; write the run directory; return the best epoch and the history.

    ``on_epoch_end(epoch, metrics)`` runs after every validation (epochs count from 0); any
    exception it raises propagates out of ``fit`` unchanged after the run directory is closed
    (a search stops a trial this way). Raises :class:`DivergedError` when the training loss is
    NaN/inf, :class:`ConfigError`/:class:`DataError` for bad settings or data.
    """
    knobs = EnvKnobs.from_env()
    run_dir = _make_run_dir(out_dir)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    rank_fn = functools.partial(_train_rank, cfg=cfg, run_dir=run_dir, progress=progress,
                                save_rank_weights=knobs.save_rank_weights)
    if cfg.runtime.num_processes == 1:
        runtime = init_runtime(cfg.runtime)
        return rank_fn(runtime, EpochChannel(on_epoch_end))
    result: FitResult = launch(rank_fn, cfg.runtime, on_epoch_end, knobs)
    return result


def _make_run_dir(out_dir: str | Path | None) -> Path:
    if out_dir is None:
        out_dir = Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    path = Path(out_dir)
    path.mkdir(parents=True, exist_ok=True)
    return path


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class _PaddedEval(Dataset):
    """A split padded to a multiple of ``multiple`` items; each item carries ``valid`` (1 or 0).

    Every validation batch then has the same shape (no new XLA graph for a short last batch),
    and the padding is masked out of the counts. Padding repeats item 0 (read from the cache).
    """

    def __init__(self, base: Dataset, multiple: int) -> None:
        self.base = base
        self.n = len(base)  # type: ignore[arg-type]
        self.total = math.ceil(self.n / multiple) * multiple

    def __len__(self) -> int:
        return self.total

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, torch.Tensor]:
        x, y = self.base[i if i < self.n else 0]
        # float32: a Python float collates to float64 and would promote the masked loss to it
        return x, y, torch.tensor(float(i < self.n), dtype=torch.float32)


def confusion_counts(targets: torch.Tensor, preds: torch.Tensor, num_classes: int,
                     valid: torch.Tensor | None = None) -> torch.Tensor:
    """``(C, C)`` float counts via one-hot products: a static-shape op (bincount is not on XLA).
    Float32 counts are exact up to 2**24 samples."""
    t = F.one_hot(targets, num_classes).float()  # (B, C)
    if valid is not None:
        t = t * valid.float().unsqueeze(1)
    return t.T @ F.one_hot(preds, num_classes).float()  # (C, C)


def _param_groups(model: OctClassifier, lr_head: float, lr_encoder: float, wd: float) -> list[dict[str, Any]]:
    """Head and encoder at their own LR; biases and norms get no weight decay."""
    groups = []
    for name, params, lr in (("head", list(model.head_parameters()), lr_head),
                             ("encoder", list(model.encoder_parameters()), lr_encoder)):
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        groups.append({"params": decay, "lr": lr, "weight_decay": wd, "name": name})
        groups.append({"params": no_decay, "lr": lr, "weight_decay": 0.0, "name": name})
    return [g for g in groups if g["params"]]


def _train_rank(runtime: Runtime, channel: EpochChannel, *, cfg: TrainConfig, run_dir: Path,
                progress: bool, save_rank_weights: bool) -> FitResult:
    tcfg, dcfg = cfg.train, cfg.data
    master = runtime.is_master
    show = progress and master
    seed_everything(tcfg.seed)  # identical on every rank: identical initial weights

    # ---- data ------------------------------------------------------------------------------
    splits: Splits = build_splits(dcfg)
    num_classes = len(splits.class_to_idx)
    if len(splits.val) == 0:
        raise DataError("the validation split is empty: add patients or raise data.val_fraction")
    if master:
        save_class_to_idx(run_dir / "class_to_idx.json", splits.class_to_idx)

    # Class weights from the whole training split, computed once on rank 0 and sent to all.
    weights_cpu = (resolve_class_weights(tcfg.class_weights, splits.train.labels, num_classes)
                   if master else None)
    weights_cpu = runtime.broadcast_object(weights_cpu, "octtrain.class_weights")
    class_weights = weights_cpu.to(runtime.device) if weights_cpu is not None else None

    world, rank = runtime.world_size, runtime.rank
    train_sampler: DistributedSampler[Any] = DistributedSampler(
        splits.train, num_replicas=world, rank=rank, shuffle=True, seed=tcfg.seed, drop_last=True)
    loader_kw: dict[str, Any] = {"num_workers": dcfg.num_workers,
                                 "persistent_workers": dcfg.num_workers > 0}
    train_loader = DataLoader(splits.train, batch_size=tcfg.batch_size, sampler=train_sampler,
                              drop_last=True, **loader_kw)
    val_set = _PaddedEval(splits.val, tcfg.batch_size * world)
    val_loader = DataLoader(val_set, batch_size=tcfg.batch_size, shuffle=False, **loader_kw,
                            sampler=DistributedSampler(val_set, num_replicas=world, rank=rank,
                                                       shuffle=False))
    micro_batches = len(train_loader)
    steps_per_epoch = micro_batches // tcfg.grad_accum_steps
    if steps_per_epoch == 0:
        raise ConfigError([("train.grad_accum_steps",
                            f"{tcfg.grad_accum_steps} micro-batches per step, but each process "
                            f"gets only {micro_batches} batches of {tcfg.batch_size} per epoch")])
    # Leftover micro-batches of an epoch (fewer than one accumulation) are skipped: every
    # optimizer step then averages exactly grad_accum_steps micro-batches.
    used_micro = steps_per_epoch * tcfg.grad_accum_steps

    # ---- model, optimizer, schedule --------------------------------------------------------
    model = build_model(cfg.model, *dcfg.shape, num_classes).to(runtime.device)
    optimizer = torch.optim.AdamW(
        _param_groups(model, tcfg.lr_head, tcfg.lr_encoder, tcfg.weight_decay))
    total_steps = tcfg.epochs * steps_per_epoch
    warmup_steps = tcfg.warmup_epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, functools.partial(lr_factor, warmup_steps=warmup_steps,
                                     total_steps=total_steps, kind=tcfg.scheduler))
    seed_everything(tcfg.seed + 1000 * rank)  # augmentation differs per rank from here on

    tracker = Tracker(run_dir, cfg.log, cfg.to_dict(), enabled=master)
    stopper = EarlyStopping(tcfg.early_stopping)
    history: list[dict[str, Any]] = []
    stopped_early = False
    epoch = -1
    try:
        for epoch in range(tcfg.epochs):
            t_epoch = time.monotonic()
            compiles_before = runtime.compile_count()
            trainable = cfg.model.encoder_trainable(epoch)
            model.set_encoder_trainable(trainable)
            train_sampler.set_epoch(epoch)

            # ---- train ---------------------------------------------------------------------
            model.train()
            bar = ProgressBar(used_micro, f"epoch {epoch + 1}/{tcfg.epochs} train", enabled=show)
            loss_sum = torch.zeros((), device=runtime.device)
            train_conf = torch.zeros(num_classes, num_classes, device=runtime.device)
            io_s = compute_s = 0.0
            optimizer.zero_grad(set_to_none=True)
            batches = runtime.loader(train_loader)
            for i in range(used_micro):
                t0 = time.monotonic()
                x, y = next(batches)
                t1 = time.monotonic()
                logits = model(x)  # (B, C)
                loss = cross_entropy_with_smoothing(logits, y, class_weights, tcfg.label_smoothing)
                (loss / tcfg.grad_accum_steps).backward()
                loss_sum += loss.detach() * y.shape[0]
                train_conf += confusion_counts(y, logits.detach().argmax(-1), num_classes)
                if (i + 1) % tcfg.grad_accum_steps == 0:
                    runtime.optimizer_step(optimizer, tcfg.grad_clip)
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                runtime.sync()  # one graph per micro-batch; no host read of device values here
                io_s += t1 - t0
                compute_s += time.monotonic() - t1
                bar.update()
            batches.close()  # stops the loader's feeder threads when micro-batches are left over

            # This is the epoch's one device→host read of training values.
            totals = runtime.all_reduce_sum(torch.cat([loss_sum.view(1), train_conf.view(-1)]))
            totals_cpu = totals.cpu().double()
            train_count = float(totals_cpu[1:].sum())
            train_loss = float(totals_cpu[0]) / max(train_count, 1.0)
            bar.close()
            if not math.isfinite(train_loss):
                raise DivergedError(epoch, train_loss)
            train_metrics = {
                "train/loss": train_loss,
                "train/count": int(train_count),  # samples trained this epoch, all ranks
                **{k: v for k, v in summarize(
                    totals_cpu[1:].view(num_classes, num_classes).round().long().numpy(), "train"
                ).items() if k in ("train/accuracy", "train/balanced_accuracy", "train/max_class_share")},
                "lr/head": optimizer.param_groups[0]["lr"],
                "lr/encoder": next(g["lr"] for g in optimizer.param_groups if g["name"] == "encoder"),
                "encoder_trainable": trainable,
                "io/load_s": io_s,
                "train/compute_s": compute_s,
            }
            tracker.log_train(epoch, train_metrics)  # before validation, which may hang or die

            # ---- validate ------------------------------------------------------------------
            val_metrics = _validate(model, val_loader, runtime, num_classes, show,
                                    f"epoch {epoch + 1}/{tcfg.epochs} val")
            metrics: dict[str, Any] = {"epoch": epoch, **train_metrics, **val_metrics}
            compiles_after = runtime.compile_count()
            if compiles_after is not None and compiles_before is not None:
                metrics["xla/compiles"] = compiles_after - compiles_before

            # ---- select, checkpoint, report ------------------------------------------------
            key = f"val/{tcfg.early_stopping.metric}"
            is_best = stopper.update(epoch, float(metrics[key]))
            metrics["best/epoch"] = stopper.best_epoch
            metrics["best/value"] = stopper.best if stopper.best is not None else math.nan
            metrics["epoch_s"] = time.monotonic() - t_epoch
            history.append(metrics)
            if master:
                state = _checkpoint_state(runtime, model, optimizer, scheduler, cfg, splits,
                                          epoch, stopper, metrics)
                save_checkpoint(run_dir / "last.pt", state)
                if is_best:
                    save_checkpoint(run_dir / "best.pt", state)
                tracker.log_epoch(epoch, metrics)
                if show:
                    _print_epoch(metrics, tcfg.epochs, key, is_best)

            # The callback's verdict is decided on rank 0 and sent to every rank, so a pruned
            # trial ends all ranks at this epoch instead of leaving some in a collective.
            decision = channel.decide(epoch, metrics) if master else None
            decision = runtime.broadcast_object(decision, f"octtrain.decision.{epoch}")
            if decision is EpochDecision.STOP:
                stopped_early = True
                break
            if stopper.should_stop:
                stopped_early = True
                if show:
                    print(f"early stopping: no {key} improvement for "
                          f"{tcfg.early_stopping.patience} epochs", flush=True)
                break
    finally:
        tracker.close()
    if save_rank_weights:
        # Test hook: every rank writes its final weights, so a test can check that the
        # data-parallel replicas stayed identical (a checkpoint holds rank 0's only).
        torch.save(runtime.to_cpu(model.state_dict()), run_dir / f"rank{rank}_weights.pt")
    best_value = stopper.best if stopper.best is not None else math.nan
    return FitResult(run_dir, epoch + 1, stopper.best_epoch, best_value,
                     tcfg.early_stopping.metric, stopped_early, splits.class_to_idx, history)


def _validate(model: OctClassifier, loader: DataLoader, runtime: Runtime, num_classes: int,
              show: bool, desc: str) -> dict[str, Any]:
    """No augmentation, no gradients; counts accumulate on the device, one read at the end."""
    model.eval()
    bar = ProgressBar(len(loader), desc, enabled=show)
    loss_sum = torch.zeros((), device=runtime.device)
    conf = torch.zeros(num_classes, num_classes, device=runtime.device)
    with torch.no_grad():
        for x, y, valid in runtime.loader(loader):
            logits = model(x)
            per_sample = F.cross_entropy(logits.float(), y, reduction="none")  # plain CE: comparable across trials
            loss_sum += (per_sample * valid).sum()
            conf += confusion_counts(y, logits.argmax(-1), num_classes, valid)
            runtime.sync()
            bar.update()
    totals = runtime.all_reduce_sum(torch.cat([loss_sum.view(1), conf.view(-1)])).cpu().double()
    bar.close()
    cm = totals[1:].view(num_classes, num_classes).round().long().numpy()
    count = int(cm.sum())
    out = summarize(cm, "val")
    out["val/loss"] = float(totals[0]) / count if count else math.nan
    return out


def _checkpoint_state(runtime: Runtime, model: OctClassifier, optimizer: torch.optim.Optimizer,
                      scheduler: Any, cfg: TrainConfig, splits: Splits, epoch: int,
                      stopper: EarlyStopping, metrics: dict[str, Any]) -> dict[str, Any]:
    scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float, bool))}
    return {
        "model": runtime.to_cpu(model.state_dict()),
        "optimizer": runtime.to_cpu(optimizer.state_dict()),
        "scheduler": {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"},
        "epoch": epoch,
        "best_metric": cfg.train.early_stopping.metric,
        "best_value": stopper.best if stopper.best is not None else math.nan,
        "best_epoch": stopper.best_epoch,
        "metrics": scalars,
        "config": cfg.to_dict(),
        "class_to_idx": dict(splits.class_to_idx),
    }


def _print_epoch(m: dict[str, Any], epochs: int, key: str, is_best: bool) -> None:
    share = m["val/max_class_share"]
    line = (
        f"epoch {m['epoch'] + 1:>3}/{epochs}  "
        f"train loss {m['train/loss']:.4f} bal_acc {m['train/balanced_accuracy']:.3f} | "
        f"val loss {m['val/loss']:.4f} acc {m['val/accuracy']:.3f} "
        f"bal_acc {m['val/balanced_accuracy']:.3f} f1 {m['val/macro_f1']:.3f} "
        f"top-class {share:.0%} (class {m['val/majority_class']})  "
        f"{m['epoch_s']:.1f}s (io {m['io/load_s']:.1f}s)"
        f"{'  encoder on' if m['encoder_trainable'] else ''}"
        f"{'  xla compiles ' + str(m['xla/compiles']) if 'xla/compiles' in m else ''}"
        f"{'  *best ' + key if is_best else ''}"
    )
    print(line, flush=True)


def dump_result(result: FitResult) -> str:
    """A JSON summary of a result (the history stays in metrics.jsonl)."""
    return json.dumps({
        "out_dir": str(result.out_dir), "epochs_run": result.epochs_run,
        "best_epoch": result.best_epoch, "best_value": result.best_value, "metric": result.metric,
        "stopped_early": result.stopped_early, "class_to_idx": result.class_to_idx,
    })
