"""A data set, from files to batches: records and splits (``records``), the label set (``classes``),
reading one volume (``readers``; device formats through eyepy in ``formats``), a manifest from a
folder and a label sheet (``index``), resampling and scaling (``preprocess``), the host's consolidated
memory-mapped store (``consolidated``), augmentation (``augment``), datasets and loaders (``dataset``).

The datasets and loaders are imported on first use: a search worker's pre-flight reads the
manifest and a few volumes without loading torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from octtrain.data.classes import class_table
from octtrain.data.formats import HeaderInfo, header_info
from octtrain.data.index import IndexReport, build_index, write_index
from octtrain.data.preprocess import default_cache_dir
from octtrain.data.readers import read_volume
from octtrain.data.records import (
    SPLITS,
    Entry,
    index_folder,
    load_class_to_idx,
    read_manifest,
    save_class_to_idx,
    split_records,
)
from octtrain.lazy import on_first_use

if TYPE_CHECKING:
    from octtrain.data.dataset import (
        Loaders,
        PaddedDataset,
        Splits,
        blank_volumes,
        blank_warning,
        build_datasets,
        build_loaders,
        replaced_note,
        replaced_volumes,
    )

__all__ = [
    "Entry",
    "HeaderInfo",
    "IndexReport",
    "Loaders",
    "PaddedDataset",
    "SPLITS",
    "Splits",
    "blank_volumes",
    "blank_warning",
    "build_datasets",
    "build_index",
    "build_loaders",
    "class_table",
    "default_cache_dir",
    "header_info",
    "index_folder",
    "load_class_to_idx",
    "read_manifest",
    "read_volume",
    "replaced_note",
    "replaced_volumes",
    "save_class_to_idx",
    "split_records",
    "write_index",
]

_DATASET = ("Loaders", "PaddedDataset", "Splits", "blank_volumes", "blank_warning", "build_datasets",
            "build_loaders", "replaced_note", "replaced_volumes")


__getattr__ = on_first_use(__name__, dict.fromkeys(_DATASET, "dataset"))
