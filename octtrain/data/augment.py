"""OCT-safe augmentation of a ``(T, H, W)`` volume: no transform that changes the anatomy.

What is safe for OCT, and why:

* **Horizontal flip** mirrors the lateral (width) axis of every B-scan the same way. Left and
  right eyes are mirror images, so this is a plausible scan. The frame axis (B-scan order,
  the slow scan direction) is never reversed: that would change the anatomy's continuity the
  encoder's tubelets see. The height axis is never flipped: retinal layers have a fixed order
  from the vitreous (top) down to the choroid.
* **In-plane rotation** by one small angle shared by all B-scans (head/eye tilt rotates the
  whole volume, not single B-scans; per-frame angles would make the anatomy jitter in time).
* **Intensity jitter**: one multiplicative factor per volume (device gain differs per scan).

Randomness comes from torch's RNG: the global one by default, which ``DataLoader`` seeds
differently in every worker (numpy's global RNG would be forked identically into each worker),
or an explicit ``torch.Generator`` for reproducible tests.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F

from octtrain.config import AugmentSection

Step = Callable[[torch.Tensor, "torch.Generator | None"], torch.Tensor]


# ---------------------------------------------------------------------------------------------
# Pure transforms (deterministic given their arguments)
# ---------------------------------------------------------------------------------------------


def hflip(volume: torch.Tensor) -> torch.Tensor:
    """Mirror the width axis of a ``(T, H, W)`` volume: ``out[t, h, w] = in[t, h, W-1-w]``."""
    return torch.flip(volume, dims=(-1,))


def rotate(volume: torch.Tensor, degrees: float) -> torch.Tensor:
    """Rotate every B-scan of a ``(T, H, W)`` volume by ``degrees`` about its centre.

    Positive angles turn the image counter-clockwise as displayed (row 0 at the top), like
    ``torch.rot90(x, 1, dims=(-2, -1))`` does for 90°. Bilinear sampling; pixels that come
    from outside the B-scan are 0 (the dark vitreous/background of OCT). The sampling grid is
    built in pixel units, so a non-square B-scan is rotated without shearing. 0° returns the
    input unchanged.
    """
    if degrees == 0:
        return volume
    t, h, w = volume.shape
    a = math.radians(degrees)
    cos, sin = math.cos(a), math.sin(a)
    # affine_grid maps each output pixel to the input position it samples, in normalised
    # coordinates ([-1, 1] on both axes). In pixel units, with y pointing down, that map is
    # [[cos, -sin], [sin, cos]]; normalising x by W/2 and y by H/2 scales the off-diagonal
    # terms by the aspect ratio.
    theta = torch.tensor(
        [[cos, -sin * h / w, 0.0], [sin * w / h, cos, 0.0]],
        dtype=volume.dtype if volume.is_floating_point() else torch.float32,
        device=volume.device,
    )
    x = volume.reshape(t, 1, h, w).to(theta.dtype)  # frames as a batch: one angle for all
    grid = F.affine_grid(theta.expand(t, 2, 3), [t, 1, h, w], align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.reshape(t, h, w)


def scale_intensity(volume: torch.Tensor, factor: float) -> torch.Tensor:
    """``volume * factor`` (one factor for the whole volume; values may leave [0, 1])."""
    return volume * factor


# ---------------------------------------------------------------------------------------------
# Random steps: draw parameters, then call a pure transform
# ---------------------------------------------------------------------------------------------


def _uniform(low: float, high: float, generator: torch.Generator | None) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def random_hflip(volume: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Mirror the width axis with probability 1/2."""
    return hflip(volume) if float(torch.rand((), generator=generator)) < 0.5 else volume


def random_rotate(
    volume: torch.Tensor, generator: torch.Generator | None, *, max_degrees: float
) -> torch.Tensor:
    """Rotate all B-scans by one angle drawn uniformly from ``[-max_degrees, max_degrees]``."""
    return rotate(volume, _uniform(-max_degrees, max_degrees, generator))


def random_intensity(
    volume: torch.Tensor, generator: torch.Generator | None, *, scale: float
) -> torch.Tensor:
    """Multiply by one factor drawn uniformly from ``[1 - scale, 1 + scale]``."""
    return scale_intensity(volume, _uniform(1.0 - scale, 1.0 + scale, generator))


class Augment:
    """The augmentation of one split, built from an :class:`AugmentSection`.

    Which steps run is decided here, once (flip → rotation → intensity); a config with nothing
    enabled has no steps, so calling it returns the input tensor itself and draws no random
    numbers. Instances hold only module-level functions and floats, so they pickle into
    DataLoader workers.
    """

    def __init__(self, cfg: AugmentSection) -> None:
        self.cfg = cfg
        steps: list[Step] = []
        if cfg.flip:
            steps.append(random_hflip)
        if cfg.rotation_deg > 0:
            steps.append(partial(random_rotate, max_degrees=cfg.rotation_deg))
        if cfg.intensity_jitter > 0:
            steps.append(partial(random_intensity, scale=cfg.intensity_jitter))
        self.steps = steps

    @property
    def is_identity(self) -> bool:
        return not self.steps

    def __call__(
        self, volume: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Augment a ``(T, H, W)`` volume; ``generator=None`` uses torch's global RNG."""
        for step in self.steps:
            volume = step(volume, generator)
        return volume

    def __repr__(self) -> str:
        return f"Augment({self.cfg})"
