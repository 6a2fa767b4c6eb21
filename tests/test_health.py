"""Model health: the measures against hand-computed values, and the warnings each one raises."""

from __future__ import annotations

import numpy as np
import pytest

from facecleaner.scoring.health import assess


def test_measures_on_hand_checked_angles() -> None:
    angle = np.array([2.0, 4.0, 30.0, 40.0, 95.0, np.nan])
    other = np.array([50.0, 10.0, 70.0, np.nan, 80.0, 60.0])
    h = assess(angle, other, noise_share=0.2, suggested_angle=60.0)
    assert h.samples == 5
    assert h.median_angle == 30.0
    assert h.memorised_share == pytest.approx(2 / 5) and h.unseparated_share == pytest.approx(1 / 5)
    assert h.median_gap == pytest.approx(float(np.median([48.0, 6.0, 40.0, -15.0])))  # NaN pairs left out
    assert h.noise_share == 0.2 and h.suggested_angle == 60.0 and h.separated
    assert len(h.warnings) == 1 and "memorised" in h.warnings[0]
    assert h.as_dict()["separated"] is True


def test_a_model_that_has_not_separated_the_classes_is_named() -> None:
    rng = np.random.default_rng(0)
    far = assess(rng.normal(85, 10, 1000), rng.normal(95, 10, 1000))
    assert not far.separated and len(far.warnings) == 1 and "has not separated the classes" in far.warnings[0]
    # An untrained network: its embeddings sit in a narrow cone, within 75° of the voted sub-center, but
    # nearer another class than their own.
    cone = assess(rng.normal(70, 3, 1000), rng.normal(60, 3, 1000))
    assert cone.median_angle < 75 and cone.median_gap < 0
    assert not cone.separated and "median margin to the nearest other class -10°" in cone.warnings[0]


def test_classes_that_barely_separate_are_named() -> None:
    rng = np.random.default_rng(2)
    h = assess(rng.normal(40, 5, 1000), rng.normal(46, 5, 1000))
    assert h.separated and len(h.warnings) == 1 and "barely nearer their own class" in h.warnings[0]


def test_a_healthy_model_has_no_warnings_whatever_k_would_have_said() -> None:
    rng = np.random.default_rng(1)
    angle = np.concatenate([rng.normal(30, 5, 800), rng.normal(90, 8, 200)])  # 20% noise near 90°
    h = assess(angle, angle + 35)
    assert h.separated and h.warnings == []
    assert h.unseparated_share == pytest.approx(float(np.mean(angle > 90)))


def test_no_finite_angle() -> None:
    h = assess(np.array([np.nan, np.nan]))
    assert h.samples == 0 and not h.separated and h.warnings
