"""A dataset as records: which volumes exist, their class and patient, and which split each
belongs to. No volume is read here (:mod:`octtrain.data.dataset` turns records into tensors).

Two ways to describe a dataset (``DataSection.manifest`` or ``DataSection.root``):

* **Manifest CSV** with the header ``path,label,patient_id[,split]`` (extra columns are
  ignored). ``path`` is relative to the manifest's own directory (or absolute), ``label`` is a
  class name, ``split`` is ``train``/``val``/``test``. An empty ``patient_id`` of a HEYEX file
  (``.vol``, ``.e2e``, ``.xml``) is the patient id of its header. When the ``split`` column is present it is
  used verbatim; otherwise patients are split as below.
* **Folder per class**: ``root/<class name>/<volume>``, where a volume is a file with a
  supported suffix (see :mod:`octtrain.data.readers`) or a directory of B-scan images. Hidden
  entries and files with other suffixes are ignored. The patient id comes from the volume's
  name by :func:`patient_id_from_stem`.

Splitting is by **patient** (all volumes of a patient land in one split, so no anatomy leaks
from train into validation) and **stratified** by the patient's label (its majority label), so
a 10 % class is in every split rather than by luck. Class indices come from the sorted class
names (:func:`class_to_idx_from_names`) and are identical for all splits; persist them with
:func:`save_class_to_idx` so a later evaluation uses the same numbering.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from octtrain.config import DataSection
from octtrain.data import formats, readers
from octtrain.data.classes import pinned_class_to_idx
from octtrain.errors import DataError, host_errors
from octtrain.files import write_atomic

SPLITS = ("train", "val", "test")
MANIFEST_COLUMNS = ("path", "label", "patient_id")


@dataclass(frozen=True)
class Record:
    """One volume: where it is, its class index and its patient."""

    path: str  # a file or a directory of B-scan images (absolute)
    label: int  # class index (see class_to_idx)
    patient_id: str


@dataclass(frozen=True)
class Entry:
    """A volume as indexed, before class names are numbered and splits are decided."""

    path: str
    label: str  # class name
    patient_id: str
    split: str | None  # given by the manifest, or None: decide by patient
    where: str  # for error messages: "manifest.csv line 4" or the volume path


# ---------------------------------------------------------------------------------------------
# Pure decision rules
# ---------------------------------------------------------------------------------------------


def class_to_idx_from_names(names: Iterable[str]) -> dict[str, int]:
    """Class name → index by sorted name; numeric order when every name is an integer.

    ``["b", "a"]`` → ``{"a": 0, "b": 1}``; ``["10", "2"]`` → ``{"2": 0, "10": 1}`` (not
    ``"10" < "2"``). Duplicates are counted once.
    """
    unique = set(names)
    if unique and all(re.fullmatch(r"[+-]?\d+", n) for n in unique):
        ordered = sorted(unique, key=lambda n: (int(n), n))
    else:
        ordered = sorted(unique)
    return {name: i for i, name in enumerate(ordered)}


def patient_id_from_stem(stem: str) -> str:
    """Patient id of a volume named ``stem`` (file name without suffix) in folder-per-class mode.

    Rule: the text before the first ``_`` when there is one and it is not empty, otherwise the
    whole stem. ``P001_OD_2019`` → ``P001``; ``P001_v2`` → ``P001``; ``scan7`` → ``scan7``;
    ``_x`` → ``_x``. Name volumes ``<patient>_<anything>`` to group a patient's scans; a name
    without ``_`` is its own patient.
    """
    head, sep, _ = stem.partition("_")
    return head if sep and head else stem


def majority_label(labels: Sequence[int]) -> int:
    """The most common label; a tie goes to the smallest index (deterministic)."""
    counts = Counter(labels)
    return min(counts, key=lambda c: (-counts[c], c))


def split_counts(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int, int]:
    """How many of ``n`` patients of one class go to (train, val, test).

    Counts are rounded half up. A class with at least 3 patients gets at least one in val (and
    one in test) when that fraction is > 0, because a class missing from validation makes its
    recall undefined and balanced accuracy meaningless. Train always keeps at least one
    patient; when there are too few, test gives way first, then val.
    """
    n_val = math.floor(n * val_fraction + 0.5)
    n_test = math.floor(n * test_fraction + 0.5)
    if n >= 3:
        n_val = max(n_val, 1) if val_fraction > 0 else 0
        n_test = max(n_test, 1) if test_fraction > 0 else 0
    while n_val + n_test > max(n - 1, 0):
        if n_test > 0:
            n_test -= 1
        else:
            n_val -= 1
    return n - n_val - n_test, n_val, n_test


def stratified_patient_split(
    patient_label: Mapping[str, int], val_fraction: float, test_fraction: float, seed: int
) -> dict[str, str]:
    """Patient id → ``"train"``/``"val"``/``"test"``, stratified by the patients' labels.

    Within each class the patients are sorted, shuffled with a generator seeded by
    ``(seed, label)`` and cut by :func:`split_counts`. The result depends only on the set of
    patients, their labels, the fractions and the seed (not on file order).
    """
    by_label: dict[int, list[str]] = defaultdict(list)
    for patient, label in patient_label.items():
        by_label[label].append(patient)
    out: dict[str, str] = {}
    for label, patients in sorted(by_label.items()):
        patients.sort()
        order = np.random.default_rng([seed, label]).permutation(len(patients))
        _, n_val, n_test = split_counts(len(patients), val_fraction, test_fraction)
        for rank, i in enumerate(order):
            if rank < n_val:
                out[patients[i]] = "val"
            elif rank < n_val + n_test:
                out[patients[i]] = "test"
            else:
                out[patients[i]] = "train"
    return out


# ---------------------------------------------------------------------------------------------
# Indexing
# ---------------------------------------------------------------------------------------------


def read_manifest(path: str | os.PathLike[str]) -> list[Entry]:
    """Rows of a manifest CSV as entries with absolute paths; every problem is a DataError
    naming the file and line (the header is line 1)."""
    manifest = Path(path)
    if not manifest.is_file():
        raise DataError(f"{manifest}: manifest not found")
    base = manifest.absolute().parent
    try:
        with manifest.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f, skipinitialspace=True)
            header = [h.strip() for h in (reader.fieldnames or [])]
            if not header:
                raise DataError(f"{manifest}: manifest is empty (expected header "
                                f"{','.join(MANIFEST_COLUMNS)}[,split])")
            missing = [c for c in MANIFEST_COLUMNS if c not in header]
            if missing:
                raise DataError(f"{manifest}: missing column(s) {', '.join(map(repr, missing))} "
                                f"(header: {','.join(header)})")
            has_split = "split" in header
            reader.fieldnames = header
            entries: list[Entry] = []
            seen: dict[str, int] = {}
            for row in reader:
                line = reader.line_num
                where = f"{manifest} line {line}"
                values = {k: (row.get(k) or "").strip() for k in (*MANIFEST_COLUMNS, "split")}
                if not any(values.values()):
                    continue  # a blank line
                for column in ("path", "label"):
                    if not values[column]:
                        raise DataError(f"{where}: empty {column!r}")
                split = values["split"] if has_split else None
                if split is not None and split not in SPLITS:
                    raise DataError(f"{where}: unknown split value {split!r} "
                                    f"(use {', '.join(SPLITS)})")
                volume = Path(os.path.abspath(base / values["path"]))
                if not formats.split_selector(volume)[0].exists():
                    raise DataError(f"{where}: volume {values['path']!r} not found ({volume})")
                if not values["patient_id"]:
                    values["patient_id"] = _header_patient(volume, where)
                if str(volume) in seen:
                    raise DataError(f"{where}: volume {values['path']!r} is listed again "
                                    f"(first on line {seen[str(volume)]})")
                seen[str(volume)] = line
                entries.append(Entry(str(volume), values["label"], values["patient_id"],
                                     split, where))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"{manifest}: cannot read manifest ({err})") from None
    if not entries:
        raise DataError(f"{manifest}: manifest has a header but no rows")
    return entries


def _header_patient(volume: Path, where: str) -> str:
    """The patient id of an empty manifest cell, from the volume's HEYEX header."""
    patient = formats.header_info(volume).patient_id
    if patient is None:
        raise DataError(f"{where}: empty 'patient_id' and {volume.name} has no header that names "
                        f"the patient (only {', '.join(formats.HEADER_SUFFIXES)} files do)")
    return patient


