"""``--angle auto``: the threshold read from the scores themselves, as the valley between the clean and noise modes.

The paper's 75° fits a large model trained on millions of images (clean samples well inside 75°, noise near 90°).
A smaller model or set puts the clean mode elsewhere — and, with one sub-center per class, memorised noise too
(on real faces it sits near 60–70°, not 90°). What stays is the shape: a tall clean mode at small angles, a
lower noise mode further out, and a valley between them where the best fixed threshold lies. So:

1. the density of the angles is estimated on a 0.25° grid (a histogram smoothed with a Gaussian kernel, half of
   Silverman's bandwidth, at least 1°): linear in the number of samples, for millions of rows too;
2. every local minimum of the density right of the clean mode (the global maximum) gets a *depth*: the density
   there over the lower of the highest densities to its left and to its right. A valley between two modes has
   depth < 1; a dip in a tail or a plateau has a depth near 1;
3. the deepest point with at least :data:`MIN_NOISE_SHARE` of the samples beyond it, and a mode beyond it at
   least :data:`MIN_PEAK_RATIO` of the clean mode's height, is the threshold when its depth is under
   :data:`MAX_DEPTH` and it lies within :data:`MAX_ANGLE` (90°); otherwise the distribution shows no noise mode
   and the fallback (75°) is used, said so. A valley beyond 90° separates samples the model pushes *away* from
   their class from the rest — a mode of badly embedded images (clean ones too: on Extended Yale B, a K = 1
   model scoring held out puts the darkest images near 120°), not the noise an angle cut can tell apart.

``confidence`` is ``1 − depth``: 1 for modes separated by an empty gap, 0 when there is no valley. The estimated
noise share is the share of samples beyond the threshold. Chosen by ``benchmarks/noise_recovery.py`` over the
demo generator at three sizes, ORL and Extended Yale B, K = 1 and 3 (``benchmarks/RESULTS.md``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

GRID_STEP = 0.25
#: Bandwidth as a share of Silverman's rule (which, fitted to one Gaussian, over-smooths two modes).
BANDWIDTH_SHARE = 0.5
MIN_BANDWIDTH = 1.0
#: A valley shallower than this (density over the lower neighbouring mode) is not a gap between two modes.
MAX_DEPTH = 0.5
#: Fewer samples than this share beyond a valley are a tail, not a noise mode.
MIN_NOISE_SHARE = 0.01
#: A "mode" beyond the valley lower than this share of the clean mode is a bump in the tail.
MIN_PEAK_RATIO = 0.02
#: No threshold beyond orthogonal: there a sample is no nearer its class than to an unrelated direction.
MAX_ANGLE = 90.0


@dataclass(frozen=True)
class AutoThreshold:
    """What ``--angle auto`` chose and why: recorded in prune's summary and the manifests' metadata."""

    angle: float              # the threshold (degrees); the fallback when no noise mode was found
    noise_mode: bool          # whether a valley separating a noise mode was found
    noise_share: float | None  # share of the samples beyond the valley (None without a noise mode)
    confidence: float         # 1 − depth of the valley, in [0, 1]; 0 without a noise mode
    clean_mode: float         # where the angles are densest (degrees)
    bandwidth: float          # the smoothing used (degrees)
    note: str                 # one sentence for the user

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def angle_density(angles: np.ndarray, bandwidth: float) -> tuple[np.ndarray, np.ndarray]:
    """(grid, density) of ``angles`` in degrees: a 0.25° histogram over [0, 180] smoothed with a Gaussian."""
    grid = np.arange(0.0, 180.0 + GRID_STEP / 2, GRID_STEP)
    bins = np.clip(np.rint(angles / GRID_STEP).astype(np.int64), 0, len(grid) - 1)
    counts = np.bincount(bins, minlength=len(grid)).astype(np.float64)
    half = int(np.ceil(4 * bandwidth / GRID_STEP))
    offsets = np.arange(-half, half + 1) * GRID_STEP
    kernel = np.exp(-0.5 * (offsets / bandwidth) ** 2)
    density = np.convolve(counts, kernel / (kernel.sum() * GRID_STEP * max(len(angles), 1)), mode="same")
    return grid, density


def choose_threshold(angles: np.ndarray, fallback: float = 75.0) -> AutoThreshold:
    """The valley between the clean and noise modes of ``angles`` (readable samples' degrees to their dominant
    sub-center; NaN ignored), or ``fallback`` when the distribution shows no noise mode."""
    values = np.asarray(angles, dtype=np.float64)
    values = values[np.isfinite(values)]
    if len(values) < 2 or float(np.std(values)) == 0.0:
        return AutoThreshold(fallback, False, None, 0.0, float(np.median(values)) if len(values) else float("nan"),
                             MIN_BANDWIDTH, f"too few distinct angles to see a noise mode; using {fallback:g}°")
    bandwidth = max(MIN_BANDWIDTH, BANDWIDTH_SHARE * 1.06 * float(np.std(values)) * len(values) ** -0.2)
    grid, density = angle_density(values, bandwidth)
    clean = int(np.argmax(density))
    left_peak = np.maximum.accumulate(density)
    right_peak = np.append(np.maximum.accumulate(density[::-1])[::-1][1:], 0.0)
    beyond = 1.0 - np.searchsorted(np.sort(values), grid, side="right") / len(values)
    bottom = np.r_[False, (density[1:-1] <= density[:-2]) & (density[1:-1] <= density[2:]), False]
    candidate = ((np.arange(len(grid)) > clean) & bottom & (grid <= MAX_ANGLE) & (beyond >= MIN_NOISE_SHARE)
                 & (right_peak >= MIN_PEAK_RATIO * density[clean]))
    depth = np.full(len(grid), np.inf)
    depth[candidate] = density[candidate] / np.minimum(left_peak, right_peak)[candidate]
    best = int(np.argmin(depth))
    if not np.isfinite(depth[best]) or depth[best] >= MAX_DEPTH:
        return AutoThreshold(fallback, False, None, 0.0, float(grid[clean]), bandwidth,
                             f"the angles show no separate noise mode (no valley beyond the clean mode at "
                             f"{grid[clean]:.0f}°); using {fallback:g}°")
    angle = float(grid[best])
    share = float(np.mean(values > angle))
    return AutoThreshold(angle, True, share, float(1.0 - depth[best]), float(grid[clean]), bandwidth,
                         f"valley at {angle:.1f}° between the clean mode at {grid[clean]:.0f}° and a noise mode "
                         f"holding {share:.1%} of the samples")
