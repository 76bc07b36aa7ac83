"""One epoch of training and one pass of validation, written once for every device.

XLA's rules are the common denominator: batches keep one shape (see :mod:`octtrain.data.dataset`),
nothing inside a step reads a device value on the host (loss and confusion counts accumulate
on the device), and the graph is cut once per micro-batch. Each function reads its totals once,
at the end, summed over ranks: counts, never averaged means.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from octtrain.data import Loaders
from octtrain.errors import DivergedError
from octtrain.model import OctClassifier
from octtrain.runtime import Runtime
from octtrain.train.loss import cross_entropy_with_smoothing
from octtrain.train.metrics import confusion_counts, summarize
from octtrain.train.optim import current_lrs
from octtrain.train.progress import ProgressBar

TRAIN_SUMMARY = ("train/accuracy", "train/balanced_accuracy", "train/max_class_share")


@dataclass
class Update:
    """How a micro-batch's loss becomes a parameter update."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    class_weights: torch.Tensor | None  # on the device; None: every class weighs 1
    label_smoothing: float
    grad_accum_steps: int
    grad_clip: float  # max global grad norm; 0 = off

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return cross_entropy_with_smoothing(logits, targets, self.class_weights,
                                            self.label_smoothing)

    def step(self, runtime: Runtime) -> None:
        """Average gradients over ranks, clip, step; the LR moves once per optimizer step."""
        runtime.optimizer_step(self.optimizer, self.grad_clip)
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)


@dataclass
class TrainProgress:
    """How far one rank got in a training epoch: the next micro-batch and its sums so far.

    A training epoch stopped at an optimizer-step boundary continues from it
    (:mod:`octtrain.train.resume`); the sums stay on the device while the epoch runs.
    """

    micro_batch: int = 0
    loss_sum: torch.Tensor | None = None  # sum of per-sample losses; None: nothing yet
    conf: torch.Tensor | None = None  # (C, C) confusion counts
    io_s: float = 0.0
    compute_s: float = 0.0


class StopAtStep(Exception):
    """A stop was requested: the epoch ended at an optimizer-step boundary (see ``progress``)."""

    def __init__(self, progress: TrainProgress) -> None:
        super().__init__(f"stopped before micro-batch {progress.micro_batch}")
        self.progress = progress


StopCheck = Callable[[str], bool]  # (where) → stop now? Called on every rank at step boundaries


def train_epoch(epoch: int, model: OctClassifier, update: Update, loaders: Loaders,
                runtime: Runtime, bar: ProgressBar, progress: TrainProgress | None = None,
                stop: StopCheck | None = None) -> dict[str, Any]:
    """Train on ``loaders.micro_batches`` batches; the epoch's ``train/...``, ``lr/...`` and
    timing metrics. A NaN or infinite mean loss is a :class:`DivergedError`.

    ``progress`` continues a stopped epoch (the loaders skip the batches it trained).
    ``stop`` is asked before each optimizer step and once after the last: when it says yes,
    :class:`StopAtStep` is raised with the progress so far.
    """
    model.train()
    c = model.num_classes
    p = progress or TrainProgress()
    loss_sum = torch.zeros((), device=runtime.device) if p.loss_sum is None else p.loss_sum.to(runtime.device)
    conf = torch.zeros(c, c, device=runtime.device) if p.conf is None else p.conf.to(runtime.device)
    io_s, compute_s = p.io_s, p.compute_s
    update.optimizer.zero_grad(set_to_none=True)
    batches = runtime.loader(loaders.train)
    try:
        for i in range(p.micro_batch, loaders.micro_batches + 1):
            if stop is not None and i % update.grad_accum_steps == 0 and stop(f"{epoch}.{i}"):
                raise StopAtStep(TrainProgress(i, loss_sum, conf, io_s, compute_s))
            if i == loaders.micro_batches:
                break
            t0 = time.monotonic()
            x, y = next(batches)
            t1 = time.monotonic()
            with runtime.autocast():
                logits = model(x).float()  # (B, C); loss and metrics in fp32 under bf16 too
            loss = update.loss(logits, y)
            (loss / update.grad_accum_steps).backward()
            loss_sum += loss.detach() * y.shape[0]
            conf += confusion_counts(y, logits.detach().argmax(-1), c)
            if (i + 1) % update.grad_accum_steps == 0:
                update.step(runtime)
            runtime.sync()  # one graph per micro-batch; no host read of device values here
            io_s += t1 - t0
            compute_s += time.monotonic() - t1
            bar.update()
    finally:
        batches.close()  # stops the loader's feeder threads when micro-batches are left over

    # This is the epoch's one device→host read of training values.
    totals = runtime.all_reduce_sum(torch.cat([loss_sum.view(1), conf.view(-1)])).cpu().double()
    count = float(totals[1:].sum())
    mean_loss = float(totals[0]) / max(count, 1.0)
    bar.close()
    if not math.isfinite(mean_loss):
        raise DivergedError(epoch, mean_loss)
    summary = summarize(totals[1:].view(c, c).round().long().numpy(), "train")
    return {
        "train/loss": mean_loss,
        "train/count": int(count),  # samples trained this epoch, all ranks
        **{k: v for k, v in summary.items() if k in TRAIN_SUMMARY},
        **current_lrs(update.optimizer),
        "encoder_trainable": model.encoder_trainable,
        "io/load_s": io_s,
        "train/compute_s": compute_s,
        "io/stall_share": io_s / max(io_s + compute_s, 1e-9),  # of the loop's time: waiting for batches
    }


def validate(model: OctClassifier, loader: DataLoader[Any], runtime: Runtime,
             bar: ProgressBar) -> dict[str, Any]:
    """Every ``val/...`` metric (see :func:`octtrain.train.metrics.summarize`) and ``val/loss``.

    No augmentation, no gradients, padding masked out; the loss is plain cross-entropy, so it
    compares across trials whatever their class weights and smoothing.
    """
    model.eval()
    c = model.num_classes
    loss_sum = torch.zeros((), device=runtime.device)
    conf = torch.zeros(c, c, device=runtime.device)
    with torch.no_grad():
        for x, y, valid in runtime.loader(loader):
            with runtime.autocast():
                logits = model(x).float()
            per_sample = F.cross_entropy(logits.float(), y, reduction="none")
            loss_sum += (per_sample * valid).sum()
            conf += confusion_counts(y, logits.argmax(-1), c, valid)
            runtime.sync()
            bar.update()
    totals = runtime.all_reduce_sum(torch.cat([loss_sum.view(1), conf.view(-1)])).cpu().double()
    bar.close()
    cm = totals[1:].view(c, c).round().long().numpy()
    count = int(cm.sum())
    out = summarize(cm, "val")
    out["val/loss"] = float(totals[0]) / count if count else math.nan
    return out
