"""Verification metrics on pair distances (pure numpy, float64).

The distance is insightface's: the squared L2 distance between unit embeddings (0 … 4; ``2 − 2·cos``), and a
pair is predicted "same" when its distance is *below* the threshold. The accuracy protocol is the standard one
of LFW, CFP-FP and AgeDB-30 as insightface's ``verification.py`` runs it: the pairs are split into 10 folds
(in order, as scikit-learn's unshuffled ``KFold``, unless the pair list gives folds), and each fold is scored at
the threshold of the grid ``0, 0.01, …, 3.99`` that is most accurate on the other nine (the first such one);
the accuracy is the mean over folds, ± their (population) standard deviation.

TPR at FPR ``f`` is read on all pairs at once from the exact ROC: the highest share of matched pairs accepted
while at most ``floor(f · negatives)`` mismatched pairs are. With fewer than ``1/f`` mismatched pairs no threshold
can show that rate, and it is reported as ``None`` rather than as the TPR at FPR 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: insightface's threshold grid for the k-fold accuracy (squared L2 distance between unit embeddings).
THRESHOLDS = np.arange(0, 4, 0.01)
#: The false-positive rates at which TPR is reported.
FPR_TARGETS = (1e-3, 1e-4)
DEFAULT_FOLDS = 10


def unit_rows(embeddings: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm, in float64 (a zero row stays zero)."""
    values = np.asarray(embeddings, dtype=np.float64)
    norms = np.linalg.norm(values, axis=1, keepdims=True)
    return values / np.maximum(norms, 1e-12)


def squared_distances(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Squared L2 distance between matching rows of two sets of unit embeddings."""
    return np.sum(np.square(np.asarray(first, np.float64) - np.asarray(second, np.float64)), axis=1)


def distance_to_degrees(distance: float) -> float:
    """The angle between two unit vectors at this squared L2 distance (``d = 2 − 2·cos θ``)."""
    return math.degrees(math.acos(min(1.0, max(-1.0, 1.0 - distance / 2.0))))


def contiguous_folds(count: int, folds: int = DEFAULT_FOLDS) -> np.ndarray:
    """Each pair's fold when ``count`` pairs are split in order into ``folds`` parts, the first ``count % folds``
    one pair longer (scikit-learn's ``KFold(shuffle=False)``)."""
    if not 2 <= folds <= count:
        raise ValueError(f"cannot split {count} pairs into {folds} folds")
    sizes = np.full(folds, count // folds, dtype=np.int64)
    sizes[: count % folds] += 1
    return np.repeat(np.arange(folds, dtype=np.int64), sizes)


def accuracies(distance: np.ndarray, same: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Accuracy at every threshold (predict same when ``distance < threshold``), by counting in sorted order."""
    distance = np.asarray(distance, np.float64)
    same = np.asarray(same, bool)
    positives, negatives = np.sort(distance[same]), np.sort(distance[~same])
    accepted_positives = np.searchsorted(positives, thresholds, side="left")
    accepted_negatives = np.searchsorted(negatives, thresholds, side="left")
    return (accepted_positives + len(negatives) - accepted_negatives) / len(distance)


@dataclass
class FoldResult:
    accuracies: np.ndarray   # float64 (F,): each fold's accuracy at the threshold of the others
    thresholds: np.ndarray   # float64 (F,): that threshold


def kfold_accuracy(distance: np.ndarray, same: np.ndarray, folds: np.ndarray,
                   thresholds: np.ndarray = THRESHOLDS) -> FoldResult:
    """Each fold scored at the threshold that is most accurate on all the other folds."""
    distance = np.asarray(distance, np.float64)
    same = np.asarray(same, bool)
    folds = np.asarray(folds)
    results, chosen = [], []
    for fold in np.unique(folds):
        test = folds == fold
        best = thresholds[int(np.argmax(accuracies(distance[~test], same[~test], thresholds)))]
        chosen.append(best)
        results.append(accuracies(distance[test], same[test], np.array([best]))[0])
    return FoldResult(np.array(results), np.array(chosen, dtype=np.float64))


@dataclass
class Roc:
    """The exact ROC: point ``i`` accepts every pair with ``distance <= thresholds[i]`` (point 0 accepts none)."""

    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray

    @property
    def auc(self) -> float:
        return float(np.sum(np.diff(self.fpr) * (self.tpr[1:] + self.tpr[:-1]) / 2))


def roc_curve(distance: np.ndarray, same: np.ndarray) -> Roc:
    """TPR and FPR at every distinct distance, ties taken together."""
    distance = np.asarray(distance, np.float64)
    same = np.asarray(same, bool)
    order = np.argsort(distance, kind="stable")
    sorted_distance, sorted_same = distance[order], same[order]
    last = np.flatnonzero(np.r_[np.diff(sorted_distance) != 0, True])  # the last pair of each distinct distance
    true_positives = np.cumsum(sorted_same)[last]
    false_positives = np.cumsum(~sorted_same)[last]
    tpr = np.r_[0.0, true_positives / max(int(same.sum()), 1)]
    fpr = np.r_[0.0, false_positives / max(int((~same).sum()), 1)]
    return Roc(fpr, tpr, np.r_[-np.inf, sorted_distance[last]])


@dataclass
class RateAt:
    tpr: float | None        # None when the FPR cannot be resolved with this many mismatched pairs
    threshold: float | None  # accept pairs with distance below this
    needs_negatives: int     # how many mismatched pairs resolving the FPR takes


def tpr_at_fpr(distance: np.ndarray, same: np.ndarray, target: float) -> RateAt:
    """The highest TPR over thresholds whose FPR is at most ``target``."""
    distance = np.asarray(distance, np.float64)
    same = np.asarray(same, bool)
    negatives = np.sort(distance[~same])
    needs = math.ceil(1 / target - 1e-9)
    allowed = math.floor(target * len(negatives) + 1e-9)  # false accepts allowed
    if allowed < 1:
        return RateAt(None, None, needs)
    if allowed >= len(negatives):
        return RateAt(1.0, math.inf, needs)
    threshold = float(negatives[allowed])  # accepts the negatives strictly below it: at most `allowed` of them
    return RateAt(float(np.mean(distance[same] < threshold)), threshold, needs)


def fpr_key(target: float) -> str:
    """``1e-3`` for 0.001: how summaries name an FPR."""
    return f"{target:.0e}".replace("e-0", "e-")
