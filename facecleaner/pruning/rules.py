"""The drop rule of Sub-center ArcFace, applied to whole columns at once.

Paper rule (default): drop every sample whose angle to its class's dominant sub-center is over the
threshold; samples nearest a non-dominant sub-center but within it are kept (as the reference drop
script does). ``drop_non_dominant`` also drops those. With ``angle_other`` (each sample's angle to the nearest
other class), a sample within the threshold but nearer another class than its own dominant sub-center — the
classic sign of a flipped label — is dropped too (reason ``other_class``). Classes left with fewer than
``min_images`` kept samples are dropped whole. A sample exactly at the threshold is kept; a readable sample
whose angle is not finite is dropped for its angle.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from facecleaner.manifests.schema import REASONS

#: The paper's threshold in degrees (70° → 95.91, 75° → 95.92, 80° → 95.74 IJB-C): prune's default, and the
#: median score warns above.
DEFAULT_ANGLE = 75.0
KEPT = -1
UNREADABLE, NON_DOMINANT, ANGLE, OTHER_CLASS, SMALL_CLASS = (
    REASONS.index(r) for r in ("unreadable", "non_dominant", "angle", "other_class", "small_class"))


@dataclass
class Decision:
    """Per sample: the reason code (index into REASONS, KEPT = -1) and the new contiguous label (-1 if dropped)."""

    reason: np.ndarray        # int8 (N,)
    new_label: np.ndarray     # int64 (N,)
    kept_per_class: np.ndarray  # int64 (C,)
    class_new_label: np.ndarray  # int64 (C,), -1 for dropped classes

    @property
    def keep(self) -> np.ndarray:
        return self.reason == KEPT


def decide(class_index: np.ndarray, readable: np.ndarray, is_dominant: np.ndarray, angle: np.ndarray,
           num_classes: int, threshold: float, drop_non_dominant: bool = False, min_images: int = 1,
           angle_other: np.ndarray | None = None) -> Decision:
    """Apply the rule; the first matching reason wins in the order unreadable, non_dominant, angle, other_class,
    small_class. ``angle_other`` given turns the other-class rule on (a NaN there — no other class — keeps)."""
    reason = np.full(len(class_index), KEPT, dtype=np.int8)
    reason[~readable] = UNREADABLE
    if drop_non_dominant:
        reason[(reason == KEPT) & ~is_dominant] = NON_DOMINANT
    # Only a finite angle within the threshold keeps a sample: NaN (a null, or a numeric failure) and ±inf drop.
    with np.errstate(invalid="ignore"):
        reason[(reason == KEPT) & ~(np.isfinite(angle) & (angle <= threshold))] = ANGLE
        if angle_other is not None:
            reason[(reason == KEPT) & (angle_other < angle)] = OTHER_CLASS
    kept_per_class = np.bincount(class_index[reason == KEPT], minlength=num_classes).astype(np.int64)
    small = kept_per_class < max(min_images, 1)
    reason[(reason == KEPT) & small[class_index]] = SMALL_CLASS
    kept_per_class[small] = 0
    class_new_label = np.full(num_classes, -1, dtype=np.int64)
    class_new_label[~small] = np.arange(int((~small).sum()), dtype=np.int64)
    new_label = np.where(reason == KEPT, class_new_label[class_index], -1)
    return Decision(reason, new_label, kept_per_class, class_new_label)
