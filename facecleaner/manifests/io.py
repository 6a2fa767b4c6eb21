"""Write manifests in row-group batches (atomically, alone or as a group); read them back, ours or edited.

A manifest facecleaner wrote carries JSON metadata under the ``facecleaner`` key; one a user filtered or
joined with pandas or duckdb does not, and is read all the same (its metadata is then ``{}``). A file that
still carries our metadata but of another ``kind`` (a scores file given to export) is refused.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from facecleaner import __version__
from facecleaner.errors import InputError
from facecleaner.fileio import atomic_output
from facecleaner.manifests.schema import METADATA_KEY, SCHEMA_VERSION

#: Rows per read batch and written row group are sized by bytes (a 128-d embedding column makes a row ~600 B,
#: a plain scores row ~60 B): this many uncompressed bytes per batch, in whole rows within the bounds below.
#: Measured on a prune of 2M 600-byte rows: 16–32 MiB cost the least CPU (larger batches add page faults) and
#: peak RSS grows by ~6× the budget (0.8 GiB at 32 MiB, 1.0 at 64, 2.0 at 256).
BATCH_BYTES = 32 << 20
#: The most rows per batch (the row-group size of narrow tables) and the fewest (however wide the rows).
ROW_GROUP_ROWS = 1 << 20
MIN_BATCH_ROWS = 1 << 10
_MAKERS = {"scores": "score", "clean": "prune", "dropped": "prune", "classes": "score` or `facecleaner prune"}


def new_run_id() -> str:
    """The id shared by every file one command invocation writes (uuid4 hex)."""
    return uuid.uuid4().hex


def manifest_metadata(kind: str, **fields: Any) -> dict[str, Any]:
    """The JSON stored under the ``facecleaner`` key: kind, versions, creation time, plus what the caller adds."""
    return {"kind": kind, "schema_version": SCHEMA_VERSION, "facecleaner_version": __version__,
            "created": datetime.now(UTC).isoformat(timespec="seconds"), **fields}


def rows_per_batch(bytes_per_row: float, budget: int | None = None) -> int:
    """How many rows of ``bytes_per_row`` (uncompressed) fill ``budget`` bytes (BATCH_BYTES by default), within
    MIN_BATCH_ROWS..ROW_GROUP_ROWS: what a reader's batches and a writer's row groups hold, so that wide tables
    are read and written in fewer rows."""
    budget = BATCH_BYTES if budget is None else budget
    rows = int(budget // bytes_per_row) if bytes_per_row > 0 else ROW_GROUP_ROWS
    return min(max(rows, MIN_BATCH_ROWS), ROW_GROUP_ROWS)


#: Bytes a streamed Parquet file reads at a time (its columns are read as they are decoded, never pre-buffered).
READ_BUFFER_BYTES = 1 << 20


def open_stream(path: Path) -> tuple[pq.ParquetFile, int]:
    """A Parquet file opened to be read batch by batch, and the rows per batch that keep a batch of all its
    columns near BATCH_BYTES. Pre-buffering is off: it would read every row group's columns before the first
    batch (the whole file, 6 GB for a 12M-row manifest with a 128-d column)."""
    source = pq.ParquetFile(path, pre_buffer=False, buffer_size=READ_BUFFER_BYTES)
    # The file's sizes are encoded ones: a repetitive string column is far wider once decoded, so a first small
    # batch is decoded too, and the wider of the two estimates taken.
    first = next(source.iter_batches(batch_size=MIN_BATCH_ROWS), None)
    decoded = first.nbytes / first.num_rows if first is not None and first.num_rows else 0.0
    return source, rows_per_batch(max(parquet_bytes_per_row(source.metadata), decoded))


def parquet_bytes_per_row(metadata: pq.FileMetaData) -> float:
    """A Parquet file's uncompressed bytes per row, from its row groups' sizes (0 when it has no rows)."""
    groups = [metadata.row_group(i) for i in range(metadata.num_row_groups)]
    rows = sum(group.num_rows for group in groups)
    return sum(group.total_byte_size for group in groups) / rows if rows else 0.0


@contextlib.contextmanager
def parquet_writer(path: Path, schema: pa.Schema, metadata: dict[str, Any],
                   row_group_rows: int | None = None) -> Iterator[Callable[[pa.Table], None]]:
    """Yield ``write(table)`` appending row groups straight to ``path`` (a temporary its caller publishes).

    Each table is written in row groups of at most ``row_group_rows`` rows; without it, :func:`rows_per_batch`
    of the first non-empty table's bytes per row, so that a wide table gets smaller row groups.
    """
    schema = schema.with_metadata({**(schema.metadata or {}),
                                   METADATA_KEY: json.dumps(metadata, sort_keys=True).encode()})
    # Dictionary encoding pays for repeated strings (labels, status, reason) and is wasted work on unique
    # paths and floats; whole tables per call let row groups be that size, not the reader's chunks.
    dictionary = [f.name for f in schema
                  if (pa.types.is_string(f.type) or pa.types.is_large_string(f.type)) and f.name != "path"]
    group_rows = row_group_rows

    with pq.ParquetWriter(path, schema, compression="zstd", use_dictionary=dictionary) as writer:
        def write(table: pa.Table) -> None:
            nonlocal group_rows
            if group_rows is None and table.num_rows:
                group_rows = rows_per_batch(table.nbytes / table.num_rows)
            writer.write_table(table.cast(schema), row_group_size=group_rows or ROW_GROUP_ROWS)

        yield write


@contextlib.contextmanager
def manifest_writer(path: Path, schema: pa.Schema, metadata: dict[str, Any],
                    row_group_rows: int | None = None) -> Iterator[Callable[[pa.Table], None]]:
    """Yield ``write(table)`` appending row groups (:func:`parquet_writer`) to ``path``, which appears
    (atomically) only on success."""
    with atomic_output(path) as tmp, parquet_writer(tmp, schema, metadata, row_group_rows) as write:
        yield write


def write_table(path: Path, table: pa.Table, metadata: dict[str, Any]) -> None:
    """Write ``table`` with ``metadata`` straight to ``path`` (a temporary its caller publishes)."""
    with parquet_writer(path, table.schema, metadata) as write:
        write(table)


def write_manifest(path: Path, table: pa.Table, metadata: dict[str, Any]) -> None:
    """Write ``table`` to ``path`` via a temporary file in the same folder."""
    with manifest_writer(path, table.schema, metadata) as write:
        write(table)


def parquet_info(path: Path) -> tuple[dict[str, Any] | None, pa.Schema, int]:
    """A Parquet file's ``facecleaner`` metadata (None when it has none), schema and row count.

    InputError when the file is missing, is not Parquet, or holds metadata under our key that is not a JSON
    object (it was damaged: nothing in it can be trusted).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path} does not exist", "give a manifest written by facecleaner")
    try:
        footer = pq.read_metadata(path)
        schema = footer.schema.to_arrow_schema()
    except (pa.ArrowException, OSError) as exc:
        raise InputError(f"{path} is not a Parquet file", "give a manifest written by facecleaner") from exc
    raw = (schema.metadata or {}).get(METADATA_KEY)
    if raw is None:
        return None, schema, footer.num_rows
    try:
        meta = json.loads(raw)
    except ValueError:
        meta = None
    if not isinstance(meta, dict):
        raise InputError(f"{path} has damaged '{METADATA_KEY.decode()}' metadata (not a JSON object)",
                         "rewrite the file without it (e.g. with pandas) or rerun the step that wrote it")
    return meta, schema, footer.num_rows


