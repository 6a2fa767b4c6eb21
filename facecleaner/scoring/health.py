"""Model health: whether a model's geometry can be pruned by, measured the same way for every K.

Every measure is taken against the class's *dominant* sub-center (what pruning thresholds), never the nearest
one: with K = 3 a sample is always at least as near its nearest sub-center as its dominant one, so a "mean angle
to the nearest sub-center" reads better for K = 3 than for K = 1 on the same data. ``score`` records these in its
summary and metadata, ``prune`` repeats the warnings, and ``train``'s guard uses the same function on a probe of
its training data.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

#: A sample this near its sub-center was memorised rather than learned (clean faces sit 20–40° out).
MEMORISED_ANGLE = 5.0
#: Beyond this a sample is no nearer its class than an unrelated one.
UNSEPARATED_ANGLE = 90.0
#: The paper's threshold: a model whose median sample is beyond it would lose most of the data to it.
SEPARATED_MEDIAN = 75.0
MAX_UNSEPARATED_SHARE = 0.4
MAX_MEMORISED_SHARE = 0.2
#: Below this median margin (degrees) between a sample's own class and the nearest other, classes overlap.
MIN_MEDIAN_GAP = 10.0


@dataclass(frozen=True)
class Health:
    """The measures (degrees and shares of the readable samples) and the warnings they raise, in plain words."""

    samples: int
    median_angle: float
    memorised_share: float      # angle < 5°
    unseparated_share: float    # angle > 90°
    median_gap: float | None    # median of angle_other − angle: how much nearer its own class a sample is
    noise_share: float | None   # estimated from the angles (``--angle auto``'s valley), None without a noise mode
    suggested_angle: float | None
    warnings: list[str] = field(default_factory=list)

    @property
    def separated(self) -> bool:
        """Whether the classes are separated enough for an angle rule to keep most of the data: the typical
        sample within 75° of its class and nearer it than any other class."""
        return self.samples > 0 and self.median_angle <= SEPARATED_MEDIAN and \
            self.unseparated_share <= MAX_UNSEPARATED_SHARE and (self.median_gap is None or self.median_gap > 0)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "separated": self.separated}


def assess(angle: np.ndarray, angle_other: np.ndarray | None = None, noise_share: float | None = None,
           suggested_angle: float | None = None) -> Health:
    """The health of the readable samples' ``angle`` (to their dominant sub-center; NaN ignored), with each one's
    ``angle_other`` (to the nearest other class) when known, and the noise share a threshold fit estimated."""
    angle = np.asarray(angle, dtype=np.float64)
    finite = np.isfinite(angle)
    values = angle[finite]
    if not len(values):
        return Health(0, float("nan"), 0.0, 0.0, None, noise_share, suggested_angle,
                      ["no sample has a finite angle: there is nothing to judge the model by"])
    gap = None
    if angle_other is not None:
        gaps = (np.asarray(angle_other, dtype=np.float64) - angle)[finite]
        gaps = gaps[np.isfinite(gaps)]
        gap = float(np.median(gaps)) if len(gaps) else None
    health = Health(len(values), float(np.median(values)), float(np.mean(values < MEMORISED_ANGLE)),
                    float(np.mean(values > UNSEPARATED_ANGLE)), gap, noise_share, suggested_angle)
    return Health(**{**asdict(health), "warnings": _warnings(health)})


def _warnings(h: Health) -> list[str]:
    found = []
    if not h.separated:
        gap = "" if h.median_gap is None else f", median margin to the nearest other class {h.median_gap:.0f}°"
        found.append(f"the model has not separated the classes (median angle to the dominant sub-center "
                     f"{h.median_angle:.0f}°, {h.unseparated_share:.0%} of samples over {UNSEPARATED_ANGLE:.0f}°"
                     f"{gap}): an angle rule would drop most samples or keep the noise; train longer (--epochs), "
                     "lower --lr or --scale, or start from a pretrained backbone (--init-backbone)")
    if h.memorised_share > MAX_MEMORISED_SHARE:
        found.append(f"{h.memorised_share:.0%} of samples sit within {MEMORISED_ANGLE:.0f}° of their class's "
                     "sub-center: the model memorised its training images, and pulls noisy ones into their labels "
                     "too; train fewer epochs, or score held out (train --folds 5)")
    if h.separated and h.median_gap is not None and h.median_gap < MIN_MEDIAN_GAP:
        found.append(f"samples are barely nearer their own class than the nearest other (median margin "
                     f"{h.median_gap:.0f}°): the classes overlap and the angles rank noise poorly; train longer or "
                     "with a larger backbone")
    return found
