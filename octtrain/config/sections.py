"""One dataclass per section of a trainer YAML file, each validating itself.

``data`` (:class:`DataSection`, with ``augment`` and ``val_augment``), ``model``
(:class:`ModelSection`, with ``head``), ``train`` (:class:`TrainSection`: optimisation and the
epoch loop, with ``early_stopping``), ``runtime`` and ``log``. A section's ``__post_init__``
raises one :class:`~octtrain.errors.ConfigError` with all of its problems, keyed by field name;
:mod:`octtrain.config.train_config` assembles the sections into a :class:`~octtrain.config.train_config.TrainConfig`.
Units and defaults are in the comments of each field.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from octtrain.errors import ConfigError, Problems

METRICS_MAX = ("balanced_accuracy", "macro_f1", "accuracy")  # validation metrics, higher is better
METRICS_MIN = ("loss",)  # lower is better


def check(problems: Problems, ok: bool, key: str, msg: str) -> None:
    """Record ``(key, msg)`` unless ``ok``: how a section's ``__post_init__`` lists problems."""
    if not ok:
        problems.append((key, msg))


def check_finite(problems: Problems, section: object) -> None:
    """A problem for each float field of ``section`` (or list of floats) holding NaN or
    ±infinity, unless that field already has one.

    No number of a trainer config means anything when it is not finite (``lr_head: .inf``
    would only show later as a diverged loss), so this one check covers every field.
    """
    reported = {key for key, _ in problems}
    for f in fields(section):  # type: ignore[arg-type]
        value = getattr(section, f.name)
        items = value if isinstance(value, (list, tuple)) else [value]
        bad = [v for v in items if isinstance(v, float) and not math.isfinite(v)]
        if bad and f.name not in reported:
            shown = list(value) if isinstance(value, (list, tuple)) else value
            problems.append((f.name, f"must be a finite number, got {shown!r}"))


def raise_if(problems: Problems, section: object | None = None) -> None:
    """Raise the problems of one section (``schema.build`` puts its path before each key);
    with ``section``, its non-finite numbers too (:func:`check_finite`)."""
    if section is not None:
        check_finite(problems, section)
    if problems:
        raise ConfigError(problems)


@dataclass
class AugmentSection:
    """The ``data.augment`` section: OCT-safe augmentation, the same transform for every B-scan
    of a volume.

    ``flip`` mirrors the width axis (left/right within a B-scan), never the depth (frame) axis.
    ``rotation_deg`` is the largest in-plane rotation in degrees. ``intensity_jitter`` is the
    scale ``s`` of a multiplicative jitter ``x * U(1-s, 1+s)``; in YAML ``true`` means 0.1,
    ``false`` means 0 and ``{scale: s}`` means ``s``.
    """

    flip: bool = False
    rotation_deg: float = 0.0
    intensity_jitter: float = 0.0

    def __post_init__(self) -> None:
        p: Problems = []
        check(p, 0 <= self.rotation_deg <= 45, "rotation_deg",
               f"must be in [0, 45] degrees, got {self.rotation_deg!r}")
        check(p, 0 <= self.intensity_jitter < 1, "intensity_jitter",
               f"scale must be in [0, 1), got {self.intensity_jitter!r}")
        raise_if(p, self)

    @property
    def enabled(self) -> bool:
        return self.flip or self.rotation_deg > 0 or self.intensity_jitter > 0

    @staticmethod
    def _normalize_raw(raw: dict[str, Any]) -> dict[str, Any]:
        jitter = raw.get("intensity_jitter")
        if isinstance(jitter, bool):
            raw["intensity_jitter"] = 0.1 if jitter else 0.0
        elif isinstance(jitter, Mapping) and set(jitter) == {"scale"}:
            raw["intensity_jitter"] = jitter["scale"]
        if raw.get("rotation_deg") is False:
            raw["rotation_deg"] = 0.0
        return raw


