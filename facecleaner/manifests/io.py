"""Write manifests atomically in row-group batches; read them back only if they are ours."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from facecleaner import __version__
from facecleaner.errors import InputError
from facecleaner.fileio import atomic_output
from facecleaner.manifests.schema import METADATA_KEY, SCHEMA_VERSION

ROW_GROUP_ROWS = 1 << 20


def manifest_metadata(kind: str, **fields: Any) -> dict[str, Any]:
    """The JSON stored under the ``facecleaner`` key: kind, versions, creation time, plus what the caller adds."""
    return {"kind": kind, "schema_version": SCHEMA_VERSION, "facecleaner_version": __version__,
            "created": datetime.now(UTC).isoformat(timespec="seconds"), **fields}


@contextlib.contextmanager
def manifest_writer(path: Path, schema: pa.Schema, metadata: dict[str, Any],
                    atomic: bool = True) -> Iterator[Callable[[pa.Table], None]]:
    """Yield ``write(table)`` appending row groups to ``path``, which appears (atomically) only on success.

    ``atomic=False`` writes ``path`` itself: for a temporary of :func:`facecleaner.fileio.atomic_outputs`, which
    publishes several files together.
    """
    schema = schema.with_metadata({**(schema.metadata or {}),
                                   METADATA_KEY: json.dumps(metadata, sort_keys=True).encode()})
    # Dictionary encoding pays for repeated strings (labels, status, reason) and is wasted work on unique
    # paths and floats; whole tables per call let row groups be ROW_GROUP_ROWS, not the reader's chunks.
    dictionary = [f.name for f in schema
                  if (pa.types.is_string(f.type) or pa.types.is_large_string(f.type)) and f.name != "path"]
    with (atomic_output(path) if atomic else contextlib.nullcontext(path)) as tmp, \
            pq.ParquetWriter(tmp, schema, compression="zstd", use_dictionary=dictionary) as writer:
        yield lambda table: writer.write_table(table.cast(schema), row_group_size=ROW_GROUP_ROWS)


def write_manifest(path: Path, table: pa.Table, metadata: dict[str, Any], atomic: bool = True) -> None:
    """Write ``table`` to ``path`` via a temporary file in the same folder (see :func:`manifest_writer`)."""
    with manifest_writer(path, table.schema, metadata, atomic) as write:
        write(table)


def read_metadata(path: Path) -> dict[str, Any]:
    """The ``facecleaner`` metadata of a Parquet file; InputError if it is missing or not Parquet."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path} does not exist", "give a manifest written by facecleaner")
    try:
        raw = pq.read_schema(path).metadata or {}
    except (pa.ArrowException, OSError) as exc:
        raise InputError(f"{path} is not a Parquet file", "give a manifest written by facecleaner") from exc
    if METADATA_KEY not in raw:
        raise InputError(f"{path} is not a facecleaner manifest (no '{METADATA_KEY.decode()}' metadata)",
                         "give a file written by `facecleaner score` or `facecleaner prune`")
    return json.loads(raw[METADATA_KEY])


def read_manifest(path: Path, kind: str, columns: list[str] | None = None) -> tuple[pa.Table, dict[str, Any]]:
    """Read a manifest of the expected ``kind`` (e.g. "scores"), checking the schema version."""
    meta = read_metadata(path)
    if meta.get("kind") != kind:
        raise InputError(f"{path} is a {meta.get('kind', 'unknown')} manifest, not a {kind} manifest",
                         f"give the {kind} file (e.g. the output of `facecleaner "
                         f"{'score' if kind == 'scores' else 'prune'}`)")
    if meta.get("schema_version") != SCHEMA_VERSION:
        raise InputError(f"{path} has manifest schema version {meta.get('schema_version')}, "
                         f"this facecleaner reads version {SCHEMA_VERSION}",
                         "rerun the step that wrote it with this version")
    return pq.read_table(path, columns=columns), meta


def sibling(path: Path, suffix: str) -> Path:
    """``clean.parquet`` → ``clean.classes.parquet``: the per-class table that sits beside a manifest."""
    path = Path(path)
    return path.with_name(f"{path.stem}.{suffix}.parquet")
