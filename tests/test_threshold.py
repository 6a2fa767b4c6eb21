"""``--angle auto``: the valley between the clean and noise modes, checked against mixtures whose densities are
known exactly (the true valley is found on a fine float64 grid, independently of the estimator)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from facecleaner.pruning import threshold
from facecleaner.pruning.threshold import MAX_DEPTH, angle_density, choose_threshold


def normal_pdf(x: np.ndarray, mean: float, sd: float) -> np.ndarray:
    return np.exp(-0.5 * ((x - mean) / sd) ** 2) / (sd * math.sqrt(2 * math.pi))


def true_valley(parts: list[tuple[float, float, float]]) -> float:
    """Minimum of the mixture density between its two means (float64, 0.001° grid)."""
    (w1, m1, s1), (w2, m2, s2) = parts
    grid = np.arange(m1, m2, 0.001)
    return float(grid[np.argmin(w1 * normal_pdf(grid, m1, s1) + w2 * normal_pdf(grid, m2, s2))])


def draw(parts: list[tuple[float, float, float]], n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n, [w for w, _, _ in parts])
    return np.concatenate([rng.normal(m, s, c) for (_, m, s), c in zip(parts, counts, strict=True)])


@pytest.mark.parametrize("parts", [
    [(0.8, 30.0, 6.0), (0.2, 90.0, 10.0)],     # well trained, the paper's picture shifted inwards
    [(0.85, 25.0, 5.0), (0.15, 70.0, 8.0)],    # memorised noise (K = 1) sits near 70°
    [(0.7, 45.0, 8.0), (0.3, 95.0, 12.0)],     # a loose clean mode and much noise
])
@pytest.mark.parametrize("n", [2_000, 200_000])
def test_the_valley_of_a_two_mode_mixture_is_found(parts: list, n: int) -> None:
    angles = draw(parts, n, seed=n)
    chosen = choose_threshold(angles)
    valley = true_valley(parts)
    assert chosen.noise_mode
    assert chosen.angle == pytest.approx(valley, abs=3.0 if n < 10_000 else 1.0)
    (w1, m1, s1), (w2, m2, s2) = parts
    beyond = w1 * 0.5 * math.erfc((valley - m1) / (s1 * math.sqrt(2))) + \
        w2 * 0.5 * math.erfc((valley - m2) / (s2 * math.sqrt(2)))
    assert chosen.noise_share == pytest.approx(beyond, abs=0.02)
    assert chosen.noise_share == pytest.approx(float(np.mean(angles > chosen.angle)))
    assert 1 - MAX_DEPTH < chosen.confidence <= 1
    assert chosen.clean_mode == pytest.approx(m1, abs=2.0)


@pytest.mark.parametrize("angles", [
    np.random.default_rng(0).gamma(9.0, 4.0, 5_000),                       # one skewed mode with a long tail
    np.random.default_rng(1).normal(35.0, 8.0, 5_000),                      # one symmetric mode
    np.concatenate([np.random.default_rng(2).normal(30, 5, 5_000), [95.0] * 20]),  # 0.4% far out: a tail
    np.random.default_rng(3).uniform(20, 110, 5_000),                       # a plateau, no valley
], ids=["skewed", "normal", "few-far-out", "plateau"])
def test_no_noise_mode_falls_back_and_says_so(angles: np.ndarray) -> None:
    chosen = choose_threshold(angles, fallback=75.0)
    assert not chosen.noise_mode and chosen.angle == 75.0 and chosen.noise_share is None
    assert chosen.confidence == 0.0 and "no separate noise mode" in chosen.note


def test_degenerate_inputs_fall_back() -> None:
    for angles in (np.array([]), np.array([40.0]), np.full(10, 40.0), np.array([np.nan, np.nan, 40.0])):
        chosen = choose_threshold(angles, fallback=70.0)
        assert chosen.angle == 70.0 and not chosen.noise_mode


def test_nan_angles_are_ignored() -> None:
    angles = draw([(0.8, 30.0, 6.0), (0.2, 90.0, 10.0)], 4_000, seed=4)
    with_nan = np.concatenate([angles, np.full(500, np.nan)])
    assert choose_threshold(with_nan) == choose_threshold(angles)


def test_density_integrates_to_one_and_matches_a_known_normal() -> None:
    rng = np.random.default_rng(5)
    angles = rng.normal(60.0, 10.0, 400_000)
    grid, density = angle_density(angles, bandwidth=1.0)
    assert density.sum() * (grid[1] - grid[0]) == pytest.approx(1.0, abs=1e-3)
    # smoothing a N(60, 10) with a 1° kernel gives N(60, √101)
    expected = normal_pdf(grid, 60.0, math.sqrt(101.0))
    assert np.max(np.abs(density - expected)) < 0.02 * expected.max()


def test_a_valley_beyond_90_degrees_is_not_a_noise_cut() -> None:
    """Clean mode, an overlapping noise shoulder, and a far mode of badly embedded images near 120°: the only
    valley lies beyond 90°, between noise and that far mode; cutting there would keep all the noise."""
    angles = np.concatenate([draw([(0.7, 28.0, 8.0), (0.1, 60.0, 12.0)], 6_000, seed=7),
                             np.random.default_rng(8).normal(120.0, 6.0, 1_500)])
    chosen = choose_threshold(angles, fallback=75.0)
    assert chosen.angle == 75.0 and not chosen.noise_mode
    with pytest.MonkeyPatch.context() as patch:  # the valley is there, beyond 90°: the cap alone refuses it
        patch.setattr(threshold, "MAX_ANGLE", 180.0)
        assert choose_threshold(angles).angle > 90.0
