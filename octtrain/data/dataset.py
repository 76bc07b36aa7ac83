"""The torch side of the data: the ``Dataset`` of each split's records (see
:mod:`octtrain.data.records`), and one rank's loaders.

``VolumeDataset[i]`` is ``(volume, label)`` with ``volume`` a float32 ``(T, H, W)`` tensor in
``[0, 1]`` (augmentation may leave that range slightly), augmented per sample on the fly.
Volumes come from a :class:`VolumeSource`: for a run, the host's
:class:`~octtrain.data.consolidated.ConsolidatedStore` (one memory-mapped array built once for all
trials), so no trial but the first reads a source file. ``labels`` never touches a volume:
class weights are computed from it at setup.

Batches keep one shape, as XLA wants (a new shape is a new graph): the train loader drops the
last short batch, and validation is padded to full batches with a validity mask
(:class:`PaddedDataset`).
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from octtrain.config import AugmentSection, DataSection, TrainSection
from octtrain.data.augment import Augment
from octtrain.data.consolidated import open_store
from octtrain.data.preprocess import default_cache_dir
from octtrain.data.records import SPLITS, Record, split_records
from octtrain.errors import ConfigError


class VolumeSource(Protocol):
    """Where preprocessed volumes come from, by source path: a
    :class:`~octtrain.data.consolidated.ConsolidatedStore` (or anything that answers the same)."""

    def load(self, path: str | os.PathLike[str]) -> np.ndarray: ...

    def is_blank(self, path: str | os.PathLike[str]) -> bool: ...

    def was_replaced(self, path: str | os.PathLike[str]) -> bool: ...


class VolumeDataset(Dataset[tuple[torch.Tensor, int]]):
    """Volumes of one split. ``augment=None`` (val/test) returns identical tensors every call."""

    def __init__(
        self, records: Sequence[Record], cache: VolumeSource, augment: Augment | None = None
    ) -> None:
        self.records: list[Record] = list(records)
        self.cache = cache
        self.augment = augment if augment is not None else Augment(AugmentSection())

    @property
    def labels(self) -> list[int]:
        """Class index of every volume, in order; reads no volume."""
        return [r.label for r in self.records]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        record = self.records[index]
        volume = torch.from_numpy(self.cache.load(record.path))  # (T, H, W)
        return self.augment(volume), record.label


@dataclass
class Splits:
    """The datasets of the train, val and test splits, numbered alike."""

    train: VolumeDataset
    val: VolumeDataset
    test: VolumeDataset
    class_to_idx: dict[str, int]  # the same numbering for all three splits

    @property
    def num_classes(self) -> int:
        return len(self.class_to_idx)


def build_datasets(
    cfg: DataSection,
    *,
    augment_train: bool = True,
    class_to_idx: Mapping[str, int] | None = None,
) -> Splits:
    """Index, split and wrap the dataset of ``cfg``.

    The train split gets ``cfg.augment`` when ``augment_train``; val and test get none at all.
    ``class_to_idx`` (e.g. from :func:`octtrain.data.records.load_class_to_idx`) fixes the class
    numbering; by default it is derived from the sorted class names. All splits share one
    consolidated store in ``cfg.cache_dir`` (built here when there is none yet).
    """
    records, mapping = split_records(cfg, class_to_idx)
    if cfg.train_on_val:  # a final model (octsearch finalize): validation still runs, on trained data
        records["train"] = records["train"] + records["val"]
    names = {i: name for name, i in mapping.items()}
    cache_dir = Path(cfg.cache_dir) if cfg.cache_dir is not None else default_cache_dir()
    cache = open_store(cache_dir, [r for split in records.values() for r in split], names,
                       cfg.shape, cfg.clip_percentiles, cfg.store, cfg.allow_single_bscan,
                       replace_nonfinite=cfg.nonfinite == "replace")
    train_augment = Augment(cfg.augment if augment_train else AugmentSection())
    return Splits(
        train=VolumeDataset(records["train"], cache, train_augment),
        val=VolumeDataset(records["val"], cache),
        test=VolumeDataset(records["test"], cache),
        class_to_idx=mapping,
    )


def blank_volumes(splits: Splits, rank: int, world: int) -> list[tuple[str, str]]:
    """``(split, path)`` of share ``rank`` of ``world`` of the volumes of the train, val and test
    splits (each volume once) that are constant (blank after the intensity clip).

    Run once before the first epoch, so that every blank one is counted (a DataLoader worker
    could not report it); the consolidated store answers from its index. A preprocessed volume
    is all zeros exactly when its clipped intensity range is empty (see
    :func:`octtrain.data.preprocess.clip_and_scale`).
    """
    return [(split, r.path) for split, r in _volume_shares(splits, rank, world)
            if splits.train.cache.is_blank(r.path)]


def replaced_volumes(splits: Splits, rank: int, world: int) -> list[tuple[str, str]]:
    """Of share ``rank`` of ``world`` of the volumes of every split (as :func:`blank_volumes`),
    ``(split, path)`` of those whose NaN/inf values were replaced by 0 (``data.nonfinite: replace``)."""
    return [(split, r.path) for split, r in _volume_shares(splits, rank, world)
            if splits.train.cache.was_replaced(r.path)]


def _volume_shares(splits: Splits, rank: int, world: int) -> list[tuple[str, Record]]:
    """Share ``rank`` of ``world`` of the volumes of the train, val and test splits, each with its
    split and each once: the ranks of a run together visit every volume once (a val volume
    that ``data.train_on_val`` also trains on counts as train's)."""
    seen: set[str] = set()
    out: list[tuple[str, Record]] = []
    for split in SPLITS:
        for r in getattr(splits, split).records:
            if r.path not in seen:
                seen.add(r.path)
                out.append((split, r))
    return out[rank::world]


def replaced_note(volumes: Sequence[tuple[str, str]], shown: int = 3) -> str:
    """One line counting the volumes whose NaN/inf values were replaced, naming up to ``shown``
    of each split (``volumes``: ``(split, path)``)."""
    return (f"{len(volumes)} volume(s) held NaN or infinite values, replaced by 0 "
            f"(data.nonfinite: replace): {_by_split(volumes, shown)}")


def blank_warning(volumes: Sequence[tuple[str, str]], shown: int = 3) -> str:
    """One line counting the blank ``volumes`` (``(split, path)``), naming up to ``shown`` of each split."""
    return (f"warning: {len(volumes)} volume(s) are constant (blank after the intensity clip: "
            f"they are read as all zeros): {_by_split(volumes, shown)}")


def _by_split(volumes: Sequence[tuple[str, str]], shown: int) -> str:
    """``train: a.npy, b.npy, ... (2 more); test: c.npy``: up to ``shown`` paths of each split, in
    split order, and how many more."""
    parts = []
    for split in SPLITS:
        paths = [path for s, path in volumes if s == split]
        if paths:
            more = f", ... ({len(paths) - shown} more)" if len(paths) > shown else ""
            parts.append(f"{split}: {', '.join(paths[:shown])}{more}")
    return "; ".join(parts)


class PaddedDataset(Dataset[tuple[torch.Tensor, int, torch.Tensor]]):
    """A dataset padded to a multiple of ``multiple`` items; each item carries ``valid`` (1 or 0).

    Every validation batch then has the same shape (no new XLA graph for a short last batch),
    and the padding is masked out of the counts. Padding repeats item 0 (read from the cache).
    """

    def __init__(self, base: Dataset[tuple[torch.Tensor, int]], multiple: int) -> None:
        self.base = base
        self.n = len(base)  # type: ignore[arg-type]
        self.total = math.ceil(self.n / multiple) * multiple

    def __len__(self) -> int:
        return self.total

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, torch.Tensor]:
        x, y = self.base[i if i < self.n else 0]
        # float32: a Python float collates to float64 and would promote the masked loss to it
        return x, y, torch.tensor(float(i < self.n), dtype=torch.float32)


