"""A trial's W&B identity: its run named after the study and trial number, grouped by study."""

from __future__ import annotations

from collections.abc import Iterable

from octtrain.config import TrainConfig


def with_wandb_identity(cfg: TrainConfig, study_name: str, trial_number: int | None,
                        params: Iterable[str], *, study_id: int | None = None,
                        enqueued: str = "") -> TrainConfig:
    """With ``log.wandb`` on: the trial's W&B run is ``<study>-trial-<n>`` in group ``<study>``,
    its sampled params in its config, with the study, its id and the trial number, and the
    enqueued trial's name as a tag. ``trial_number`` None: the study's final run
    (``<study>-final``). Not stored with the trial: an exported config stays clean."""
    if not cfg.log.wandb:
        return cfg
    name = f"{study_name}-final" if trial_number is None else f"{study_name}-trial-{trial_number}"
    config: dict[str, str | int] = {"study": study_name}
    if study_id is not None:
        config["study_id"] = study_id
    if trial_number is not None:
        config["trial"] = trial_number
    return cfg.with_overrides({"log.wandb_name": name, "log.wandb_group": study_name,
                               "log.wandb_params": list(params), "log.wandb_config": config,
                               "log.wandb_tags": [enqueued] if enqueued else []},
                              source="octsearch W&B identity")
