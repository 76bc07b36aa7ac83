"""octtrain.data.dataset: build_datasets, VolumeDataset and PaddedDataset on a real (tiny) phantom
data set."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from octtrain.config.sections import AugmentSection, DataSection, TrainSection
from octtrain.data import readers
from octtrain.data.augment import Augment
from octtrain.data.consolidated import open_store
from octtrain.data.dataset import (
    PaddedDataset,
    VolumeDataset,
    blank_volumes,
    blank_warning,
    build_datasets,
    build_loaders,
    replaced_note,
    replaced_volumes,
)
from octtrain.data.preprocess import preprocess
from octtrain.data.records import Record
from octtrain.errors import ConfigError, DataError
from octtrain.synthetic.phantom import CLASS_NAMES
from octtrain.synthetic.writer import write_volume

SHAPE = (4, 16, 16)  # the phantoms are 4 × 32 × 32: B-scans get resized


def _cfg(tmp_path: Path, manifest: Path | None = None, root: Path | None = None,
         **kwargs: Any) -> DataSection:
    return DataSection(manifest=str(manifest) if manifest else None,
                      root=str(root) if root else None, frames=SHAPE[0], height=SHAPE[1],
                      width=SHAPE[2], cache_dir=str(tmp_path / "cache"), **kwargs)


def test_splits_cover_the_data_once_grouped_by_patient(tmp_path: Path,
                                                       tiny_manifest: Path) -> None:
    splits = build_datasets(_cfg(tmp_path, tiny_manifest))
    assert splits.class_to_idx == {name: i for i, name in enumerate(CLASS_NAMES)}
    assert splits.num_classes == 4
    parts = (splits.train, splits.val, splits.test)
    assert sum(len(p) for p in parts) == 32
    paths = [r.path for p in parts for r in p.records]
    assert len(set(paths)) == 32
    patients = [{r.patient_id for r in p.records} for p in parts]
    assert not (patients[0] & patients[1] or patients[0] & patients[2] or patients[1] & patients[2])
    # 23 / 3 / 3 / 3 patients: every class reaches val (split_counts forces one of >= 3)
    assert sorted(set(splits.val.labels)) == [0, 1, 2, 3]
    assert sorted(set(splits.train.labels)) == [0, 1, 2, 3]


@pytest.mark.parametrize(("store", "error"), [("float32", 0.0), ("float16", 2**-12), ("uint8", 1 / 510)])
def test_item_is_float_tensor_of_config_shape(tmp_path: Path, tiny_manifest: Path, store: str,
                                              error: float) -> None:
    """The consolidated store keeps each volume within its documented error bound."""
    splits = build_datasets(_cfg(tmp_path, tiny_manifest, store=store))
    volume, label = splits.val[0]
    assert isinstance(volume, torch.Tensor) and volume.dtype == torch.float32
    assert tuple(volume.shape) == SHAPE
    assert float(volume.min()) >= 0.0 and float(volume.max()) <= 1.0
    assert label == splits.val.records[0].label and isinstance(label, int)
    raw = readers.read_volume(splits.val.records[0].path)
    exact = preprocess(raw, SHAPE, (1.0, 99.0))
    assert float(np.abs(volume.numpy() - exact).max()) <= error + 1e-6  # + float32 rounding


def test_labels_read_no_volume(tmp_path: Path, tiny_manifest: Path,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(path: object) -> np.ndarray:
        raise AssertionError(f"labels read {path}")

    splits = build_datasets(_cfg(tmp_path, tiny_manifest))
    monkeypatch.setattr(readers, "read_volume", forbidden)
    monkeypatch.setattr(np, "load", forbidden)
    labels = splits.train.labels
    assert labels == [r.label for r in splits.train.records]
    assert len(labels) == len(splits.train)


def test_second_epoch_reads_no_source(tmp_path: Path, tiny_manifest: Path,
                                      count_reads: Any) -> None:
    cfg = _cfg(tmp_path, tiny_manifest, augment=AugmentSection(True, 5, 0.1))
    splits = build_datasets(cfg)
    everything = [splits.train, splits.val, splits.test]
    for ds in everything:  # epoch 1
        for i in range(len(ds)):
            ds[i]
    assert count_reads.calls == 32
    for ds in everything:  # epoch 2
        for i in range(len(ds)):
            ds[i]
    again = build_datasets(cfg)  # a new run (or another process) on the same cache
    for i in range(len(again.train)):
        again.train[i]
    assert count_reads.calls == 32


def test_val_and_test_are_deterministic_train_is_augmented(tmp_path: Path,
                                                            tiny_manifest: Path) -> None:
    cfg = _cfg(tmp_path, tiny_manifest, augment=AugmentSection(True, 10, 0.2))
    splits = build_datasets(cfg)
    torch.manual_seed(0)
    for ds in (splits.val, splits.test):
        assert ds.augment.is_identity
        first = ds[0][0]
        assert all(torch.equal(ds[0][0], first) for _ in range(5))
    draws = [splits.train[0][0] for _ in range(6)]
    assert any(not torch.equal(d, draws[0]) for d in draws[1:])


def test_augment_train_false(tmp_path: Path, tiny_manifest: Path) -> None:
    cfg = _cfg(tmp_path, tiny_manifest, augment=AugmentSection(True, 10, 0.2))
    splits = build_datasets(cfg, augment_train=False)
    assert splits.train.augment.is_identity
    assert torch.equal(splits.train[0][0], splits.train[0][0])


def test_folder_mode_matches_manifest_mode(tmp_path: Path, tiny_manifest: Path) -> None:
    by_manifest = build_datasets(_cfg(tmp_path, tiny_manifest))
    by_folder = build_datasets(_cfg(tmp_path, root=tiny_manifest.parent))
    assert by_folder.class_to_idx == by_manifest.class_to_idx

    def records(s: Any) -> set[Record]:
        return {r for ds in (s.train, s.val, s.test) for r in ds.records}

    assert records(by_folder) == records(by_manifest)  # same paths, labels, patients
    assert {r.path for r in by_folder.val.records} == {r.path for r in by_manifest.val.records}


def test_restored_class_to_idx(tmp_path: Path, tiny_manifest: Path) -> None:
    reversed_names = {name: 3 - i for i, name in enumerate(CLASS_NAMES)}
    splits = build_datasets(_cfg(tmp_path, tiny_manifest), class_to_idx=reversed_names)
    assert splits.class_to_idx == reversed_names
    assert max(splits.train.labels) == 3
    majority = max(set(splits.train.labels), key=splits.train.labels.count)
    assert majority == 3  # 0_normal is now index 3


def test_dataloader_workers_draw_different_augmentations(tmp_path: Path) -> None:
    src = tmp_path / "v.npy"
    np.save(src, np.random.default_rng(0).random((4, 16, 16)).astype(np.float32))
    record = Record(str(src), 0, "p")
    cache = open_store(tmp_path / "cache", [record], {0: "a"}, SHAPE, (0.0, 100.0), "float32")
    plain = torch.from_numpy(np.array(cache.load(str(src))))
    ds = VolumeDataset([record] * 4, cache, Augment(AugmentSection(intensity_jitter=0.5)))
    torch.manual_seed(0)
    loader = DataLoader(ds, batch_size=1, num_workers=2)
    factors = [float((x[0] / plain.clamp_min(1e-3)).flatten()[plain.flatten().argmax()])
               for x, _ in loader]
    # items 0 and 1 are the first draw of worker 0 and worker 1: a forked, identically seeded
    # RNG would give them the same factor
    assert abs(factors[0] - factors[1]) > 1e-6
    assert all(0.5 <= f <= 1.5 for f in factors)


def test_padded_dataset_fills_the_last_batch_with_masked_copies_of_item_0() -> None:
    base = TensorDataset(torch.arange(5.0), torch.arange(5))
    padded = PaddedDataset(base, multiple=4)  # type: ignore[arg-type]
    assert len(padded) == 8
    items = [padded[i] for i in range(8)]
    assert [float(v) for _, _, v in items] == [1.0] * 5 + [0.0] * 3
    assert [int(y) for _, y, _ in items[5:]] == [0, 0, 0]
    assert all(v.dtype == torch.float32 for _, _, v in items)


@pytest.mark.parametrize(("world", "batch_size", "accum", "message"), [
    (1, 64, 1, "train.batch_size: 64 is larger than the training split: each of 1 process(es) "
               "gets {n} training volumes"),
    (2, 11, 1, "train.batch_size: 11 is larger than the training split: each of 2 process(es) "
               "gets {half} training volumes"),
    (1, 2, 64, "train.grad_accum_steps: 64 micro-batches per step, but each process gets only "
               "{batches} batches of 2 per epoch"),
])
def test_a_batch_larger_than_the_training_split_names_batch_size(
        tmp_path: Path, tiny_manifest: Path, world: int, batch_size: int, accum: int,
        message: str) -> None:
    splits = build_datasets(_cfg(tmp_path, tiny_manifest))
    n = len(splits.train)
    assert n == 20  # the cases above rely on it
    train = TrainSection(batch_size=batch_size, grad_accum_steps=accum)
    with pytest.raises(ConfigError) as info:
        build_loaders(splits, _cfg(tmp_path, tiny_manifest), train, world, 0)
    assert str(info.value) == message.format(n=n, half=n // 2, batches=n // 2)


def _manifest(tmp_path: Path, volumes: dict[str, np.ndarray],
              splits: Sequence[str] = ("train", "train", "val", "val")) -> Path:
    """A manifest of ``volumes`` (name → array, written as .npy), one patient each, in
    ``splits``, every class 'a' and 'b'."""
    rows = ["path,label,patient_id,split"]
    for i, ((name, array), split) in enumerate(zip(volumes.items(), splits, strict=True)):
        write_volume(tmp_path / name, array, "npy")
        rows.append(f"{name}.npy,{'ab'[i % 2]},p{i},{split}")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    return tmp_path / "m.csv"


def test_a_two_d_volume_is_refused_unless_single_bscans_are_allowed(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    manifest = _manifest(tmp_path, {"v0": rng.random((4, 8, 8)), "flat": rng.random((8, 8)),
                                    "v2": rng.random((4, 8, 8)), "v3": rng.random((4, 8, 8))})
    with pytest.raises(DataError, match=r"flat.npy: 2-D array of shape \(8, 8\) is one B-scan"):
        build_datasets(_cfg(tmp_path, manifest))
    allowed = build_datasets(_cfg(tmp_path, manifest, allow_single_bscan=True))
    volume, label = allowed.train[1]
    assert volume.shape == SHAPE and label == 1


def _spike() -> np.ndarray:
    spike = np.zeros((4, 8, 8), np.uint8)
    spike[0, 0, 0] = 9  # one bright voxel: the 1-99 % clip range is empty, so blank too
    return spike


def test_blank_volumes_are_the_constant_ones_of_every_split(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    manifest = _manifest(tmp_path, {"v0": rng.integers(0, 255, (4, 8, 8), np.uint8),
                                    "const": np.full((4, 8, 8), 7, np.uint8),
                                    "spike": _spike(),
                                    "v3": rng.integers(0, 255, (4, 8, 8), np.uint8),
                                    "v4": rng.integers(0, 255, (4, 8, 8), np.uint8),
                                    "flat": np.full((4, 8, 8), 200, np.uint8)},
                         splits=("train", "train", "val", "val", "test", "test"))
    splits = build_datasets(_cfg(tmp_path, manifest))
    blank = [("train", str(tmp_path / "const.npy")), ("val", str(tmp_path / "spike.npy")),
             ("test", str(tmp_path / "flat.npy"))]
    assert blank_volumes(splits, 0, 1) == blank
    assert blank_volumes(splits, 0, 2) == [blank[1]]  # every other volume of all splits
    assert blank_volumes(splits, 1, 2) == [blank[0], blank[2]]
    assert not splits.train[1][0].any()  # served as zeros from the store
    assert blank_warning(blank) == (
        "warning: 3 volume(s) are constant (blank after the intensity clip: they are read as all "
        f"zeros): train: {tmp_path / 'const.npy'}; val: {tmp_path / 'spike.npy'}; "
        f"test: {tmp_path / 'flat.npy'}")


def test_a_volume_trained_on_and_validated_on_is_counted_once(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    manifest = _manifest(tmp_path, {"v0": rng.integers(0, 255, (4, 8, 8), np.uint8),
                                    "v1": rng.integers(0, 255, (4, 8, 8), np.uint8),
                                    "spike": _spike(),
                                    "v3": rng.integers(0, 255, (4, 8, 8), np.uint8)})
    splits = build_datasets(_cfg(tmp_path, manifest, train_on_val=True))
    assert blank_volumes(splits, 0, 1) == [("train", str(tmp_path / "spike.npy"))]


def test_replaced_volumes_of_every_split(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    volumes = {f"v{i}": rng.random((4, 8, 8)).astype(np.float32) for i in range(6)}
    volumes["v1"][0, 0, 0] = np.nan
    volumes["v5"][1, 2, 3] = np.inf
    manifest = _manifest(tmp_path, volumes, splits=("train", "train", "val", "val", "test", "test"))
    splits = build_datasets(_cfg(tmp_path, manifest, nonfinite="replace"))
    replaced = [("train", str(tmp_path / "v1.npy")), ("test", str(tmp_path / "v5.npy"))]
    assert replaced_volumes(splits, 0, 1) == replaced
    assert replaced_note(replaced) == (
        "2 volume(s) held NaN or infinite values, replaced by 0 (data.nonfinite: replace): "
        f"train: {tmp_path / 'v1.npy'}; test: {tmp_path / 'v5.npy'}")


def test_blank_warning_names_a_few_of_each_split_and_counts_all() -> None:
    assert blank_warning([("test", "a.npy")]) == (
        "warning: 1 volume(s) are constant (blank after the intensity clip: they are read as all "
        "zeros): test: a.npy")
    assert blank_warning([("test", "t.npy"), *[("train", f"{i}.npy") for i in range(5)]]).endswith(
        "zeros): train: 0.npy, 1.npy, 2.npy, ... (2 more); test: t.npy")
