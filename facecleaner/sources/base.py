"""The Source protocol: every kind of DATA (identity folders, manifests, RecordIO) looks the same downstream.

A source is a table (one row per sample, in input order) plus a way to fetch one sample's encoded bytes.
Sources must be picklable and open file handles lazily, so that each DataLoader worker gets its own.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import pandas as pd
import pyarrow as pa

from facecleaner.errors import InputError, TooManyBadSamples

#: Columns every source table has, in this order; any further columns are the input's extras.
BASE_COLUMNS = ("path", "rec_index", "label")
#: How many unreadable samples the --max-bad-fraction abort names.
NAMED_UNREADABLE = 5


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


class SubsetSource:
    """Rows ``rows`` of another source, renumbered 0..len(rows)-1: what one model of held-out scoring
    (``train --folds``) trains on. Picklable like its source; its table is rebuilt in each process."""

    def __init__(self, source: Source, rows: np.ndarray) -> None:
        self.source = source
        self.rows = np.asarray(rows, dtype=np.int64)
        self.description = f"{source.description}, {len(self.rows)} of its samples"
        self._table: pd.DataFrame | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_table": None}

    def table(self) -> pd.DataFrame:
        if self._table is None:
            self._table = self.source.table().iloc[self.rows].reset_index(drop=True)
        return self._table

    def read_bytes(self, index: int) -> bytes:
        return self.source.read_bytes(int(self.rows[index]))


def no_rec_index(count: int) -> pd.arrays.IntegerArray:
    """The ``rec_index`` column of a source whose samples are files: ``count`` missing values."""
    return pd.arrays.IntegerArray(np.zeros(count, dtype=np.int64), np.ones(count, dtype=bool))


def table_fingerprint(table: pd.DataFrame) -> str:
    """A short, stable hash of what identifies the input: its paths/record indices and labels, as text.

    Hashed from the Arrow buffers (which rows are null, each value's length, the bytes), never value by value in
    Python: at 12M rows that is a second, not a quarter of a minute. Labels ``7`` and ``"7"`` hash alike."""
    digest = hashlib.sha256()
    for column in BASE_COLUMNS:
        text = arrow_column(table[column], lambda _: pa.large_string())
        offsets = np.frombuffer(text.buffers()[1], dtype=np.int64)[text.offset:text.offset + len(text) + 1]
        data = text.buffers()[2]
        for part in (text.is_valid().to_numpy(zero_copy_only=False).tobytes(), np.diff(offsets).tobytes(),
                     memoryview(data)[offsets[0]:offsets[-1]] if data is not None else b""):
            digest.update(hashlib.sha256(part).digest())  # validity, lengths, bytes
    return digest.hexdigest()[:16]


def matches_fingerprint(table: pd.DataFrame, recorded: object, fingerprint: str | None = None) -> bool:
    """Whether a run's ``recorded`` fingerprint is this table's (``fingerprint``, when already computed): today's
    hash, or the one facecleaner computed before it hashed Arrow buffers, so that a run started by an older
    version still resumes (and is recorded again with today's)."""
    if recorded == (fingerprint or table_fingerprint(table)):
        return True
    digest = hashlib.sha256()  # the older hash: pandas' per-value hash of each column as text
    for column in BASE_COLUMNS:
        digest.update(pd.util.hash_pandas_object(table[column].astype("string"), index=False).to_numpy().tobytes())
    return recorded == digest.hexdigest()[:16]


def arrow_column(column: pd.Series, wanted: Callable[[pa.DataType], pa.DataType]) -> pa.Array:
    """A table column as one Arrow array of type ``wanted(its type)``; cast as an Array, since casting a
    ChunkedArray of large strings to strings is hundreds of times slower (pyarrow 26)."""
    array = pa.array(column, from_pandas=True)
    array = array.combine_chunks() if isinstance(array, pa.ChunkedArray) else array
    return array.cast(wanted(array.type))


def sample_name(source: Source, index: int) -> str:
    """Where sample ``index`` is, as the user finds it: the file opened (relative paths already resolved against
    the manifest's folder), or ``record KEY of FILE.rec``."""
    if isinstance(source, SubsetSource):
        return sample_name(source.source, int(source.rows[index]))
    resolved_path = getattr(source, "resolved_path", None)
    if resolved_path is not None:
        return resolved_path(index)
    return f"record {source.table()['rec_index'].iloc[index]} of {getattr(source, 'rec_path', source.description)}"


def too_many_unreadable(source: Source, rows: Sequence[int], why: Callable[[int], str | None],
                        fraction: float) -> TooManyBadSamples:
    """The --max-bad-fraction abort of train and score: how many samples are unreadable, naming the first few
    of ``rows`` (ascending) with ``why(row)`` where it is known, so both commands name a sample the same way."""
    named = []
    for row in list(rows)[:NAMED_UNREADABLE]:
        reason = why(row)
        named.append(sample_name(source, row) + (f" ({reason})" if reason else ""))
    more = f" and {len(rows) - NAMED_UNREADABLE} more" if len(rows) > NAMED_UNREADABLE else ""
    return TooManyBadSamples(f"{len(rows)} of {len(source.table())} samples are unreadable (more than "
                             f"--max-bad-fraction {fraction}): {', '.join(named)}{more}",
                             "fix or remove the broken files, or raise --max-bad-fraction")


def check_decoding_options(batch_size: int, workers: int | None, max_bad_fraction: float, unit: str) -> None:
    """The API's own check of the options every command that decodes and embeds a set shares (score, eval), which
    the CLI's option types check too; a NaN fraction fails the comparison. ``unit`` names what may be unreadable."""
    if batch_size < 1:
        raise InputError(f"--batch-size {batch_size} must be at least 1", "give a positive batch size")
    if workers is not None and workers < 0:
        raise InputError(f"--workers {workers} must be 0 or more", "give 0 to decode in the main process")
    if not 0 <= max_bad_fraction <= 1:
        raise InputError(f"--max-bad-fraction {max_bad_fraction} must be between 0 and 1",
                         f"give the share of unreadable {unit} to tolerate, e.g. 0.01")