class ResumableSampler(DistributedSampler[Any]):
    """A rank's shuffle of the training split, able to start an epoch part-way (a resumed run):
    ``set_epoch(e, skip)`` leaves out the first ``skip`` indices of epoch ``e``'s order, which
    depends on the seed and the epoch only."""

    skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        super().set_epoch(epoch)
        self.skip = skip

    def __iter__(self) -> Iterator[Any]:
        return itertools.islice(super().__iter__(), self.skip, None)


def _own_process_group(worker_id: int) -> None:
    """Each DataLoader worker leaves the trial's process group for one of its own: a stop
    request sent to the whole group (a search's SIGTERM, Ctrl-C in a terminal) reaches only
    the main process, which honours it at a step boundary (:mod:`octtrain.runtime.preempt`) instead of
    losing the batch in flight. The signals themselves keep their default action, so the main
    process can still shut a worker down (multiprocessing terminates leftover workers at exit;
    a worker that ignored SIGTERM hung that exit), and a worker whose parent died ends within
    seconds (torch's watchdog)."""
    os.setpgid(0, 0)


@dataclass
class Loaders:
    """One rank's batches: its share of the training split and of the padded validation split."""

    train: DataLoader[Any]
    train_sampler: ResumableSampler  # set_epoch(e) before epoch e: a new shuffle
    val: DataLoader[Any]
    micro_batches: int  # trained per epoch: optimizer steps × grad_accum_steps

    def set_epoch(self, epoch: int, skip_micro_batches: int = 0) -> None:
        """Epoch ``epoch``'s shuffle, without the first ``skip_micro_batches`` batches."""
        self.train_sampler.set_epoch(epoch, skip_micro_batches * (self.train.batch_size or 1))


