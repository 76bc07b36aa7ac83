"""A trial's W&B identity: its run named after the study and trial number, grouped by study."""

from __future__ import annotations

from collections.abc import Iterable

from octtrain.config import TrainConfig


def with_wandb_identity(cfg: TrainConfig, study_name: str, trial_number: int,
                        params: Iterable[str]) -> TrainConfig:
    """With ``log.wandb`` on: the trial's W&B run is ``<study>-trial-<n>`` in group ``<study>``,
    its sampled params in its config. Not stored with the trial: an exported config stays clean."""
    if not cfg.log.wandb:
        return cfg
    return cfg.with_overrides({"log.wandb_name": f"{study_name}-trial-{trial_number}",
                               "log.wandb_group": study_name, "log.wandb_params": list(params)},
                              source="octsearch W&B identity")
