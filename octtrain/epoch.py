"""One epoch of training and one pass of validation, written once for every device.

XLA's rules are the common denominator: batches keep one shape (see :mod:`octtrain.dataset`),
nothing inside a step reads a device value on the host (loss and confusion counts accumulate
on the device), and the graph is cut once per micro-batch. Each function reads its totals once,
at the end, summed over ranks: counts, never averaged means.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from octtrain.dataset import Loaders
from octtrain.errors import DivergedError
from octtrain.loss import cross_entropy_with_smoothing
from octtrain.metrics import confusion_counts, summarize
from octtrain.model import OctClassifier
from octtrain.optim import current_lrs
from octtrain.progress import ProgressBar
from octtrain.runtime import Runtime

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


def train_epoch(epoch: int, model: OctClassifier, update: Update, loaders: Loaders,
                runtime: Runtime, bar: ProgressBar) -> dict[str, Any]:
    """Train on ``loaders.micro_batches`` batches; the epoch's ``train/...``, ``lr/...`` and
    timing metrics. A NaN or infinite mean loss is a :class:`DivergedError`."""
    model.train()
    c = model.num_classes
    loss_sum = torch.zeros((), device=runtime.device)
    conf = torch.zeros(c, c, device=runtime.device)
    io_s = compute_s = 0.0
    update.optimizer.zero_grad(set_to_none=True)
    batches = runtime.loader(loaders.train)
    for i in range(loaders.micro_batches):
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
    """Every ``val/...`` metric (see :func:`octtrain.metrics.summarize`) and ``val/loss``.

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
