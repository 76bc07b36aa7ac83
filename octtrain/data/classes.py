"""The label set of a data set: pinned by ``data.classes``, or shown per split at start.

Without ``data.classes`` every label found in the manifest or the class folders becomes a
class, so a misspelled label (``nromal``) silently becomes an extra class. With it, the label
set and its numbering (the list's order) are fixed, and any other label is a
:class:`~octtrain.errors.DataError` naming where it first appears. Without it,
``octtrain train`` prints :func:`class_table` at start so the classes can be checked by eye.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol

from octtrain.errors import DataError


class Labelled(Protocol):
    """An indexed volume: its class name and where it was found (for messages)."""

    @property
    def label(self) -> str: ...

    @property
    def where(self) -> str: ...


def pinned_class_to_idx(entries: Iterable[Labelled], classes: Sequence[str]) -> dict[str, int]:
    """``{name: position in classes}``, or a DataError listing every label of ``entries`` not
    in ``classes`` with where it first appears (a file, or a manifest line)."""
    mapping = {name: i for i, name in enumerate(classes)}
    unknown: dict[str, str] = {}
    for e in entries:
        if e.label not in mapping:
            unknown.setdefault(e.label, e.where)
    if unknown:
        listed = "; ".join(f"{label!r} (first in {where})" for label, where in unknown.items())
        raise DataError(f"label(s) not in data.classes {list(classes)}: {listed}")
    return mapping


def class_table(split_labels: Mapping[str, Sequence[int]], class_to_idx: Mapping[str, int]) -> str:
    """Volumes per class and split, one row per class in index order, e.g.::

        class       train   val  test
        CNV            23     3     3
        normal         40     5     5
        total          63     8     8
    """
    names = sorted(class_to_idx, key=class_to_idx.__getitem__)
    splits = list(split_labels)
    width = max(len("class"), len("total"), *(len(n) for n in names))
    counts = {s: [0] * len(names) for s in splits}
    for s, labels in split_labels.items():
        for label in labels:
            counts[s][label] += 1
    rows = [f"{'class':<{width}}" + "".join(f" {s:>6}" for s in splits)]
    for i, name in enumerate(names):
        rows.append(f"{name:<{width}}" + "".join(f" {counts[s][i]:>6}" for s in splits))
    rows.append(f"{'total':<{width}}" + "".join(f" {sum(counts[s]):>6}" for s in splits))
    return "\n".join(rows)
