"""octtrain.data.augment: OCT-safe transforms and the per-split Augment."""

from __future__ import annotations

import pickle

import pytest
import torch

from octtrain.config.sections import AugmentSection
from octtrain.data.augment import Augment, hflip, rotate, scale_intensity


def _frames_of_constants(t: int = 6, h: int = 9, w: int = 11) -> torch.Tensor:
    """Frame i is the constant 0.1 * (i + 1): frame order is readable from any pixel."""
    return (torch.arange(1, t + 1, dtype=torch.float32) * 0.1).view(t, 1, 1).expand(t, h, w).clone()


def test_hflip_mirrors_width_only() -> None:
    x = torch.tensor([[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]],
                      [[7.0, 8.0, 9.0], [10.0, 11.0, 12.0]]])  # (T=2, H=2, W=3)
    expected = torch.tensor([[[3.0, 2.0, 1.0], [6.0, 5.0, 4.0]],
                             [[9.0, 8.0, 7.0], [12.0, 11.0, 10.0]]])
    assert torch.equal(hflip(x), expected)


@pytest.mark.parametrize("degrees,k", [(90, 1), (-90, -1), (180, 2)])
def test_rotate_by_right_angles_matches_rot90(degrees: float, k: int) -> None:
    x = torch.arange(3 * 5 * 5, dtype=torch.float32).view(3, 5, 5)
    torch.testing.assert_close(rotate(x, degrees), torch.rot90(x, k, dims=(-2, -1)),
                               atol=1e-4, rtol=0)


def test_rotate_zero_is_identity() -> None:
    x = torch.rand(3, 7, 9)
    assert torch.equal(rotate(x, 0.0), x)


def test_rotate_non_square_keeps_pixel_distances() -> None:
    x = torch.zeros(1, 9, 17)
    x[0, 4, 12] = 1.0  # 4 columns right of the centre (4, 8)
    got = rotate(x, 90)
    # counter-clockwise: 4 pixels right → 4 pixels up, not 4 * 9/17 or 4 * 17/9
    assert (got[0] > 0.5).nonzero().tolist() == [[0, 8]]


def test_rotate_applies_one_angle_to_all_frames() -> None:
    bscan = torch.rand(8, 8)
    x = torch.stack([bscan * c for c in (1.0, 2.0, 3.0)])
    got = rotate(x, 7.5)
    torch.testing.assert_close(got[1], 2 * got[0])
    torch.testing.assert_close(got[2], 3 * got[0])


def test_scale_intensity() -> None:
    assert torch.equal(scale_intensity(torch.tensor([0.0, 0.5, 1.0]), 1.1),
                       torch.tensor([0.0, 0.5, 1.0]) * 1.1)


def test_disabled_config_is_identity_without_rng() -> None:
    aug = Augment(AugmentSection())
    assert aug.is_identity
    x = torch.rand(4, 8, 8)
    state = torch.get_rng_state()
    assert aug(x) is x
    assert torch.equal(torch.get_rng_state(), state)


def test_zero_rotation_and_jitter_is_identity() -> None:
    x = torch.rand(4, 8, 8)
    aug = Augment(AugmentSection(flip=False, rotation_deg=0.0, intensity_jitter=0.0))
    assert torch.equal(aug(x), x)


@pytest.mark.parametrize(
    "cfg",
    [AugmentSection(flip=True), AugmentSection(rotation_deg=45),
     AugmentSection(intensity_jitter=0.3), AugmentSection(True, 45, 0.3)],
)
def test_depth_order_never_changes(cfg: AugmentSection) -> None:
    x = _frames_of_constants()
    aug = Augment(cfg)
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        centre = aug(x, g)[:, 4, 5]  # the centre pixel survives any rotation
        ratios = centre / x[:, 4, 5]
        torch.testing.assert_close(ratios, ratios[:1].expand(6))  # one factor, same order
        assert bool((centre[1:] > centre[:-1]).all())


def test_flip_draws_both_outcomes_and_only_mirrors_width() -> None:
    x = torch.rand(3, 5, 7)
    aug = Augment(AugmentSection(flip=True))
    g = torch.Generator().manual_seed(1)
    seen = {"same": 0, "flipped": 0}
    for _ in range(40):
        out = aug(x, g)
        if torch.equal(out, x):
            seen["same"] += 1
        else:
            assert torch.equal(out, torch.flip(x, dims=(2,)))
            seen["flipped"] += 1
    assert seen["same"] >= 5 and seen["flipped"] >= 5


def test_intensity_jitter_stays_in_range() -> None:
    x = torch.full((2, 4, 4), 0.5)
    aug = Augment(AugmentSection(intensity_jitter=0.1))
    g = torch.Generator().manual_seed(2)
    factors = torch.stack([aug(x, g)[0, 0, 0] / 0.5 for _ in range(200)])
    assert float(factors.min()) >= 0.9 and float(factors.max()) <= 1.1
    assert float(factors.max() - factors.min()) > 0.15  # covers the range, not a constant


def test_rotation_angle_is_uniform_in_range() -> None:
    x = torch.rand(2, 9, 9)
    aug = Augment(AugmentSection(rotation_deg=5))
    g, replay = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    for _ in range(5):
        angle = -5 + 10 * float(torch.rand((), generator=replay))
        assert -5 <= angle <= 5
        torch.testing.assert_close(aug(x, g), rotate(x, angle))


def test_same_generator_seed_same_result_and_pickles() -> None:
    aug = Augment(AugmentSection(True, 5, 0.1))
    clone = pickle.loads(pickle.dumps(aug))
    x = torch.rand(4, 8, 8)
    a = aug(x, torch.Generator().manual_seed(9))
    b = clone(x, torch.Generator().manual_seed(9))
    assert torch.equal(a, b)


def test_global_rng_is_used_by_default() -> None:
    aug = Augment(AugmentSection(intensity_jitter=0.2))
    x = torch.ones(2, 4, 4)
    torch.manual_seed(5)
    a = aug(x)
    torch.manual_seed(5)
    assert torch.equal(aug(x), a)
