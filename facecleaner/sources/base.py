"""The Source protocol: every kind of DATA (identity folders, manifests, RecordIO) looks the same downstream.

A source is a table (one row per sample, in input order) plus a way to fetch one sample's encoded bytes.
Sources must be picklable and open file handles lazily, so that each DataLoader worker gets its own.
"""

from __future__ import annotations

import hashlib
from typing import Protocol, runtime_checkable

import pandas as pd

#: Columns every source table has, in this order; any further columns are the input's extras.
BASE_COLUMNS = ("path", "rec_index", "label")


@runtime_checkable
class Source(Protocol):
    """Samples with identity labels; row ``i`` of :meth:`table` is sample ``i``."""

    description: str

    def table(self) -> pd.DataFrame:
        """Columns ``path`` (str or None), ``rec_index`` (Int64 or NA), ``label``, then extras."""
        ...

    def read_bytes(self, index: int) -> bytes:
        """The encoded image of sample ``index``; raises ``OSError`` when it cannot be read."""
        ...


def table_fingerprint(table: pd.DataFrame) -> str:
    """A short, stable hash of what identifies the input: its paths/record indices and labels."""
    digest = hashlib.sha256()
    for column in BASE_COLUMNS:
        values = pd.util.hash_pandas_object(table[column].astype("string"), index=False).to_numpy()
        digest.update(values.tobytes())
    return digest.hexdigest()[:16]
