"""octtrain.train.epoch: one training epoch and one validation pass, on a stand-in classifier (CPU).

The stand-in has what both functions read of an ``OctClassifier``: ``num_classes``,
``encoder_trainable`` and ``forward``. The whole trainer is tested through ``fit`` in
``test_loop.py``.
"""

from __future__ import annotations

import io
import math
import time
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from octtrain.config.sections import RuntimeSection
from octtrain.data.dataset import Loaders, PaddedDataset
from octtrain.errors import DivergedError
from octtrain.runtime.backend import Runtime, init_runtime
from octtrain.train.epoch import Update, train_epoch, validate
from octtrain.train.progress import ProgressBar


class Linear(torch.nn.Module):
    num_classes = 3
    encoder_trainable = False

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)  # type: ignore[no-any-return]


@pytest.fixture
def runtime() -> Runtime:
    return init_runtime(RuntimeSection(device="cpu"))


def _data(n: int) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(n, 2, generator=g), torch.arange(n) % 3)


def _quiet(total: int) -> ProgressBar:
    return ProgressBar(total, "", enabled=False)


def test_validate_counts_every_real_sample_once_and_no_padding(runtime: Runtime) -> None:
    torch.manual_seed(0)
    model, data = Linear(), _data(5)
    loader: DataLoader[Any] = DataLoader(PaddedDataset(data, 4), batch_size=4)  # 8 items, 3 padding
    out = validate(model, loader, runtime, _quiet(len(loader)))  # type: ignore[arg-type]
    x, y = data.tensors
    with torch.no_grad():
        logits = model(x)
    assert out["val/count"] == 5
    assert out["val/confusion"] == [[int(((y == t) & (logits.argmax(-1) == p)).sum()) for p in range(3)]
                                    for t in range(3)]
    assert out["val/loss"] == pytest.approx(float(F.cross_entropy(logits, y)), rel=1e-6)


def _update(model: Linear, accum: int) -> Update:
    # Named groups as octtrain.train.optim makes them: the metrics report each group's LR.
    optimizer = torch.optim.SGD([{"params": [model.fc.weight], "name": "head"},
                                 {"params": [model.fc.bias], "name": "encoder"}], lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (step + 1))
    return Update(optimizer, scheduler, None, 0.0, accum, 0.0)


def _loaders(data: TensorDataset, micro_batches: int) -> Loaders:
    sampler: DistributedSampler[Any] = DistributedSampler(data, num_replicas=1, rank=0, shuffle=False)
    train: DataLoader[Any] = DataLoader(data, batch_size=2, sampler=sampler, drop_last=True)
    return Loaders(train, sampler, train, micro_batches)


def test_train_epoch_steps_once_per_accumulation_and_skips_the_leftover(runtime: Runtime) -> None:
    torch.manual_seed(0)
    model = Linear()
    update = _update(model, accum=2)
    # 6 samples: 3 micro-batches of 2; with accumulation 2 the epoch trains 2 of them (1 step).
    out = train_epoch(0, model, update, _loaders(_data(6), micro_batches=2), runtime,  # type: ignore[arg-type]
                      _quiet(2))
    assert out["train/count"] == 4
    assert update.scheduler.last_epoch == 1  # one optimizer step
    assert out["lr/head"] == pytest.approx(0.05)  # the LR the schedule set after that step
    assert out["encoder_trainable"] is False and math.isfinite(out["train/loss"])


def test_a_nan_loss_is_a_diverged_error_naming_the_epoch(runtime: Runtime) -> None:
    model = Linear()
    with torch.no_grad():
        model.fc.weight.fill_(math.nan)
    with pytest.raises(DivergedError, match="in epoch 4"):
        train_epoch(4, model, _update(model, accum=1), _loaders(_data(4), micro_batches=2),  # type: ignore[arg-type]
                    runtime, _quiet(2))


def test_off_a_terminal_a_long_loop_prints_a_progress_line_at_most_once_an_interval() -> None:
    stream = io.StringIO()  # not a terminal: a pipe, a log file, a search's trial log
    bar = ProgressBar(5, "epoch 1/2 train", stream=stream, piped_line_s=0.2)
    bar.update()
    assert stream.getvalue() == ""  # not before the interval
    time.sleep(0.25)
    bar.update(postfix="loss 1.2000")
    bar.update()
    assert stream.getvalue() == "epoch 1/2 train: 2/5 batches, 0 min 00 s loss 1.2000\n"
    time.sleep(0.25)
    bar.update(3)  # the last batch: close() prints the summary instead
    bar.close("done")
    assert stream.getvalue().splitlines()[1:] == ["done"]
