"""Search space files: every validation error names its key; sampling; canonical form.

The checks of one ``params`` entry alone are in test_params.py; here, those that need the
whole space (the trainer's settings, the base config, earlier parameters, enqueued trials).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from search_testing import FAKE_SPACE

from octtrain.config.train_config import load_config
from search.errors import SearchSpaceError
from search.space.search_space import diff_spaces, load_space, space_from_dict

REPO = Path(__file__).resolve().parents[2]


def problems_of(raw: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(SearchSpaceError) as info:
        space_from_dict(raw, source="space.yaml")
    assert str(info.value).startswith("space.yaml: ")
    return dict(info.value.problems)


def with_changes(**changes: Any) -> dict[str, Any]:
    """FAKE_SPACE with dotted top-level changes, e.g. params={...}."""
    raw = copy.deepcopy(FAKE_SPACE)
    raw.update(changes)
    return raw


def with_param(path: str, spec: Any) -> dict[str, Any]:
    raw = copy.deepcopy(FAKE_SPACE)
    raw["params"][path] = spec
    return raw


@pytest.mark.parametrize(
    ("raw", "key", "message"),
    [
        (with_param("train.lr_head", {"type": "float", "low": 0.01, "high": 0.001}),
         "params.train.lr_head", "low 0.01 > high 0.001"),
        (with_param("train.weight_decay", {"type": "float", "low": -1e-3, "high": 0.1,
                                           "log": True}),
         "params.train.weight_decay.low", "a log distribution needs low > 0, got -0.001"),
        (with_param("model.head.hiden", {"type": "int", "low": 0, "high": 8}),
         "params.model.head.hiden",
         "not a trainer config setting (did you mean model.head.hidden?)"),
        (with_param("model.head.dropout", {"type": "float", "low": 0.0, "high": 1.0}),
         "params.model.head.dropout",
         "the trainer rejects 1.0: model.head.dropout: must be in [0, 1), got 1.0"),
        (with_param("model.unfreeze_at_epoch", {"type": "categorical", "choices": [-1, 9]}),
         "params.model.unfreeze_at_epoch", "the trainer rejects 9: model.unfreeze_at_epoch: "
         "epoch 9 is never reached with train.epochs=6"),
        (with_param("train.lr_encoder", {"type": "float", "low": 1e-6, "high": 1e-4,
                                         "when": "model.unfreeze_at_epoch >= 0"}),
         "params.train.lr_encoder.when",
         "'model.unfreeze_at_epoch' is not a parameter listed before 'train.lr_encoder'"),
        (with_changes(params={}), "params", "must be a non-empty mapping"),
        (with_changes(extra=1), "extra", "unknown key (known: base, overrides, objective"),
        (with_changes(objective={"metric": "auc"}), "objective.metric",
         "must be one of balanced_accuracy, macro_f1, accuracy, loss, got 'auc'"),
        (with_changes(objective={"metric": "loss", "direction": "maximize"}),
         "objective.direction", "loss is better when lower: use minimize"),
        (with_changes(sampler={"type": "cmaes"}), "sampler.type",
         "unknown sampler 'cmaes' (known: tpe, random)"),
        (with_changes(sampler={"type": "tpe", "n_startup": 3}), "sampler.n_startup",
         "unknown option (known: n_startup_trials"),
        (with_changes(sampler={"type": "tpe", "multivariate": "yes"}), "sampler.multivariate",
         "must be bool, got 'yes'"),
        (with_changes(pruner={"inner": {"type": "wilcoxon"}}), "pruner.inner.type",
         "unknown pruner 'wilcoxon' (known: none, reach, median, percentile, hyperband, "
         "successive_halving)"),
        (with_changes(pruner={"inner": {"type": "reach", "window": 0}}), "pruner.inner", "window=0"),
        (with_changes(pruner={"inner": {"type": "reach", "optimism": "high"}}), "pruner.inner.optimism",
         "must be float, got 'high'"),
        (with_changes(objective={"metric": "loss", "direction": "minimize"}, pruner={"inner": {"type": "reach"}}),
         "pruner.inner.type", "reach judges a maximized objective; objective.metric loss is minimized"),
        (with_changes(pruner={"inner": {"type": "percentile"}}), "pruner.inner.percentile",
         "is required for the percentile pruner"),
        (with_changes(pruner={"inner": {"type": "percentile", "percentile": 120}}),
         "pruner.inner", "percentile=120.0"),
        (with_changes(pruner={"inner": {"type": "median", "n_warmup_steps": -1}}),
         "pruner.inner", "n_warmup_steps=-1"),
        (with_changes(pruner={"collapse": {"max_class_share": 1.5}}), "pruner.collapse",
         "max_class_share=1.5"),
        (with_changes(pruner={"collapse": {"patiense": 2}}), "pruner.collapse.patiense",
         "unknown option (known: max_class_share, margin, patience, grace_epochs, settle_epochs, "
         "train_margin, loss_margin, stuck_patience, max_prediction_change) (did you mean patience?)"),
        (with_changes(pruner={"collapse": {"patience": "2"}}), "pruner.collapse.patience",
         "must be int, got '2'"),
        (with_changes(samplr={"type": "tpe"}), "samplr",
         "unknown key (known: base, overrides, objective, params, enqueue, sampler, pruner) "
         "(did you mean sampler?)"),
        (with_changes(base="no/such/config.yaml"), "base",
         "file not found (in no/such/config.yaml)"),
        (with_changes(base={"data": {"manifest": "m.csv"}, "train": {"epochs": 0}}),
         "base.train.epochs", "must be >= 1, got 0"),
        (with_changes(overrides={"train.epoch": 3}), "base.train.epoch", "unknown key"),
        (with_changes(enqueue=[{"name": "a", "params": {"model.head.hidden": 100}}]),
         "enqueue[0].params.model.head.hidden",
         "100 is outside its distribution categorical [0, 64]"),
        (with_changes(enqueue=[{"params": {"train.lr_head": 0.5}}]),
         "enqueue[0].params.train.lr_head",
         "0.5 is outside its distribution float [0.0001, 0.01] log"),
        (with_changes(enqueue=[{"params": {"train.epochs": 3}}]),
         "enqueue[0].params.train.epochs",
         "not a searched parameter (searched: model.head.hidden, train.lr_head)"),
        (with_changes(enqueue=[{"params": {"model.head.hidden": True}}]),
         "enqueue[0].params.model.head.hidden", "True is outside its distribution"),
        (with_changes(enqueue={"params": {}}), "enqueue", "must be a list"),
    ],
)
def test_every_error_names_its_key(raw: dict[str, Any], key: str, message: str) -> None:
    problems = problems_of(raw)
    assert key in problems, problems
    assert message in problems[key]


def test_enqueued_value_of_an_inactive_conditional_parameter() -> None:
    raw = with_param("model.unfreeze_at_epoch", {"type": "categorical", "choices": [-1, 2]})
    raw["params"]["train.lr_encoder"] = {"type": "float", "low": 1e-6, "high": 1e-4,
                                         "log": True, "when": "model.unfreeze_at_epoch >= 0"}
    raw["enqueue"] = [{"params": {"model.unfreeze_at_epoch": -1, "train.lr_encoder": 1e-5}}]
    problems = problems_of(raw)
    assert problems["enqueue[0].params.train.lr_encoder"] == (
        "is not sampled because 'model.unfreeze_at_epoch >= 0' is false for this trial: remove it")


BAD_LR = {"type": "float", "low": 0.01, "high": 0.001}  # an invalid distribution
SEEDS = [{"name": f"seed_{i}", "params": {"model.head.hidden": 64, "train.lr_head": 3e-3}}
         for i in range(3)]


@pytest.mark.parametrize(
    ("path", "spec", "seeds", "expected"),
    [
        ("train.lr_head", BAD_LR, SEEDS,
         [("params.train.lr_head", "low 0.01 > high 0.001")]),
        ("train.lr_hed", FAKE_SPACE["params"]["train.lr_head"],
         [{"params": {"train.lr_hed": 3e-3}}] * 3,
         [("params.train.lr_hed", "unknown key: not a trainer config setting (did you mean train.lr_head?)")]),
        ("train.lr_head", BAD_LR,  # the seeds' other problems are still found
         [*SEEDS[:2], {"params": {"model.head.hidden": 100, "train.lr_head": 3e-3,
                                  "train.epochs": 3}}],
         [("params.train.lr_head", "low 0.01 > high 0.001"),
          ("enqueue[2].params.model.head.hidden",
           "100 is outside its distribution categorical [0, 64]"),
          ("enqueue[2].params.train.epochs",
           "not a searched parameter (searched: model.head.hidden, train.lr_head)")]),
    ],
)
def test_a_bad_parameter_is_reported_once_not_once_per_enqueued_trial(
    path: str, spec: dict[str, Any], seeds: list[dict[str, Any]],
    expected: list[tuple[str, str]],
) -> None:
    raw = with_param(path, spec)
    raw["enqueue"] = seeds
    with pytest.raises(SearchSpaceError) as info:
        space_from_dict(raw, source="space.yaml")
    assert info.value.problems == expected


def test_all_problems_of_a_file_are_reported_at_once() -> None:
    raw = with_param("train.lr_head", {"type": "float", "low": 0.0, "high": -1.0, "log": True})
    raw["params"]["model.head.hiden"] = {"type": "int", "low": 0, "high": 3}
    raw["sampler"] = {"type": "grid"}
    problems = problems_of(raw)
    assert {"params.train.lr_head", "params.train.lr_head.low", "params.model.head.hiden",
            "sampler.type"} <= set(problems)


def test_load_space_reads_yaml_and_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "space.yaml"
    raw = copy.deepcopy(FAKE_SPACE)
    raw["params"]["train.lr_head"] = {"type": "float", "low": "1e-4", "high": "1e-2", "log": True}
    path.write_text(yaml.safe_dump(raw))  # "1e-4" without a dot is a string in YAML 1.1
    space = load_space(path)
    assert space.params[1].low == 1e-4 and space.source == str(path)
    path.write_text("params: [unclosed")
    with pytest.raises(SearchSpaceError, match=r"space.yaml: invalid YAML at line 1"):
        load_space(path)


@pytest.mark.parametrize("name", ["scenario_a.yaml", "smoke.yaml"])
def test_shipped_spaces_validate_and_enqueue_the_seed_configs(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO)  # spaces refer to configs/ relative to the working directory
    space = load_space(f"spaces/{name}")
    assert [p.path for p in space.params] == [
        "model.head.hidden", "model.head.dropout", "train.label_smoothing",
        "train.class_weights", "model.unfreeze_at_epoch", "train.lr_head", "train.lr_encoder",
        "train.grad_accum_steps", "model.pool_method"]
    assert space.objective.metric == "balanced_accuracy" and space.objective.maximize
    fixed, baseline, *late = space.enqueue
    assert (fixed.name, baseline.name) == ("seed_fixed", "seed_baseline")
    if late:  # smoke.yaml: the baseline, but with an encoder that unfreezes at epoch 4
        (late_baseline,) = late
        assert late_baseline.params == {**baseline.params, "model.unfreeze_at_epoch": 4,
                                        "train.lr_encoder": 1e-4}
    for entry, config in ((fixed, "configs/scenario_a_fixed.yaml"),
                          (baseline, "configs/scenario_a_baseline.yaml")):
        cfg = load_config(config).to_dict()
        for path, value in entry.params.items():
            section, *rest = path.split(".")
            node = cfg[section]
            for part in rest:
                node = node[part]
            assert node == value, (config, path)
    assert "train.lr_encoder" not in baseline.params  # never unfrozen: not sampled


def test_conditional_parameter_is_sampled_only_when_its_condition_holds() -> None:
    raw = with_param("model.unfreeze_at_epoch", {"type": "categorical", "choices": [-1, 2]})
    raw["params"]["train.lr_encoder"] = {"type": "float", "low": 1e-6, "high": 1e-4,
                                         "log": True, "when": "model.unfreeze_at_epoch >= 0"}
    space = space_from_dict(raw)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.enqueue_trial({"model.unfreeze_at_epoch": -1})
    study.enqueue_trial({"model.unfreeze_at_epoch": 2})
    frozen = space.suggest(study.ask())
    unfrozen = space.suggest(study.ask())
    assert "train.lr_encoder" not in frozen
    assert 1e-6 <= unfrozen["train.lr_encoder"] <= 1e-4
    cfg = space.trainer_config(unfrozen)
    assert cfg.model.unfreeze_at_epoch == 2 and cfg.train.lr_encoder == unfrozen["train.lr_encoder"]


def test_float_options_written_like_1e_minus_2_are_numbers() -> None:
    """YAML 1.1 reads ``5e-2`` (no dot) as a string; options take it as the number it means."""
    space = space_from_dict(with_changes(pruner={"collapse": {"margin": "5e-2"}}))
    assert space.pruner.collapse["margin"] == 0.05


def test_canonical_form_round_trips_and_fills_defaults() -> None:
    space = space_from_dict(FAKE_SPACE)
    canonical = space.to_dict()
    assert space_from_dict(canonical).to_dict() == canonical
    assert canonical["pruner"]["collapse"] == {"max_class_share": 0.9, "margin": 0.05,
                                               "patience": 2, "grace_epochs": 1,
                                               "settle_epochs": 2, "train_margin": 0.05, "loss_margin": 0.1,
                                               "stuck_patience": 3, "max_prediction_change": 0.01}
    explicit = copy.deepcopy(FAKE_SPACE)
    explicit["pruner"]["collapse"]["max_class_share"] = 0.9
    explicit["objective"] = {"metric": "balanced_accuracy"}
    assert space_from_dict(explicit).to_dict() == canonical


def test_diff_spaces_names_every_difference() -> None:
    stored = space_from_dict(FAKE_SPACE).to_dict()
    raw = copy.deepcopy(FAKE_SPACE)
    raw["params"]["train.lr_head"]["high"] = 0.02
    raw["params"]["model.head.dropout"] = {"type": "float", "low": 0.0, "high": 0.5}
    raw["base"]["train"]["epochs"] = 7
    current = space_from_dict(raw).to_dict()
    differences = diff_spaces(stored, current)
    assert differences[:2] == ["base.train.epochs: stored 6, this file 7",
                               "params.train.lr_head.high: stored 0.01, this file 0.02"]
    assert differences[2].startswith(
        'params.model.head.dropout: not in the stored study (this file: {"type": "float", ')
    assert len(differences) == 3
    assert diff_spaces(stored, stored) == []


def test_overrides_complete_an_inline_base() -> None:
    """An inline base without data is completed by `overrides`, as a path base would be."""
    raw = copy.deepcopy(FAKE_SPACE)
    del raw["base"]["data"]
    raw["overrides"] = {"data.manifest": "elsewhere.csv", "train.epochs": 7}
    space = space_from_dict(raw)
    assert space.base.data.manifest == "elsewhere.csv" and space.base.train.epochs == 7
    raw["overrides"] = {"data.manifset": "x.csv"}
    with pytest.raises(SearchSpaceError, match="data.manifset"):
        space_from_dict(raw)


def test_pruner_none_turns_pruning_off_and_round_trips() -> None:
    raw = copy.deepcopy(FAKE_SPACE)
    raw["pruner"] = "none"
    space = space_from_dict(raw)
    assert isinstance(space.pruner.build(), optuna.pruners.NopPruner)
    assert space.to_dict()["pruner"] == "none"
    assert space_from_dict(space.to_dict()).to_dict() == space.to_dict()


def test_load_space_refuses_a_section_given_twice(tmp_path: Path) -> None:
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(FAKE_SPACE) + "params: {}\n")
    first = next(i for i, line in enumerate(path.read_text().splitlines(), 1)
                 if line.startswith("params:"))
    last = len(path.read_text().splitlines())
    with pytest.raises(SearchSpaceError,
                       match=rf"space.yaml: invalid YAML at line {last}, column 1: duplicate key "
                             rf"'params' \(first at line {first}, again at line {last}\)"):
        load_space(path)


def test_relative_paths_of_a_space_are_resolved_against_its_folder(tmp_path: Path) -> None:
    folder = tmp_path / "spaces"
    (tmp_path / "configs").mkdir()
    folder.mkdir()
    (tmp_path / "configs" / "base.yaml").write_text("data: {manifest: ../data/base.csv}\n")
    raw = copy.deepcopy(FAKE_SPACE)
    raw["base"] = "../configs/base.yaml"
    raw["overrides"] = {"data.cache_dir": "cache"}
    (folder / "a.yaml").write_text(yaml.safe_dump(raw))
    space = load_space(folder / "a.yaml")
    assert space.base.data.manifest == str(tmp_path / "data" / "base.csv")  # the config's folder
    assert space.base.data.cache_dir == str(folder / "cache")  # the space's folder
    stored = space_from_dict(space.to_dict())  # as every worker reads it back from the study
    assert stored.base.data.manifest == str(tmp_path / "data" / "base.csv")
