"""How well a drop decision matches known noise: the figures the demo and the benchmarks report."""

from __future__ import annotations

import numpy as np


def detection_metrics(dropped: np.ndarray, is_noise: np.ndarray) -> dict[str, float]:
    """Precision, recall and F1 of ``dropped`` as a detector of ``is_noise``, plus the share of clean kept."""
    dropped = np.asarray(dropped, dtype=bool)
    is_noise = np.asarray(is_noise, dtype=bool)
    true_positive = int((dropped & is_noise).sum())
    precision = true_positive / max(int(dropped.sum()), 1)
    recall = true_positive / max(int(is_noise.sum()), 1)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    clean = ~is_noise
    return {"precision": precision, "recall": recall, "f1": f1,
            "clean_kept": float((~dropped & clean).sum() / max(int(clean.sum()), 1)),
            "dropped": int(dropped.sum()), "noise": int(is_noise.sum())}


def kept_detection_metrics(kept: np.ndarray, is_noise: np.ndarray) -> dict[str, float]:
    """:func:`detection_metrics` of a clean manifest, given by its kept ``sample_id`` values: every other row
    of the input was dropped."""
    dropped = np.ones(len(is_noise), dtype=bool)
    dropped[np.asarray(kept, dtype=np.int64)] = False
    return detection_metrics(dropped, is_noise)
