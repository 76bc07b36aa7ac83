"""Searched parameters: parsing one ``params`` entry, its condition and its distribution."""

from __future__ import annotations

from typing import Any

import optuna
import pytest

from search.space.params import Condition, Param, Problems, parse_param

EARLIER = [Param("model.unfreeze_at_epoch", "categorical", choices=(-1, 2))]


def parse(spec: Any, path: str = "train.lr_head") -> tuple[Param | None, dict[str, str]]:
    problems: Problems = []
    param = parse_param(path, spec, f"params.{path}", EARLIER, problems)
    return param, dict(problems)


@pytest.mark.parametrize(
    ("spec", "key", "message"),
    [
        ("float", "params.train.lr_head", "must be a mapping with a type, got 'float'"),
        ({"type": "floaty", "low": 1, "high": 2}, "params.train.lr_head.type",
         "unknown type 'floaty' (known: float, int, categorical)"),
        ({"type": "float", "low": 0.01, "high": 0.001}, "params.train.lr_head",
         "low 0.01 > high 0.001"),
        ({"type": "int", "low": 9, "high": 3}, "params.train.lr_head", "low 9 > high 3"),
        ({"type": "float", "low": 0.0, "high": 0.01, "log": True}, "params.train.lr_head.low",
         "a log distribution needs low > 0, got 0.0"),
        ({"type": "float", "low": "a", "high": 0.01}, "params.train.lr_head.low",
         "must be a number, got 'a'"),
        ({"type": "int", "low": 1.5, "high": 3}, "params.train.lr_head.low",
         "must be an integer, got 1.5"),
        ({"type": "float", "low": 0.1, "high": 0.5, "log": "yes"}, "params.train.lr_head.log",
         "must be true or false, got 'yes'"),
        ({"type": "float", "low": 0.1, "high": 0.5, "stepp": 1}, "params.train.lr_head.stepp",
         "unknown key (known: type, low, high, log, step, when)"),
        ({"type": "float", "low": 0.1, "high": 0.5, "step": 0.15}, "params.train.lr_head.step",
         "high - low = 0.4 is not a multiple of step 0.15"),
        ({"type": "float", "low": 0.1, "high": 0.5, "step": -1}, "params.train.lr_head.step",
         "must be a number > 0, got -1"),
        ({"type": "float", "low": 0.1, "high": 0.5, "step": 0.1, "log": True},
         "params.train.lr_head.step", "step and log cannot be used together"),
        ({"type": "categorical", "choices": []}, "params.train.lr_head.choices",
         "must be a non-empty list"),
        ({"type": "categorical", "choices": ["mean", "mean"]}, "params.train.lr_head.choices",
         "'mean' is listed twice"),
        ({"type": "categorical", "choices": [1, True]}, None, None),  # True is not 1 here
        ({"type": "categorical", "choices": [[1], 2]}, "params.train.lr_head.choices",
         "choices must be numbers, strings, booleans or null, got [1]"),
        ({"type": "float", "low": 1e-6, "high": 1e-4, "when": "model.head.hidden > 0"},
         "params.train.lr_head.when",
         "'model.head.hidden' is not a parameter listed before 'train.lr_head'"),
        ({"type": "float", "low": 1e-6, "high": 1e-4, "when": "model.unfreeze_at_epoch is 0"},
         "params.train.lr_head.when", "is not 'PARAM OP VALUE'"),
        ({"type": "float", "low": 1e-6, "high": 1e-4, "when": "model.unfreeze_at_epoch in 2"},
         "params.train.lr_head.when", "'in' needs a list, got '2'"),
    ],
)
def test_every_problem_names_its_key(spec: Any, key: str | None, message: str | None) -> None:
    _, problems = parse(spec)
    if key is None:
        assert problems == {}
        return
    assert key in problems, problems
    assert message is not None and message in problems[key]


def test_yaml_strings_like_1e_minus_4_are_numbers() -> None:
    param, problems = parse({"type": "float", "low": "1e-4", "high": "1e-2", "log": True})
    assert problems == {}
    assert param == Param("train.lr_head", "float", low=1e-4, high=1e-2, log=True)


def test_a_condition_on_an_earlier_parameter() -> None:
    param, problems = parse({"type": "float", "low": 1e-6, "high": 1e-4, "log": True,
                             "when": "model.unfreeze_at_epoch >= 0"}, "train.lr_encoder")
    assert problems == {} and param is not None
    assert param.when == Condition("model.unfreeze_at_epoch", ">=", 0)
    assert param.describe() == "float [1e-06, 0.0001] log when model.unfreeze_at_epoch >= 0"


@pytest.mark.parametrize(("text", "values", "holds"), [
    ("a >= 0", {"a": 2}, True),
    ("a >= 0", {"a": -1}, False),
    ("a >= 0", {}, False),  # a not sampled: the condition does not hold
    ("a in [mean, max]", {"a": "max"}, True),
    ("a not in [mean, max]", {"a": "max"}, False),
    ("a == true", {"a": True}, True),
    ("a < 3", {"a": "text"}, False),  # not comparable: does not hold
])
def test_condition_holds(text: str, values: dict[str, Any], holds: bool) -> None:
    assert Condition.parse(text).holds(values) is holds


@pytest.mark.parametrize(("param", "value", "contained"), [
    (Param("p", "float", low=0.1, high=0.5, step=0.1), 0.3, True),
    (Param("p", "float", low=0.1, high=0.5, step=0.1), 0.35, False),
    (Param("p", "float", low=0.1, high=0.5), 0.6, False),
    (Param("p", "int", low=1, high=8), 2.0, False),
    (Param("p", "int", low=1, high=8), True, False),
    (Param("p", "categorical", choices=(0, 64)), 64, True),
    (Param("p", "categorical", choices=(0, 1)), False, False),  # a bool is not the int 0
])
def test_contains_is_what_the_distribution_can_produce(param: Param, value: Any,
                                                       contained: bool) -> None:
    assert param.contains(value) is contained


def test_suggest_and_canonical_form() -> None:
    param = Param("train.grad_accum_steps", "int", low=1, high=32, log=True)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    value = param.suggest(study.ask())
    assert isinstance(value, int) and 1 <= value <= 32
    assert param.to_dict() == {"type": "int", "low": 1, "high": 32, "log": True, "step": None,
                               "when": None}
