"""A torch Dataset over any Source: decoded uint8 images, never an exception for one bad sample.

Unreadable samples come back as a black image with ``ok = False`` and their reason kept by index, so a
long run records them and goes on; workers each open their own file handles (Sources open lazily).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from facecleaner.sources.base import Source
from facecleaner.sources.images import UnreadableImage, decode_and_resize

#: Decoded images kept in memory for later epochs when the whole set fits in this many bytes (per process).
MEMORY_CACHE_BYTES = 2 << 30

_NOT_CACHED, _CACHED, _CACHED_RESIZED = 0, 1, 2


class DecodedImages(Dataset):
    """Item ``i`` = (uint8 HWC tensor, ok flag, sample index, reason or "", resized from another size).

    With ``cache`` every readable image is decoded once and kept (uint8, ``image_size``² × 3 bytes each):
    on a small set trained in-process, decoding PNG/JPEG again each epoch costs as much as the model.
    Only for in-process loading; worker processes would each fill a copy of their own.
    """

    def __init__(self, source: Source, image_size: int, cache: bool = False) -> None:
        self.source = source
        self.image_size = image_size
        self._length = len(source.table())
        self._pixels: torch.Tensor | None = None
        self._state: np.ndarray | None = None  # per sample: _NOT_CACHED, _CACHED or _CACHED_RESIZED
        if cache:
            self._pixels = torch.empty((self._length, image_size, image_size, 3), dtype=torch.uint8)
            self._state = np.full(self._length, _NOT_CACHED, dtype=np.int8)

    def __len__(self) -> int:
        return self._length

    @staticmethod
    def memory_cache_bytes(samples: int, image_size: int) -> int:
        """Bytes the cache of ``samples`` decoded images of this size takes in one process."""
        return samples * image_size * image_size * 3

    @staticmethod
    def fits_memory_cache(samples: int, image_size: int, processes: int = 1) -> bool:
        """Whether ``samples`` decoded images of this size fit :data:`MEMORY_CACHE_BYTES` in each of
        ``processes`` processes (every rank of a job fills a whole copy over the epochs)."""
        return DecodedImages.memory_cache_bytes(samples, image_size) * processes <= MEMORY_CACHE_BYTES

    def __getitem__(self, index: int) -> tuple[torch.Tensor, bool, int, str, bool]:
        if self._state is not None and self._state[index] != _NOT_CACHED:
            # A copy, so that a caller writing into its image cannot change the cache.
            return self._pixels[index].clone(), True, index, "", bool(self._state[index] == _CACHED_RESIZED)
        try:
            pixels, resized = decode_and_resize(self.source.read_bytes(index), self.image_size)
            if self._state is not None:
                self._pixels[index] = torch.from_numpy(pixels)
                self._state[index] = _CACHED_RESIZED if resized else _CACHED
            return torch.from_numpy(pixels), True, index, "", resized
        except FileNotFoundError:
            reason = "missing file"
        except (UnreadableImage, OSError) as exc:
            reason = str(exc) or type(exc).__name__
        blank = np.zeros((self.image_size, self.image_size, 3), dtype=np.uint8)
        return torch.from_numpy(blank), False, index, reason, False


class BatchPlan:
    """The index batches a loader fetches on its next pass; replaced each epoch, so the loader (and its
    worker processes, which persist) can be built once per run."""

    def __init__(self, batches: list[list[int]] | None = None) -> None:
        self.batches = batches or []

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def batch_loader(dataset: DecodedImages, batches: list[list[int]] | BatchPlan, workers: int,
                 pin_memory: bool) -> DataLoader:
    """A DataLoader yielding the given index batches in order (the order is decided by the caller)."""
    return DataLoader(dataset, batch_sampler=batches, num_workers=workers, pin_memory=pin_memory,
                      persistent_workers=workers > 0, prefetch_factor=4 if workers > 0 else None)


def index_batches(order: np.ndarray | list[int], batch_size: int, drop_last: bool = False) -> list[list[int]]:
    """Split ``order`` into consecutive batches of ``batch_size`` (the last kept unless ``drop_last``)."""
    order = np.asarray(order, dtype=np.int64)
    stop = len(order) - len(order) % batch_size if drop_last and len(order) >= batch_size else len(order)
    return [order[i:i + batch_size].tolist() for i in range(0, stop, batch_size)]
