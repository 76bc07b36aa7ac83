from __future__ import annotations

from pathlib import Path

import pytest

from octtrain.config.train_config import (
    EnvKnobs,
    TrainConfig,
    apply_overrides,
    config_from_dict,
    leaf_paths,
    load_config,
    parse_overrides,
    unknown_setting,
)
from octtrain.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
MIN = {"data": {"manifest": "m.csv"}}


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


@pytest.mark.parametrize("name", ["scenario_a_baseline.yaml", "scenario_a_fixed.yaml"])
def test_shipped_configs_load(name: str) -> None:
    cfg = load_config(REPO / "configs" / name)
    assert isinstance(cfg, TrainConfig)


def test_shipped_configs_are_scenario_a_before_and_after() -> None:
    base = load_config(REPO / "configs" / "scenario_a_baseline.yaml")
    fixed = load_config(REPO / "configs" / "scenario_a_fixed.yaml")
    assert (base.model.head.hidden, base.model.unfreeze_at_epoch, base.train.class_weights) == (0, -1, "none")
    assert base.model.freeze_encoder and base.train.label_smoothing == 0
    assert (fixed.model.head.hidden, fixed.model.head.dropout) == (256, 0.2)
    assert fixed.model.unfreeze_at_epoch == 3 and fixed.train.class_weights == "auto"
    assert fixed.train.label_smoothing == 0.05
    assert fixed.train.early_stopping.metric == "balanced_accuracy"


def test_yaml_shorthands(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, """
data:
  manifest: m.csv
  augment: {flip: true, intensity_jitter: {scale: 0.2}, rotation_deg: 5}
  val_augment: {flip: false, intensity_jitter: false, rotation_deg: 0}
train:
  lr_encoder: 1e-5
  early_stopping: {enabled: true, patience: 10, metric: balanced_accuracy, mode: max}
"""))
    assert cfg.data.augment.intensity_jitter == 0.2 and cfg.data.augment.flip
    assert not cfg.data.val_augment.enabled
    assert cfg.train.lr_encoder == 1e-5  # YAML 1.1 reads 1e-5 as a string; accepted as a number


def test_every_error_of_a_file_at_once(tmp_path: Path) -> None:
    path = _write(tmp_path, """
data: {manifest: m.csv, frames: many, val_augment: {flip: true}}
model: {pool_method: max, head: {hidden: -1}}
train: {lr_head: -0.1, class_weights: balanced, bogus: 1}
""")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    keys = {k for k, _ in info.value.problems}
    assert keys == {"data.frames", "data.val_augment", "model.pool_method", "model.head.hidden",
                    "train.lr_head", "train.class_weights", "train.bogus"}
    msg = str(info.value)
    assert msg.startswith(str(path)) and "'max'" in msg and "-0.1" in msg


@pytest.mark.parametrize(
    ("raw", "key", "fragment"),
    [
        ({"data": {}}, "data.manifest", "exactly one"),
        ({"data": {"manifest": "a", "root": "b"}}, "data.manifest", "exactly one"),
        ({"data": {"manifest": "m", "nonfinite": "zero"}}, "data.nonfinite",
         "must be error or replace, got 'zero'"),
        ({**MIN, "train": {"epochs": 0}}, "train.epochs", "got 0"),
        ({**MIN, "train": {"scheduler": "step"}}, "train.scheduler", "'step'"),
        ({**MIN, "train": {"early_stopping": {"metric": "auc"}}}, "train.early_stopping.metric", "'auc'"),
        ({**MIN, "model": {"unfreeze_at_epoch": -2}}, "model.unfreeze_at_epoch", "-2"),
        ({**MIN, "model": {"unfreeze_at_epoch": 60}}, "model.unfreeze_at_epoch", "never reached"),
        ({**MIN, "runtime": {"device": "tpu"}}, "runtime.device", "'tpu'"),
        ({**MIN, "train": {"grad_accum_steps": True}}, "train.grad_accum_steps", "an integer"),
        ({"data": {"manifest": "m", "clip_percentiles": [99, 1]}}, "data.clip_percentiles", "[99.0, 1.0]"),
    ],
)
def test_each_error_names_its_key(raw: dict, key: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict(raw, source="x.yaml")
    assert key in [k for k, _ in info.value.problems]
    assert fragment in str(info.value)


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nope.yaml: file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="invalid YAML at line 3"):
        load_config(_write(tmp_path, "data:\n  manifest: [unclosed\n"))


