"""octtrain.config.sections: each section of a trainer file checks its own values."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from octtrain.config.sections import (
    AugmentSection,
    DataSection,
    EarlyStoppingSection,
    HeadSection,
    ModelSection,
    TrainSection,
)
from octtrain.errors import ConfigError


def test_encoder_trainable_schedule() -> None:
    model = ModelSection(freeze_encoder=True, unfreeze_at_epoch=3)
    assert [model.encoder_trainable(e) for e in range(5)] == [False, False, False, True, True]
    assert not any(ModelSection().encoder_trainable(e) for e in range(5))
    assert ModelSection(freeze_encoder=False).encoder_trainable(0)


@pytest.mark.parametrize(
    ("make", "problems"),
    [
        (lambda: AugmentSection(rotation_deg=50), [("rotation_deg", "must be in [0, 45] degrees, got 50")]),
        (lambda: TrainSection(epochs=0, lr_head=-1.0),
         [("epochs", "must be >= 1, got 0"), ("lr_head", "must be > 0, got -1.0")]),
        (lambda: EarlyStoppingSection(metric="loss"),
         [("mode", "loss is better when lower: use mode: min")]),
        (lambda: DataSection(manifest="m.csv", val_augment=AugmentSection(flip=True)),
         [("val_augment", "validation must not be augmented (its metrics would change from epoch "
                          "to epoch): set flip: false, rotation_deg: 0, intensity_jitter: false")]),
    ],
)
def test_a_section_reports_all_its_problems_keyed_by_field(
    make: Callable[[], object], problems: list[tuple[str, str]],
) -> None:
    with pytest.raises(ConfigError) as info:
        make()
    assert info.value.problems == problems



INF = float("inf")


@pytest.mark.parametrize(
    ("make", "problems"),
    [
        (lambda: TrainSection(lr_head=INF), [("lr_head", "must be a finite number, got inf")]),
        (lambda: TrainSection(weight_decay=INF, grad_clip=INF, label_smoothing=float("nan")),
         [("label_smoothing", "must be in [0, 1), got nan"),
          ("weight_decay", "must be a finite number, got inf"),
          ("grad_clip", "must be a finite number, got inf")]),
        (lambda: TrainSection(class_weights=[1.0, INF]),
         [("class_weights", "must be a finite number, got [1.0, inf]")]),
        (lambda: EarlyStoppingSection(min_delta=INF), [("min_delta", "must be a finite number, got inf")]),
        (lambda: ModelSection(head=HeadSection(dropout=-INF)),
         [("dropout", "must be in [0, 1), got -inf")]),
    ],
)
def test_non_finite_numbers_are_refused_once_per_field(
    make: Callable[[], object], problems: list[tuple[str, str]],
) -> None:
    with pytest.raises(ConfigError) as info:
        make()
    assert info.value.problems == problems


@pytest.mark.parametrize("classes", [["a"], ["a", "b", "a"], ["a", ""]])
def test_data_classes_must_be_two_or_more_distinct_names(classes: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        DataSection(manifest="m.csv", classes=classes)
    assert info.value.problems == [
        ("classes", f"must list two or more distinct class names, got {classes!r}")]
    assert DataSection(manifest="m.csv", classes=["b", "a"]).classes == ["b", "a"]
