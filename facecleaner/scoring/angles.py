"""Pure geometry on unit vectors: cosines to sub-centers, the dominant sub-center vote, angles in degrees.

Everything works on torch tensors batch by batch (CPU or GPU); the vote runs once over all samples.
"""

from __future__ import annotations

import numpy as np
import torch


def to_degrees(cosine: np.ndarray) -> np.ndarray:
    """Angle in degrees (float32) of cosines, computed in float64 and clamped into [-1, 1] first so rounding never
    yields NaN. NumPy, not torch: the merge of ``score`` calls it on long columns part after part, where waking
    torch's thread pool each time cost more than the arithmetic."""
    return np.degrees(np.arccos(np.clip(np.asarray(cosine, dtype=np.float64), -1.0, 1.0))).astype(np.float32)


def own_class_cosines(embeddings: torch.Tensor, subcenters: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """cos(x_i, W[y_i, k]) for each k: (B, K), from unit embeddings (B, D) and sub-centers (C, K, D)."""
    return torch.einsum("bd,bkd->bk", embeddings, subcenters[classes])


def dominant_subcenters(nearest: np.ndarray, classes: np.ndarray, num_classes: int,
                        subcenters: int) -> tuple[np.ndarray, np.ndarray]:
    """Majority vote per class: the sub-center most of its samples are nearest to.

    ``nearest``/``classes`` hold only the samples that count (readable ones). Ties go to the lowest
    sub-center index, so the result is deterministic. Returns (dominant per class, votes (C, K)).
    """
    votes = np.bincount(classes.astype(np.int64) * subcenters + nearest.astype(np.int64),
                        minlength=num_classes * subcenters).reshape(num_classes, subcenters)
    return votes.argmax(axis=1).astype(np.int8), votes