@dataclass
class DataSection:
    """The ``data:`` section: where the volumes are and how they become a fixed ``(T, H, W)``."""

    manifest: str | None = None  # CSV: path,label,patient_id[,split]
    root: str | None = None  # or: one folder per class
    frames: int = 16  # T: B-scans per volume after depth resampling
    height: int = 64  # H of each B-scan after resizing (pixels)
    width: int = 64  # W of each B-scan after resizing (pixels)
    clip_percentiles: tuple[float, float] = (1.0, 99.0)  # intensity clip before scaling to [0, 1]
    cache_dir: str | None = None  # preprocessed data sets; None: $XDG_CACHE_HOME/octtrain
    store: str = "float16"  # dtype of the consolidated array: float16 | uint8 | float32
    val_fraction: float = 0.15  # of patients, when the manifest has no split column
    test_fraction: float = 0.15
    split_seed: int = 0
    # DataLoader settings; auto: by device (octtrain.data.dataset.loader_settings)
    num_workers: int | str = "auto"  # worker processes
    pin_memory: bool | str = "auto"  # page-locked batches (CUDA)
    prefetch_factor: int = 2  # batches each worker prepares ahead
    allow_single_bscan: bool = False  # a 2-D array is one B-scan; false: refused as a volume
    nonfinite: str = "error"  # NaN/inf in a volume: error (naming the file) | replace (by 0)
    classes: list[str] | None = None  # pins the label set and its numbering (list order)
    train_on_val: bool = False  # train on train + val (a final model; validation then sees trained data)
    augment: AugmentSection = field(default_factory=AugmentSection)
    val_augment: AugmentSection = field(default_factory=AugmentSection)

    def __post_init__(self) -> None:
        p: Problems = []
        check(p, (self.manifest is None) != (self.root is None), "manifest",
               "give exactly one of data.manifest (a CSV) and data.root (a folder per class)")
        for name in ("frames", "height", "width"):
            value = getattr(self, name)
            check(p, value >= 2, name, f"must be >= 2, got {value!r}")
        check(p, self.nonfinite in ("error", "replace"), "nonfinite",
               f"must be error or replace, got {self.nonfinite!r}")
        lo, hi = self.clip_percentiles
        check(p, 0 <= lo < hi <= 100, "clip_percentiles",
               f"must be [low, high] with 0 <= low < high <= 100, got {list(self.clip_percentiles)}")
        for name in ("val_fraction", "test_fraction"):
            value = getattr(self, name)
            check(p, 0 <= value < 1, name, f"must be in [0, 1), got {value!r}")
        check(p, self.val_fraction + self.test_fraction < 1, "val_fraction",
               "val_fraction + test_fraction must leave patients for training, got "
               f"{self.val_fraction + self.test_fraction!r}")
        check(p, self.num_workers == "auto" or (isinstance(self.num_workers, int)
                                                 and self.num_workers >= 0),
              "num_workers", f"must be 'auto' or >= 0, got {self.num_workers!r}")
        check(p, self.pin_memory in ("auto", True, False), "pin_memory",
              f"must be auto, true or false, got {self.pin_memory!r}")
        check(p, self.prefetch_factor >= 1, "prefetch_factor",
              f"must be >= 1, got {self.prefetch_factor!r}")
        check(p, self.store in ("float16", "uint8", "float32"), "store",
              f"must be float16, uint8 or float32, got {self.store!r}")
        if self.classes is not None:
            check(p, len(self.classes) >= 2 and len(set(self.classes)) == len(self.classes)
                  and all(self.classes), "classes",
                  f"must list two or more distinct class names, got {self.classes!r}")
        check(p, not self.val_augment.enabled, "val_augment",
               "validation must not be augmented (its metrics would change from epoch to epoch): "
               "set flip: false, "
               "rotation_deg: 0, intensity_jitter: false")
        raise_if(p, self)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.frames, self.height, self.width)


