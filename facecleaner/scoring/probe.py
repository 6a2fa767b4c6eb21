"""``train``'s guard: the finished model's health on part of its own training data, measured as ``score`` does.

The training loop only sees each sample's cosine to the *nearest* of its label's sub-centers, which flatters K = 3
against K = 1 on the same data. The guard instead scores whole classes in eval mode — the dominant sub-center vote
needs all of a class's samples — and judges them with :func:`facecleaner.scoring.health.assess`, the measure
``score`` records: one standard for every K. At most :data:`PROBE_SAMPLES` images are embedded, a few seconds
on a CPU.
"""

from __future__ import annotations

import numpy as np
import torch

from facecleaner.model.checkpoint import LoadedModel
from facecleaner.scoring.health import Health, assess
from facecleaner.scoring.measure import Measurements, measure_batches, summarize
from facecleaner.sources.base import Source
from facecleaner.sources.dataset import DecodedImages, index_batches

PROBE_SAMPLES = 20_000
PROBE_BATCH = 256


def probe_rows(class_index: np.ndarray, seed: int, limit: int = PROBE_SAMPLES) -> np.ndarray:
    """The samples of whole classes, drawn in a seeded random order until ``limit`` samples (at least one class)."""
    order = np.random.default_rng(seed).permutation(int(class_index.max()) + 1 if len(class_index) else 0)
    sizes = np.bincount(class_index, minlength=len(order))[order]
    taken = max(1, int(np.searchsorted(np.cumsum(sizes), limit, side="right")))
    return np.flatnonzero(np.isin(class_index, order[:taken]))


def probe_health(model: LoadedModel, source: Source, class_index: np.ndarray, device: torch.device, precision: str,
                 workers: int, seed: int) -> Health:
    """Score the samples of :func:`probe_rows` with ``model`` and assess the angles to their dominant sub-centers."""
    rows = probe_rows(class_index, seed)
    measured = Measurements.empty(len(class_index), model.spec.subcenters)
    for batch in measure_batches(model.backbone, model.head, DecodedImages(source, model.spec.image_size),
                                 class_index, device, precision, index_batches(rows, PROBE_BATCH), workers,
                                 progress=False):
        measured.fill(batch.arrays())
    scores = summarize(measured, class_index, len(model.spec.classes))
    readable = measured.readable
    return assess(scores.angle[readable], scores.angle_other[readable])