def test_overrides_from_the_cli(tmp_path: Path) -> None:
    path = _write(tmp_path, "data: {manifest: m.csv}\n")
    cfg = load_config(path, ["train.lr_head=0.003", "model.head.hidden=256", "data.augment.flip=true"])
    assert cfg.train.lr_head == 0.003 and cfg.model.head.hidden == 256 and cfg.data.augment.flip
    with pytest.raises(ConfigError, match=r"train\.lr_hed: unknown key"):
        load_config(path, ["train.lr_hed=0.1"])
    with pytest.raises(ConfigError, match="must look like section.key=value"):
        parse_overrides(["train.lr_head"])


def test_round_trip_and_with_overrides() -> None:
    cfg = config_from_dict({**MIN, "train": {"class_weights": [1, 2, 3, 4]}})
    again = config_from_dict(cfg.to_dict())
    assert again == cfg
    changed = cfg.with_overrides({"train.lr_encoder": 1e-4, "model.pool_method": "attentive"})
    assert changed.train.lr_encoder == 1e-4 and changed.model.pool_method == "attentive"
    assert cfg.train.lr_encoder == 1e-5  # unchanged original
    with pytest.raises(ConfigError, match="model.pool_method"):
        cfg.with_overrides({"model.pool_method": "max"})


def test_leaf_paths_cover_every_section() -> None:
    paths = set(leaf_paths())
    for key in ["model.freeze_encoder", "model.unfreeze_at_epoch", "model.pool_method", "model.head.hidden",
                "model.head.dropout", "train.lr_head", "train.lr_encoder", "train.weight_decay",
                "train.optimizer", "train.scheduler", "train.warmup_epochs", "train.grad_accum_steps",
                "train.early_stopping.patience", "train.early_stopping.min_delta", "data.augment.flip",
                "data.augment.rotation_deg", "data.val_augment.flip", "train.label_smoothing",
                "train.batch_size", "train.epochs", "train.seed", "data.num_workers", "train.class_weights"]:
        assert key in paths


def test_apply_overrides_completes_a_partial_raw_config() -> None:
    raw = {"train": {"epochs": 3}}
    done = apply_overrides(raw, {"data.manifest": "m.csv", "model.head.hidden": 64})
    assert raw == {"train": {"epochs": 3}}  # the input is not modified
    cfg = config_from_dict(done)
    assert (cfg.data.manifest, cfg.model.head.hidden, cfg.train.epochs) == ("m.csv", 64, 3)
    with pytest.raises(ConfigError, match="space.yaml: model.hed.hidden: unknown key"):
        apply_overrides(raw, {"model.hed.hidden": 1}, source="space.yaml")


def test_unknown_setting_suggests_the_closest_one() -> None:
    assert unknown_setting("model.head.hidden") is None
    assert unknown_setting("model.head") is None  # a section: overrides may set it whole
    assert unknown_setting("model.head", sections=False) is not None
    assert unknown_setting("model.head.hiden") == (
        "unknown key: not a trainer config setting (did you mean model.head.hidden?)")


def test_env_knobs_come_from_the_environment_once() -> None:
    assert EnvKnobs.from_env({}) == EnvKnobs()
    knobs = EnvKnobs.from_env({"OCTTRAIN_DIST_TIMEOUT_S": "30", "OCTTRAIN_RANK_GRACE_S": "2.5",
                               "OCTTRAIN_XLA_CACHE_DIR": "/c"})
    assert knobs == EnvKnobs(dist_timeout_s=30.0, rank_grace_s=2.5, xla_cache_dir="/c")
    with pytest.raises(ConfigError, match=r"OCTTRAIN_RANK_GRACE_S: must be a number of seconds > 0, "
                                          r"got 'soon'"):
        EnvKnobs.from_env({"OCTTRAIN_RANK_GRACE_S": "soon"})


def test_a_non_finite_number_quotes_its_key_and_value(tmp_path: Path) -> None:
    path = _write(tmp_path, "data: {manifest: m.csv}\ntrain: {lr_head: .inf, lr_encoder: .nan}\n"
                            "model: {head: {dropout: 0.1}}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == [("train.lr_encoder", "must be > 0, got nan"),
                                   ("train.lr_head", "must be a finite number, got inf")]
    with pytest.raises(ConfigError, match=r"train.early_stopping.min_delta: must be a finite "
                                          r"number, got inf"):
        load_config(_write(tmp_path, "data: {manifest: m.csv}\n"),
                    ["train.early_stopping.min_delta=.inf"])
