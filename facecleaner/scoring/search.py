"""The nearest *other* class of each sample: a top-(K+1) inner-product search over all sub-centers.

At most K of the K+1 best sub-centers belong to the sample's own class, so the best of the rest is the
nearest other class. On the CPU faiss does the search (blocked BLAS plus a heap: memory stays small with
hundreds of thousands of classes); on a GPU a chunked matmul in torch does the same exactly.
"""

from __future__ import annotations

import numpy as np
import torch

from facecleaner.scoring.angles import nearest_other_class


class OtherClassSearch:
    """Built once per scoring run from the unit sub-centers (C, K, D)."""

    def __init__(self, subcenters: torch.Tensor) -> None:
        self.subcenters = subcenters
        self.classes, self.per_class, dim = subcenters.shape
        self._index = None
        if subcenters.device.type == "cpu":
            import faiss

            self._index = faiss.IndexFlatIP(dim)
            self._index.add(np.ascontiguousarray(subcenters.reshape(-1, dim).numpy(), dtype=np.float32))

    def __call__(self, embeddings: torch.Tensor, classes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(nearest other class or -1, its cosine or -inf) for unit ``embeddings`` labelled ``classes``."""
        if self._index is None:
            return nearest_other_class(embeddings, self.subcenters, classes)
        k = min(self.per_class + 1, self.classes * self.per_class)
        cosines, ids = self._index.search(np.ascontiguousarray(embeddings.numpy(), dtype=np.float32), k)
        owner = ids // self.per_class
        other = owner != classes.numpy()[:, None]
        first = other.argmax(axis=1)
        rows = np.arange(len(owner))
        found = other[rows, first]
        best_class = np.where(found, owner[rows, first], -1)
        best_cos = np.where(found, cosines[rows, first], -np.inf).astype(np.float32)
        return torch.from_numpy(best_class.astype(np.int64)), torch.from_numpy(best_cos)