def loader_settings(data: DataSection, device: str, augmenting: bool = False) -> dict[str, Any]:
    """DataLoader keywords for ``device`` (``xla`` | ``cuda`` | ``cpu``) where ``data`` says auto.

    A batch is a copy out of the memory-mapped store (about 0.1 ms a volume); what costs is the
    augmentation (a 16 x 64 x 64 rotation took 38 ms on a loaded 2-core host, against about
    90 ms of a tiny-encoder step per volume). On CPU the step needs the cores: one worker, and
    only for an augmented loader, so augmentation overlaps the step. On an accelerator the host
    is otherwise idle: up to 4 workers (half the cores), pinned on CUDA so the copy to the
    device is asynchronous (XLA's loader transfers in a background thread itself).
    """
    workers = data.num_workers
    if workers == "auto":
        if device == "cpu":
            workers = 1 if augmenting and (os.cpu_count() or 1) > 1 else 0
        else:
            workers = min(4, (os.cpu_count() or 2) // 2)
    pin = data.pin_memory if data.pin_memory != "auto" else device == "cuda"
    out: dict[str, Any] = {"num_workers": workers, "pin_memory": bool(pin)}
    if workers:
        out.update(persistent_workers=True, prefetch_factor=data.prefetch_factor)
    return out


def build_loaders(splits: Splits, data: DataSection, train: TrainSection, world: int,
                  rank: int, device: str = "cpu") -> Loaders:
    """Loaders of rank ``rank`` of ``world``; a ConfigError when a process's training split is
    smaller than one batch, or an epoch shorter than one accumulated optimizer step.

    Leftover micro-batches of an epoch (fewer than one accumulation) are skipped: every
    optimizer step then averages exactly ``grad_accum_steps`` micro-batches.
    """
    train_sampler = ResumableSampler(splits.train, num_replicas=world, rank=rank, shuffle=True,
                                     seed=train.seed, drop_last=True)
    augmenting = not splits.train.augment.is_identity
    # The workers' base seed is drawn from a generator of the loader's own, not from the
    # global one (augmentation, dropout): a resumed epoch then draws exactly what it would have.
    train_loader = DataLoader(splits.train, batch_size=train.batch_size, sampler=train_sampler,
                              drop_last=True, generator=torch.Generator().manual_seed(train.seed),
                              worker_init_fn=_own_process_group,
                              **loader_settings(data, device, augmenting))
    workers = {**loader_settings(data, device), "worker_init_fn": _own_process_group}
    val_set = PaddedDataset(splits.val, train.batch_size * world)
    val_loader = DataLoader(val_set, batch_size=train.batch_size, shuffle=False, **workers,
                            sampler=DistributedSampler(val_set, num_replicas=world, rank=rank,
                                                       shuffle=False))
    batches = len(train_loader)
    if batches == 0:
        raise ConfigError([("train.batch_size",
                            f"{train.batch_size} is larger than the training split: each of "
                            f"{world} process(es) gets {len(train_sampler)} training volumes")])
    steps = batches // train.grad_accum_steps
    if steps == 0:
        raise ConfigError([("train.grad_accum_steps",
                            f"{train.grad_accum_steps} micro-batches per step, but each process "
                            f"gets only {batches} batches of {train.batch_size} per epoch")])
    return Loaders(train_loader, train_sampler, val_loader, steps * train.grad_accum_steps)
