"""What every export shares: the clean manifest read and checked, each row's image found, skips counted.

A row is an image file (``path``: absolute, or relative to the metadata's ``input_root`` when that is a
folder, else to the manifest's folder) or a record of a RecordIO pair (``path`` null, ``rec_index`` set,
``input_root`` = the source ``train.rec``). Rows whose image cannot be read are counted by reason, never fatal
unless no row at all can be exported.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from facecleaner.errors import InputError
from facecleaner.manifests.io import read_manifest
from facecleaner.manifests.schema import NEW_LABEL

LABEL_COLUMNS = (NEW_LABEL.name, "label")
#: Rows converted to Python objects at a time (keeps memory flat on manifests of millions of rows).
BATCH_ROWS = 1 << 16
#: Skip messages kept for the summary.
MAX_EXAMPLES = 5


class Sample(NamedTuple):
    """One manifest row, resolved: ``path`` is absolute (None for a record), ``rec_row`` its row in the .rec."""

    row: int
    label: Any
    path: str | None
    rec_index: int | None
    rec_row: int


def skip_reason(exc: BaseException) -> str:
    """``missing`` for a file or record that is not there, ``unreadable`` for anything else."""
    return "missing" if isinstance(exc, FileNotFoundError) else "unreadable"


@dataclass
class Tally:
    """What an export wrote and skipped; ``summary()`` is the common part of its JSON summary."""

    rows: int
    written: int = 0
    labels: set = field(default_factory=set)
    skipped: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def wrote(self, label: Any) -> None:
        self.written += 1
        self.labels.add(label)

    def skip(self, reason: str, message: str) -> None:
        self.skipped[reason] += 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(message)

    def require_some(self, manifest: Path) -> None:
        """InputError when nothing could be exported (the caller then removes what it started)."""
        if self.written == 0:
            reasons = ", ".join(f"{count} {reason}" for reason, count in sorted(self.skipped.items()))
            first = f"; first: {self.examples[0]}" if self.examples else ""
            raise InputError(f"none of the {self.rows} images of {manifest} could be exported ({reasons}{first})",
                             "check that the images (or the train.rec) the manifest points to are still in place")

    def summary(self) -> dict[str, Any]:
        return {"rows": self.rows, "written": self.written, "classes": len(self.labels),
                "skipped": sum(self.skipped.values()), "skipped_by_reason": dict(sorted(self.skipped.items())),
                "skipped_examples": list(self.examples)}


class ExportInput:
    """A clean manifest opened for export; ``close()`` releases the RecordIO handle, if any."""

    def __init__(self, manifest: Path, label_column: str) -> None:
        self.manifest = Path(manifest)
        self.label_column = label_column
        columns = ["path", "rec_index", label_column]
        try:
            table, self.meta = read_manifest(self.manifest, "clean", columns=columns)
        except pa.ArrowInvalid:  # a column is missing: say which
            names = pq.read_schema(self.manifest).names
            missing = [c for c in columns if c not in names]
            raise InputError(f"{self.manifest} has no column {', '.join(repr(c) for c in missing)}",
                             "give a clean manifest written by `facecleaner prune`") from None
        if table.num_rows == 0:
            raise InputError(f"{self.manifest} has no rows", "nothing was kept: prune with a looser rule")
        self.table = table.combine_chunks()
        labels = self.table[label_column]
        if labels.null_count:
            row = int(np.flatnonzero(labels.is_null().to_numpy(zero_copy_only=False))[0])
            raise InputError(f"{self.manifest} row {row} has no {label_column}",
                             "give a clean manifest written by `facecleaner prune`")
        is_record = pc.is_null(self.table["path"]).to_numpy(zero_copy_only=False)
        no_index = pc.is_null(self.table["rec_index"]).to_numpy(zero_copy_only=False)
        orphan = np.flatnonzero(is_record & no_index)
        if orphan.size:
            raise InputError(f"{self.manifest} row {int(orphan[0])} has neither a path nor a rec_index "
                             f"({orphan.size} such rows)", "give a clean manifest written by `facecleaner prune`")
        self.record_rows = int(is_record.sum())
        root = self.meta.get("input_root")
        base = Path(root) if root and Path(root).is_dir() else self.manifest.parent
        self.file_root = os.path.abspath(base)
        self.recordio = None
        self._rec_rows = np.full(len(self), -1, dtype=np.int64)
        if self.record_rows:
            self._open_recordio(root, is_record)

    def __len__(self) -> int:
        return self.table.num_rows

    @property
    def labels(self) -> pa.ChunkedArray:
        return self.table[self.label_column]

    def _open_recordio(self, root: str | None, is_record: np.ndarray) -> None:
        from facecleaner.sources.recordio import open_recordio

        if not root or not Path(root).is_file():
            raise InputError(f"{self.manifest} lists RecordIO records, but the train.rec they come from "
                             f"({root or 'not recorded'}) is not there",
                             "keep the train.rec/train.idx the scores were computed from at that path")
        self.recordio = open_recordio(root)
        keys = self.recordio.keys
        wanted = pc.fill_null(self.table["rec_index"], -1).to_numpy()
        position = np.minimum(np.searchsorted(keys, wanted), len(keys) - 1)
        found = is_record & (wanted >= 0) & (keys[position] == wanted)
        self._rec_rows = np.where(found, position, -1)

    def samples(self, order: np.ndarray | None = None) -> Iterator[Sample]:
        """Every row in manifest order, or in ``order`` (an array of row numbers)."""
        rows = np.arange(len(self), dtype=np.int64) if order is None else np.asarray(order, dtype=np.int64)
        for start in range(0, len(rows), BATCH_ROWS):
            chunk = rows[start:start + BATCH_ROWS]
            part = self.table.take(pa.array(chunk))
            paths = part["path"].to_pylist()
            indices = part["rec_index"].to_pylist()
            labels = part[self.label_column].to_pylist()
            rec_rows = self._rec_rows[chunk].tolist()
            for row, path, index, label, rec_row in zip(chunk.tolist(), paths, indices, labels, rec_rows,
                                                        strict=True):
                resolved = os.path.join(self.file_root, path) if path is not None else None
                yield Sample(row, label, resolved, None if path is not None else index, rec_row)

    def read_bytes(self, sample: Sample) -> bytes:
        """The encoded image of ``sample``; ``OSError`` (``FileNotFoundError`` when absent) otherwise."""
        if sample.path is not None:
            with open(sample.path, "rb") as handle:
                data = handle.read()
            where = sample.path
        elif sample.rec_row < 0:
            raise FileNotFoundError(f"record {sample.rec_index} is not in {self.recordio.rec_path}")
        else:
            data = self.recordio.read_bytes(sample.rec_row)
            where = f"record {sample.rec_index} of {self.recordio.rec_path}"
        if not data:
            raise OSError(f"{where} is empty")
        return data

    def describe(self, sample: Sample) -> str:
        """How a skip message names the sample."""
        return sample.path if sample.path is not None else f"record {sample.rec_index}"

    def close(self) -> None:
        if self.recordio is not None:
            self.recordio.close()


def integer_labels(inp: ExportInput, fmt: str, low: int | None = None, high: int | None = None) -> np.ndarray:
    """The chosen label column as int64 for formats that store class numbers.

    ``new_label`` always qualifies. The original ``label`` qualifies when it is an integer column or when
    every value is a plain decimal integer string (``"7"``, not ``"07"`` or ``"alice"``, so that two distinct
    labels never become one number); anything else is an InputError pointing to ``--label-column new_label``.
    """
    labels = inp.labels
    fix = "export with --label-column new_label (contiguous class numbers 0..C-1)"
    if pa.types.is_integer(labels.type):
        values = labels.to_numpy().astype(np.int64)
    elif pa.types.is_string(labels.type) or pa.types.is_large_string(labels.type):
        plain = pc.match_substring_regex(labels, r"^(0|-?[1-9][0-9]{0,17})$").to_numpy(zero_copy_only=False)
        if not plain.all():
            row = int(np.flatnonzero(~plain)[0])
            raise InputError(f"--format {fmt} stores integer class numbers, but {inp.manifest} has the "
                             f"{inp.label_column} {labels[row].as_py()!r} (row {row})", fix)
        values = pc.cast(labels, pa.int64()).to_numpy()
    else:
        raise InputError(f"--format {fmt} stores integer class numbers, but {inp.manifest}'s {inp.label_column} "
                         f"column is {labels.type}", fix)
    bad = np.zeros(len(values), dtype=bool)
    if low is not None:
        bad |= values < low
    if high is not None:
        bad |= values >= high
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise InputError(f"--format {fmt} needs class numbers in {low}..{high - 1}, but {inp.manifest} has the "
                         f"{inp.label_column} {int(values[row])} (row {row})", fix)
    return values
