"""octtrain.data.classes: pinning the label set, and the class table printed at start."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from octtrain.data.classes import class_table, pinned_class_to_idx
from octtrain.errors import DataError


@dataclass(frozen=True)
class _Entry:
    label: str
    where: str


def test_pinned_classes_keep_the_list_order_even_for_absent_names() -> None:
    entries = [_Entry("b", "m.csv line 2"), _Entry("a", "m.csv line 3")]
    assert pinned_class_to_idx(entries, ["b", "a", "c"]) == {"b": 0, "a": 1, "c": 2}


def test_every_unknown_label_is_listed_once_with_its_first_place() -> None:
    entries = [_Entry("a", "l2"), _Entry("A", "l3"), _Entry("x", "l4"), _Entry("A", "l5")]
    with pytest.raises(DataError) as err:
        pinned_class_to_idx(entries, ["a", "b"])
    assert str(err.value) == "label(s) not in data.classes ['a', 'b']: 'A' (first in l3); 'x' (first in l4)"


def test_class_table_counts_per_split_in_index_order() -> None:
    table = class_table({"train": [0, 0, 1, 2, 2, 2], "val": [1, 2], "test": []},
                        {"normal": 1, "CNV": 0, "drusen_large": 2})
    assert table.splitlines() == [
        "class         train    val   test",
        "CNV               2      0      0",
        "normal            1      1      0",
        "drusen_large      3      1      0",
        "total             6      2      0",
    ]
