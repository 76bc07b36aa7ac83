"""Evaluating a trained run on its test split, and training a final model on train + val."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from octtrain import fit
from octtrain.config.train_config import TrainConfig
from octtrain.data.dataset import build_datasets
from octtrain.errors import DataError
from octtrain.train.evaluate import evaluate_checkpoint


def test_train_on_val_trains_on_both_splits_and_keeps_validation(
    small_config: Callable[..., TrainConfig],
) -> None:
    plain = build_datasets(small_config().data)
    final = build_datasets(small_config(**{"data.train_on_val": True}).data)
    assert len(final.train) == len(plain.train) + len(plain.val) == 40
    assert final.val.records == plain.val.records  # still validated (on trained data)


def test_an_empty_test_split_is_a_data_error(small_config: Callable[..., TrainConfig],
                                               tmp_path: object) -> None:
    result = fit(small_config(**{"train.epochs": 1}), out_dir=f"{tmp_path}/run", progress=False)
    with pytest.raises(DataError, match="the test split of .* is empty: set data.test_fraction > 0"):
        evaluate_checkpoint(result.out_dir / "best.pt")
    val = evaluate_checkpoint(result.out_dir / "best.pt", "val")
    assert val["val/volumes"] == 8 and sum(val["val/pred_hist"]) == 8
    assert val["val/balanced_accuracy"] == pytest.approx(result.history[0]["val/balanced_accuracy"])