@dataclass
class HeadSection:
    """The ``model.head`` section: ``hidden: 0`` is a linear probe; ``hidden > 0`` is
    Linear → GELU → Dropout → Linear."""

    hidden: int = 0
    dropout: float = 0.0

    def __post_init__(self) -> None:
        p: Problems = []
        check(p, self.hidden >= 0, "hidden", f"must be >= 0 (0 = linear), got {self.hidden!r}")
        check(p, 0 <= self.dropout < 1, "dropout", f"must be in [0, 1), got {self.dropout!r}")
        raise_if(p, self)


@dataclass
class ModelSection:
    """The ``model:`` section: V-JEPA 2 encoder + pooling + classification head."""

    # a random-init preset ("tiny", "vitl-random", "vitg-random"), a hub id, or a
    # save_pretrained directory
    encoder: str = "tiny"
    pool_method: str = "mean"  # mean | attentive
    freeze_encoder: bool = True
    unfreeze_at_epoch: int = -1  # -1: never; k: encoder trains from epoch k (epochs count from 0)
    gradient_checkpointing: bool = False  # recompute encoder activations in backward: less memory
    head: HeadSection = field(default_factory=HeadSection)

    def __post_init__(self) -> None:
        p: Problems = []
        check(p, self.pool_method in ("mean", "attentive"), "pool_method",
               f"must be 'mean' or 'attentive', got {self.pool_method!r}")
        check(p, self.unfreeze_at_epoch >= -1, "unfreeze_at_epoch",
               f"must be -1 (never) or an epoch >= 0, got {self.unfreeze_at_epoch!r}")
        check(p, bool(self.encoder), "encoder",
              "must name a preset (tiny, vitl-random, vitg-random), a hub id or a directory")
        raise_if(p, self)

    def encoder_trainable(self, epoch: int) -> bool:
        """Whether the encoder gets gradients in ``epoch`` (0-based)."""
        if not self.freeze_encoder:
            return True
        return 0 <= self.unfreeze_at_epoch <= epoch


@dataclass
class EarlyStoppingSection:
    """The ``train.early_stopping`` section; its metric also picks the best checkpoint."""

    enabled: bool = True
    patience: int = 10  # epochs without improvement before stopping
    metric: str = "balanced_accuracy"
    mode: str = "max"
    min_delta: float = 0.0  # an improvement must beat the best by more than this

    def __post_init__(self) -> None:
        p: Problems = []
        check(p, self.patience >= 1, "patience", f"must be >= 1, got {self.patience!r}")
        check(p, self.metric in METRICS_MAX + METRICS_MIN, "metric",
               f"must be one of {list(METRICS_MAX + METRICS_MIN)}, got {self.metric!r}")
        check(p, self.mode in ("max", "min"), "mode", f"must be 'max' or 'min', got {self.mode!r}")
        if self.metric in METRICS_MAX and self.mode == "min":
            p.append(("mode", f"{self.metric} is better when higher: use mode: max"))
        if self.metric in METRICS_MIN and self.mode == "max":
            p.append(("mode", f"{self.metric} is better when lower: use mode: min"))
        check(p, self.min_delta >= 0, "min_delta", f"must be >= 0, got {self.min_delta!r}")
        raise_if(p, self)


