"""The per-class table beside every manifest, built from per-row columns alone (no torch, no sorting).

``score`` and ``prune`` (which sees only the scores file) both build it here, so they always agree.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from facecleaner.manifests.schema import classes_schema


def first_rows(class_index: np.ndarray, size: int) -> np.ndarray:
    """Row of each class's first sample (``len(class_index)`` where absent), in O(n) without a sort.

    Scattering the row numbers in reverse leaves the smallest one: NumPy keeps the last write to an index.
    """
    first = np.full(size, len(class_index), dtype=np.int64)
    first[class_index[::-1]] = np.arange(len(class_index) - 1, -1, -1, dtype=np.int64)
    return first


def classes_table(class_index: np.ndarray, labels: pa.Array | pa.ChunkedArray, readable: np.ndarray,
                  nearest: np.ndarray, dominant_per_row: np.ndarray, subcenters: int,
                  kept_per_class: np.ndarray | None = None, class_new_label: np.ndarray | None = None) -> pa.Table:
    """One row per class present in the data (by class index): counts, dominant sub-center, votes."""
    size = int(class_index.max()) + 1 if len(class_index) else 0
    samples = np.bincount(class_index, minlength=size)
    present = np.flatnonzero(samples)
    first = first_rows(class_index, size)[present]
    readable_count = np.bincount(class_index[readable], minlength=size)[present]
    votes = np.bincount(class_index[readable].astype(np.int64) * subcenters + nearest[readable].astype(np.int64),
                        minlength=size * subcenters).reshape(size, subcenters)[present]
    flat = pa.array(votes.reshape(-1).astype(np.int64))
    offsets = pa.array(np.arange(0, len(flat) + 1, subcenters, dtype=np.int32))
    label_array = labels.take(pa.array(first))
    if isinstance(label_array, pa.ChunkedArray):
        label_array = label_array.combine_chunks()
    return pa.Table.from_arrays(
        [pa.array(present.astype(np.int32)), label_array, pa.array(samples[present].astype(np.int64)),
         pa.array(readable_count.astype(np.int64)), _optional(kept_per_class, present),
         pa.array(dominant_per_row[first].astype(np.int8)), pa.ListArray.from_arrays(offsets, flat),
         _optional(class_new_label, present)],
        schema=classes_schema(label_array.type))


def _optional(per_class: np.ndarray | None, present: np.ndarray) -> pa.Array:
    """An int64 column for the present classes, or all nulls when the caller has no such values yet."""
    if per_class is None:
        return pa.nulls(len(present), pa.int64())
    return pa.array(per_class[present].astype(np.int64))
