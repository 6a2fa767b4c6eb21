"""Identity labels → contiguous class indices, the same way in train and score.

Classes are ordered by sorted label (numbers numerically, strings by code point), so the mapping depends
only on the set of labels, never on row order.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from facecleaner.errors import InputError


def encode_labels(labels: pd.Series) -> tuple[np.ndarray, list]:
    """Return (class index per row as int32, the label of each class in class order)."""
    if labels.isna().any():
        row = int(np.flatnonzero(labels.isna().to_numpy())[0])
        raise InputError(f"label missing in row {row}", "give every sample an identity label")
    codes, uniques = pd.factorize(labels, sort=True)
    return codes.astype(np.int32), [_plain(v) for v in uniques.tolist()]


def lookup_labels(labels: pd.Series, classes: list) -> np.ndarray:
    """Class index of each row under a model's label map; -1 where the label is not one of its classes."""
    index = pd.Index(classes)
    if len(classes) and pd.api.types.is_integer_dtype(index.dtype) != pd.api.types.is_integer_dtype(labels.dtype):
        index = pd.Index([str(c) for c in classes])  # compare text with text: "7" is label 7
        labels = labels.astype("string")
    return index.get_indexer(labels).astype(np.int32)


def _plain(value: object) -> object:
    """numpy/pandas scalars → Python int/str, so label maps serialise to JSON and torch weights-only files."""
    if isinstance(value, (np.integer,)):
        return int(value)
    return value if isinstance(value, (int, str)) else str(value)