def index_folder(root: str | os.PathLike[str]) -> list[Entry]:
    """Entries of a folder-per-class dataset, sorted by class then natural volume name."""
    base = Path(root)
    if not base.is_dir():
        raise DataError(f"{base}: data root not found or not a directory")
    classes = sorted(d for d in base.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DataError(f"{base}: no class folders (expected root/<class name>/<volume>)")
    entries: list[Entry] = []
    for class_dir in classes:
        volumes = sorted(
            (v for v in class_dir.iterdir()
             if not v.name.startswith(".") and readers.is_volume_path(v)),
            key=lambda v: readers.natural_key(v.name),
        )
        if not volumes:
            raise DataError(f"{class_dir}: class folder holds no volumes (supported: "
                            f"{', '.join(readers.SUPPORTED)})")
        for v in volumes:
            path = os.path.abspath(v)
            patient = patient_id_from_stem(readers.volume_stem(v))
            entries.append(Entry(path, class_dir.name, patient, None, path))
    return entries


def _check_given_splits(entries: Sequence[Entry]) -> None:
    """A patient must not appear in two given splits (that leaks the patient into val)."""
    first: dict[str, Entry] = {}
    for e in entries:
        prev = first.setdefault(e.patient_id, e)
        if e.split != prev.split:
            raise DataError(f"{e.where}: patient {e.patient_id!r} is in split {e.split!r} "
                            f"but also in {prev.split!r} ({prev.where})")


def assign_splits(
    entries: Sequence[Entry], class_to_idx: Mapping[str, int], cfg: DataSection
) -> dict[str, list[Record]]:
    """Records per split: the given ``split`` values, or a patient-grouped stratified split."""
    for e in entries:
        if e.label not in class_to_idx:
            raise DataError(f"{e.where}: label {e.label!r} is not a known class "
                            f"({', '.join(class_to_idx)})")
    if entries[0].split is not None:
        _check_given_splits(entries)
        split_of = {e.patient_id: str(e.split) for e in entries}
    else:
        labels: dict[str, list[int]] = defaultdict(list)
        for e in entries:
            labels[e.patient_id].append(class_to_idx[e.label])
        patient_label = {p: majority_label(ls) for p, ls in labels.items()}
        split_of = stratified_patient_split(
            patient_label, cfg.val_fraction, cfg.test_fraction, cfg.split_seed
        )
    out: dict[str, list[Record]] = {s: [] for s in SPLITS}
    for e in entries:
        out[split_of[e.patient_id]].append(Record(e.path, class_to_idx[e.label], e.patient_id))
    train_labels = {r.label for r in out["train"]}
    for e in entries:
        if class_to_idx[e.label] not in train_labels:
            raise DataError(f"{e.where}: label {e.label!r} never occurs in the train split, "
                            "so the model cannot learn it")
    return out


def split_records(
    cfg: DataSection, class_to_idx: Mapping[str, int] | None = None
) -> tuple[dict[str, list[Record]], dict[str, int]]:
    """Index the dataset of ``cfg`` and split it: ``({"train": [...], ...}, class_to_idx)``.

    ``class_to_idx`` (e.g. restored with :func:`load_class_to_idx`) fixes the numbering;
    else ``cfg.classes`` (any other label is a DataError); else the class names present.
    """
    if cfg.manifest is not None:
        entries = read_manifest(cfg.manifest)
    else:
        assert cfg.root is not None  # DataSection guarantees exactly one of the two
        entries = index_folder(cfg.root)
    if class_to_idx is not None:
        mapping = dict(class_to_idx)
    elif cfg.classes is not None:
        mapping = pinned_class_to_idx(entries, cfg.classes)
    else:
        mapping = class_to_idx_from_names(e.label for e in entries)
    return assign_splits(entries, mapping, cfg), mapping


# ---------------------------------------------------------------------------------------------
# Persisting class_to_idx
# ---------------------------------------------------------------------------------------------


def check_class_to_idx(mapping: object, source: str) -> dict[str, int]:
    """``mapping`` as ``{name: index}`` with indices exactly ``0..C-1``; else a DataError."""
    if not isinstance(mapping, dict) or not mapping:
        raise DataError(f"{source}: class_to_idx must be a non-empty JSON object, got {mapping!r}")
    for name, index in mapping.items():
        if not isinstance(name, str) or isinstance(index, bool) or not isinstance(index, int):
            raise DataError(f"{source}: key {name!r}: index must be an integer, got {index!r}")
    indices = sorted(mapping.values())
    if indices != list(range(len(mapping))):
        raise DataError(f"{source}: class indices must be 0..{len(mapping) - 1} once each, "
                        f"got {indices}")
    return dict(mapping)


def save_class_to_idx(path: str | os.PathLike[str], mapping: Mapping[str, int]) -> None:
    """Write ``{class name: index}`` as JSON (atomically: temp file + rename)."""
    target = Path(path)
    data = check_class_to_idx(dict(mapping), str(target))
    with host_errors("the class index", target):
        target.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(target, json.dumps(data, indent=2, sort_keys=False) + "\n", "the class index")


def load_class_to_idx(path: str | os.PathLike[str]) -> dict[str, int]:
    """Read a mapping written by :func:`save_class_to_idx`; problems name the file and key."""
    source = Path(path)
    try:
        raw = json.loads(source.read_text())
    except FileNotFoundError:
        raise DataError(f"{source}: class_to_idx file not found") from None
    except (OSError, ValueError) as err:
        raise DataError(f"{source}: cannot read class_to_idx ({err})") from None
    return check_class_to_idx(raw, str(source))
