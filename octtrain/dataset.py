"""The torch ``Dataset`` of preprocessed volumes, and the train/val/test splits of a config.

``VolumeDataset[i]`` is ``(volume, label)`` with ``volume`` a float32 ``(T, H, W)`` tensor in
``[0, 1]`` (augmentation may leave that range slightly). Volumes come from a
:class:`~octtrain.preprocess.VolumeCache`, so only the first epoch reads source files.
``labels`` never touches a volume: class weights are computed from it at setup.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

from octtrain.augment import Augment
from octtrain.preprocess import VolumeCache
from octtrain.sections import AugmentSection, DataSection
from octtrain.splits import Record, split_records

__all__ = ["Record", "Splits", "VolumeDataset", "build_splits"]


class VolumeDataset(Dataset[tuple[torch.Tensor, int]]):
    """Volumes of one split. ``augment=None`` (val/test) returns identical tensors every call."""

    def __init__(
        self, records: Sequence[Record], cache: VolumeCache, augment: Augment | None = None
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
    train: VolumeDataset
    val: VolumeDataset
    test: VolumeDataset
    class_to_idx: dict[str, int]  # the same numbering for all three splits

    @property
    def num_classes(self) -> int:
        return len(self.class_to_idx)


def build_splits(
    cfg: DataSection,
    *,
    augment_train: bool = True,
    class_to_idx: Mapping[str, int] | None = None,
) -> Splits:
    """Index, split and wrap the dataset of ``cfg``.

    The train split gets ``cfg.augment`` when ``augment_train``; val and test get none at all.
    ``class_to_idx`` (e.g. from :func:`octtrain.splits.load_class_to_idx`) fixes the class
    numbering; by default it is derived from the sorted class names. All splits share one
    :class:`VolumeCache` in ``cfg.cache_dir``.
    """
    records, mapping = split_records(cfg, class_to_idx)
    cache = VolumeCache(cfg.cache_dir, cfg.shape, cfg.clip_percentiles)
    train_augment = Augment(cfg.augment if augment_train else AugmentSection())
    return Splits(
        train=VolumeDataset(records["train"], cache, train_augment),
        val=VolumeDataset(records["val"], cache),
        test=VolumeDataset(records["test"], cache),
        class_to_idx=mapping,
    )