@dataclass
class TrainSection:
    """The ``train:`` section: optimisation and the epoch loop."""

    epochs: int = 50
    batch_size: int = 1  # per process, per micro-batch
    lr_head: float = 3e-3
    lr_encoder: float = 1e-5
    weight_decay: float = 1e-4
    optimizer: str = "AdamW"
    scheduler: str = "cosine"  # cosine | constant (both after linear warmup)
    warmup_epochs: int = 2
    grad_accum_steps: int = 1  # effective batch = batch_size * grad_accum_steps * processes
    grad_clip: float = 0.0  # max global grad norm; 0 = off
    label_smoothing: float = 0.0
    class_weights: str | list[float] = "auto"  # auto | none | [w_0, ..., w_{C-1}]
    seed: int = 0
    early_stopping: EarlyStoppingSection = field(default_factory=EarlyStoppingSection)

    def __post_init__(self) -> None:
        p: Problems = []
        for name in ("epochs", "batch_size", "grad_accum_steps"):
            value = getattr(self, name)
            check(p, value >= 1, name, f"must be >= 1, got {value!r}")
        for name in ("lr_head", "lr_encoder"):
            value = getattr(self, name)
            check(p, value > 0, name, f"must be > 0, got {value!r}")
        check(p, self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay!r}")
        check(p, self.optimizer.lower() == "adamw", "optimizer",
               f"only AdamW is supported, got {self.optimizer!r}")
        check(p, self.scheduler in ("cosine", "constant"), "scheduler",
               f"must be 'cosine' or 'constant', got {self.scheduler!r}")
        check(p, self.warmup_epochs >= 0, "warmup_epochs",
               f"must be >= 0, got {self.warmup_epochs!r}")
        check(p, self.grad_clip >= 0, "grad_clip", f"must be >= 0 (0 = off), got {self.grad_clip!r}")
        check(p, 0 <= self.label_smoothing < 1, "label_smoothing",
               f"must be in [0, 1), got {self.label_smoothing!r}")
        if isinstance(self.class_weights, str):
            check(p, self.class_weights in ("auto", "none"), "class_weights",
                   f"must be 'auto', 'none' or a list of weights, got {self.class_weights!r}")
        else:
            check(p, len(self.class_weights) >= 2 and all(w > 0 for w in self.class_weights),
                   "class_weights", f"a list needs one weight > 0 per class, got {self.class_weights}")
        raise_if(p, self)


@dataclass
class RuntimeSection:
    """The ``runtime:`` section: where a run executes. Device specifics live in
    :mod:`octtrain.runtime.backend`."""

    device: str = "auto"  # auto | xla | cuda | cpu
    num_processes: int = 1  # data-parallel processes in one run (TPU chips, or gloo on CPU)
    xla_cache_dir: str | None = None  # persistent XLA compile cache (same shapes: no recompile)
    # auto: bf16 on XLA and on CUDA devices with bf16, fp32 on CPU. bf16 is torch.autocast:
    # weights, gradients and optimizer state stay fp32; loss and metrics are computed in fp32.
    precision: str = "auto"  # auto | fp32 | bf16

    def __post_init__(self) -> None:
        p: Problems = []
        check(p, self.device in ("auto", "xla", "cuda", "cpu"), "device",
               f"must be one of auto, xla, cuda, cpu, got {self.device!r}")
        check(p, self.precision in ("auto", "fp32", "bf16"), "precision",
               f"must be one of auto, fp32, bf16, got {self.precision!r}")
        check(p, self.num_processes >= 1, "num_processes",
               f"must be >= 1, got {self.num_processes!r}")
        raise_if(p, self)


@dataclass
class LogSection:
    """The ``log:`` section: metrics go to ``metrics.jsonl`` always, to W&B when enabled."""

    wandb: bool = False
    wandb_project: str = "octsearch"
    wandb_mode: str = "offline"  # online | offline | disabled
    wandb_name: str | None = None  # the W&B run's name (None: the run directory's name)
    wandb_group: str | None = None  # runs of one search share a group (octsearch: the study)
    wandb_params: list[str] = field(default_factory=list)  # dotted keys shown as config.params
    wandb_tags: list[str] = field(default_factory=list)  # the run's tags (its end state is added)
    # entries added to the run's config (octsearch: study, study_id, trial)
    wandb_config: dict[str, str | int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        p: Problems = []
        check(p, self.wandb_mode in ("online", "offline", "disabled"), "wandb_mode",
               f"must be online, offline or disabled, got {self.wandb_mode!r}")
        raise_if(p, self)
