"""The trainer's configuration: one typed, self-validating dataclass per YAML section
(``sections``), raw YAML to those dataclasses with every problem collected (``schema``), path keys
made absolute (``paths``), and the whole file as a :class:`TrainConfig` (``train_config``).
"""

from __future__ import annotations

from octtrain.config.paths import resolve_dotted, resolve_paths
from octtrain.config.schema import read_yaml, unknown_keys, yaml_number
from octtrain.config.sections import (
    METRICS_MAX,
    METRICS_MIN,
    AugmentSection,
    DataSection,
    EarlyStoppingSection,
    LogSection,
    ModelSection,
    RuntimeSection,
    TrainSection,
)
from octtrain.config.train_config import (
    EnvKnobs,
    TrainConfig,
    apply_overrides,
    config_from_dict,
    load_config,
    parse_overrides,
    unknown_setting,
)

__all__ = [
    "AugmentSection",
    "DataSection",
    "EarlyStoppingSection",
    "EnvKnobs",
    "LogSection",
    "METRICS_MAX",
    "METRICS_MIN",
    "ModelSection",
    "RuntimeSection",
    "TrainConfig",
    "TrainSection",
    "apply_overrides",
    "config_from_dict",
    "load_config",
    "parse_overrides",
    "read_yaml",
    "resolve_dotted",
    "resolve_paths",
    "unknown_keys",
    "unknown_setting",
    "yaml_number",
]
