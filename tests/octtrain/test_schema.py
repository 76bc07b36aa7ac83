"""octtrain.config.schema: raw YAML to dataclasses, every problem collected."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from octtrain.config.schema import build, did_you_mean, read_yaml, unknown_keys, yaml_number
from octtrain.errors import ConfigError, Problems, ProblemsError


@pytest.mark.parametrize(
    ("value", "integer", "expected"),
    [
        ("1e-5", False, 1e-5),  # YAML 1.1 reads a float without a dot as a string
        (3, False, 3.0),
        (3, True, 3),
        (3.0, True, None),
        (True, False, None),  # a bool is not a number
        ("x", False, None),
        (None, False, None),
    ],
)
def test_yaml_number(value: Any, integer: bool, expected: float | int | None) -> None:
    out = yaml_number(value, integer=integer)
    assert out == expected and type(out) is type(expected)


def test_unknown_keys_name_the_known_ones_and_the_closest() -> None:
    p: Problems = []
    unknown_keys(["hidden", "dropuot", "extra"], ("hidden", "dropout"), "model.head", p)
    assert p == [
        ("model.head.dropuot", "unknown key (known: hidden, dropout) (did you mean dropout?)"),
        ("model.head.extra", "unknown key (known: hidden, dropout)"),
    ]
    p = []
    unknown_keys({"n_startup": 1}, (), "", p, kind="option")
    assert p == [("n_startup", "unknown option (known: none)")]
    assert did_you_mean("patiense", ["patience", "margin"]) == " (did you mean patience?)"


@dataclass
class _Inner:
    size: int = 1


@dataclass
class _Outer:
    name: str
    rate: float = 0.5
    inner: _Inner = field(default_factory=_Inner)

    def __post_init__(self) -> None:
        if self.rate > 1:
            raise ConfigError([("rate", f"must be <= 1, got {self.rate}")])


def test_build_collects_type_section_and_unknown_key_problems_together() -> None:
    p: Problems = []
    raw = {"name": "a", "rate": 2, "inner": {"size": "big", "colour": 1}}
    assert build(_Outer, raw, "top", p) is None
    assert p == [
        ("top.inner.colour", "unknown key (known: size)"),
        ("top.inner.size", "must be an integer, got 'big'"),
        ("top.rate", "must be <= 1, got 2.0"),  # checked with the default in place of inner
    ]
    p = []
    assert build(_Outer, {"rate": 2}, "top", p) is None
    assert p == [("top.name", "is required")]
    p = []
    assert build(_Outer, {"name": "a", "rate": "1e-1"}, "", p) == _Outer("a", 0.1)
    assert p == []


@dataclass
class _Tagged:
    extra: dict[str, str | int] = field(default_factory=dict)


def test_a_mapping_field_coerces_each_value_and_names_the_bad_one() -> None:
    p: Problems = []
    assert build(_Tagged, {"extra": {"study": "s", "trial": 3}}, "log", p) == _Tagged({"study": "s", "trial": 3})
    assert p == []
    assert build(_Tagged, {"extra": ["s"]}, "log", p) is None
    assert build(_Tagged, {"extra": {"trial": [3]}}, "log", p) is None
    assert p == [("log.extra", "must be a mapping, got ['s']"),
                 ("log.extra.trial", "must be a string or an integer, got [3]")]


class _SpaceError(ProblemsError):
    pass


def test_read_yaml_names_the_file_in_the_callers_error(tmp_path: Path) -> None:
    with pytest.raises(_SpaceError, match="nope.yaml: file not found"):
        read_yaml(tmp_path / "nope.yaml", _SpaceError)
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: invalid YAML at line 2"):
        read_yaml(bad)


@pytest.mark.parametrize(("text", "message"), [
    ("train:\n  batch_size: 2\ndata: {root: x}\ntrain:\n  lr_head: 1\n",
     "line 4, column 1: duplicate key 'train' (first at line 1, again at line 4)"),
    ("train:\n  lr_head: 1\n  epochs: 3\n  lr_head: 2\n",
     "duplicate key 'lr_head' (first at line 2, again at line 4)"),
    ("a: {x: 1, y: 2, x: 3}\n", "duplicate key 'x' (first at line 1, again at line 1)"),
])
def test_read_yaml_refuses_a_key_given_twice(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        read_yaml(path)
    assert str(err.value).startswith(f"{path}: invalid YAML at line ")
    assert str(err.value).endswith(message)

def test_read_yaml_keeps_equal_keys_in_different_mappings_and_merges(tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text("a: {x: 1}\nb: {x: 2}\nbase: &b {p: 1}\nc:\n  <<: *b\n  q: 2\n")
    assert read_yaml(path) == {"a": {"x": 1}, "b": {"x": 2}, "base": {"p": 1},
                               "c": {"p": 1, "q": 2}}
