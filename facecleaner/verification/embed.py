"""Embed each distinct image of a pair list with a trained backbone, optionally with flip test-time augmentation.

Decoding, resizing and normalisation are score's (:class:`~facecleaner.sources.dataset.DecodedImages`,
:func:`~facecleaner.model.prepare_images`). With ``flip``, an image's embedding is the sum of the backbone's
outputs for the image and its mirror image, as insightface's verification does (normalised afterwards).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from facecleaner.model import prepare_images
from facecleaner.model.runtime import autocast, eval_mode, place_backbone
from facecleaner.progress import progress_bar
from facecleaner.scoring.measure import NON_FINITE
from facecleaner.sources.base import Source
from facecleaner.sources.dataset import DecodedImages, batch_loader, index_batches


@dataclass
class Embedded:
    embeddings: np.ndarray  # float32 (N, D), the raw (summed) outputs; zeros where unreadable
    readable: np.ndarray    # bool (N,)
    reasons: list[str]      # "" where readable


def embed_images(backbone: torch.nn.Module, images: Source, image_size: int, embedding_size: int,
                 device: torch.device, precision: str, batch_size: int, workers: int, flip: bool = True,
                 progress: bool = True) -> Embedded:
    """Run ``backbone`` in eval mode over every image of ``images``; an unreadable image, or one whose embedding is
    not finite, is recorded with its reason."""
    count = len(images.table())
    result = Embedded(np.zeros((count, embedding_size), dtype=np.float32), np.zeros(count, dtype=bool),
                      [""] * count)
    channels_last = place_backbone(backbone, device)
    loader = batch_loader(DecodedImages(images, image_size), index_batches(np.arange(count), batch_size), workers,
                          device.type == "cuda")
    with eval_mode(backbone), progress_bar(count, "embedding", progress) as bar:
        for pixels, ok, indices, why, _ in loader:
            rows = indices.numpy()
            for row, reason in zip(rows, why, strict=True):
                result.reasons[row] = reason
            good = np.flatnonzero(ok.numpy())
            if len(good):
                batch = pixels[torch.from_numpy(good)]
                with autocast(device, precision):
                    embedded = backbone(prepare_images(batch, device, channels_last)).float()
                    if flip:  # NHWC: mirror the width axis
                        embedded = embedded + backbone(prepare_images(batch.flip(2), device, channels_last)).float()
                values = embedded.cpu().numpy()
                finite = np.isfinite(values).all(axis=1)
                result.embeddings[rows[good[finite]]] = values[finite]
                result.readable[rows[good[finite]]] = True
                for row in rows[good[~finite]]:
                    result.reasons[row] = NON_FINITE
            bar.update(len(rows))
    return result