def read_metadata(path: Path) -> dict[str, Any]:
    """The ``facecleaner`` metadata of a Parquet file; InputError if it is missing or not Parquet."""
    meta, _, _ = parquet_info(path)
    if meta is None:
        raise InputError(f"{path} is not a facecleaner manifest (no '{METADATA_KEY.decode()}' metadata)",
                         "give a file written by `facecleaner score` or `facecleaner prune`")
    return meta


def check_kind(path: Path, meta: dict[str, Any], kind: str) -> None:
    """InputError unless our metadata says ``kind`` in the schema version this facecleaner reads."""
    if meta.get("kind") != kind:
        raise InputError(f"{path} is a {meta.get('kind', 'unknown')} manifest, not a {kind} manifest",
                         f"give the {kind} file (e.g. the output of `facecleaner {_MAKERS.get(kind, 'score')}`)")
    if meta.get("schema_version") != SCHEMA_VERSION:
        raise InputError(f"{path} has manifest schema version {meta.get('schema_version')}, "
                         f"this facecleaner reads version {SCHEMA_VERSION}",
                         "rerun the step that wrote it with this version")


def is_csv(path: Path) -> bool:
    return Path(path).suffix.lower() == ".csv"


def table_columns(path: Path, kind: str) -> tuple[list[str], dict[str, Any]]:
    """The column names of a Parquet or CSV table and its ``facecleaner`` metadata (``{}`` when absent).

    Our metadata of another ``kind`` is refused; a table without it is taken as the user's edit of one.
    """
    path = Path(path)
    if is_csv(path):
        return list(_read_csv(path, nrows=0).columns), {}
    meta, schema, _ = parquet_info(path)
    if meta is None:
        return schema.names, {}
    check_kind(path, meta, kind)
    return schema.names, meta


def read_columns(path: Path, columns: Sequence[str]) -> pa.Table:
    """``columns`` of a Parquet or CSV table; a CSV's values are all text (null where a field is empty)."""
    if is_csv(path):
        frame = _read_csv(path, usecols=list(columns))
        return pa.table({name: pa.Array.from_pandas(frame[name].astype(object), type=pa.string()) for name in columns})
    return pq.read_table(path, columns=list(columns))


def _read_csv(path: Path, **options: Any) -> Any:
    """A CSV as a DataFrame of text columns; an unreadable or malformed file is an InputError (pandas names the
    line). pandas is imported here, not for every Parquet reader."""
    import pandas as pd

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", pd.errors.ParserWarning)  # rows longer than the header
            return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""], index_col=False, **options)
    except (OSError, ValueError, pd.errors.ParserError, pd.errors.ParserWarning) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"cannot read {path} as CSV: {first}",
                         "give a Parquet file, or a CSV with a header line and one row per image") from exc


def sibling(path: Path, suffix: str) -> Path:
    """``clean.parquet`` → ``clean.classes.parquet``: the per-class table that sits beside a manifest."""
    path = Path(path)
    return path.with_name(f"{path.stem}.{suffix}.parquet")


def input_sibling(path: Path, suffix: str) -> Path:
    """The sibling of an input manifest: beside the file itself, also when ``path`` is a symlink to it (the
    ``classes`` file of ``link.parquet`` → ``data/scores.parquet`` is ``data/scores.classes.parquet``)."""
    path = Path(path)
    return sibling(Path(os.path.realpath(path)) if path.is_symlink() else path, suffix)
