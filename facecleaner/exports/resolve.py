"""What every export shares: the manifest read and checked, each row's image found, skips counted.

The manifest is a clean manifest written by ``prune`` or any Parquet or CSV table with a ``path`` column and
the label column (users filter and join manifests with pandas or duckdb, which drop our metadata). A row is
an image file (``path``: absolute, or relative to ``--root``, else to the metadata's ``input_root`` when that
is a folder, else to the manifest's folder) or a record of a RecordIO pair (``path`` null, ``rec_index`` set;
the source ``train.rec`` is ``--root`` or the metadata's ``input_root``). Rows whose image cannot be read are
counted by reason, never fatal unless no row at all can be exported.
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

from facecleaner.errors import InputError
from facecleaner.fileio import row_position
from facecleaner.manifests.io import is_csv, read_columns, table_columns
from facecleaner.manifests.validate import as_type, first, plain, require_columns

#: Rows converted to Python objects at a time (keeps memory flat on manifests of millions of rows).
BATCH_ROWS = 1 << 16
#: Skip messages kept for the summary.
MAX_EXAMPLES = 5
#: Text that is an integer written the one canonical way ("7", "-3"; not "07" or "+7"), so that two distinct
#: labels never become one number.
CANONICAL_INTEGER = r"^(0|-?[1-9][0-9]{0,17})$"


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
            example = f"; first: {self.examples[0]}" if self.examples else ""
            raise InputError(f"none of the {self.rows} images of {manifest} could be exported ({reasons}{example})",
                             "check that the images (or the train.rec) the manifest points to are still in place; "
                             "relative paths start from --root if given, else the input folder in the "
                             "manifest's metadata, else the manifest's folder")

    def summary(self) -> dict[str, Any]:
        return {"rows": self.rows, "written": self.written, "classes": len(self.labels),
                "skipped": sum(self.skipped.values()), "skipped_by_reason": dict(sorted(self.skipped.items())),
                "skipped_examples": list(self.examples)}


class ExportInput:
    """A manifest opened for export; ``close()`` releases the RecordIO handle, if any.

    ``meta`` is the manifest's facecleaner metadata, ``{}`` for a table without it; ``labels`` is the label
    column as int64 or text; ``root`` (``--root``) is the folder relative paths start from or, for RecordIO
    rows, the source ``train.rec``; ``kind`` the manifest kind our metadata must say (``report`` opens a
    scores manifest this way to draw its thumbnails).
    """

    def __init__(self, manifest: Path, label_column: str, root: Path | None = None, kind: str = "clean") -> None:
        self.manifest = Path(manifest)
        self.label_column = label_column
        if root is not None and not Path(root).exists():
            raise InputError(f"--root {root} does not exist",
                             "give the folder relative paths start from, or the train.rec of RecordIO rows")
        names, self.meta = table_columns(self.manifest, kind)
        require_columns(self.manifest, names, ["path"],
                        "export needs a 'path' column (image files; relative paths start from the manifest's "
                        "folder or --root) and the label column")
        if label_column not in names:
            raise InputError(f"{self.manifest} has no column {label_column!r} to take labels from",
                             _label_fix(label_column, names))
        has_index = "rec_index" in names
        table = read_columns(self.manifest, ["path", label_column] + (["rec_index"] if has_index else []))
        if table.num_rows == 0:
            raise InputError(f"{self.manifest} has no rows", "nothing was kept: prune with a looser rule")
        labels = self._label_array(table[label_column])
        paths = as_type(self.manifest, "path", table["path"], pa.string())
        indices = (as_type(self.manifest, "rec_index", table["rec_index"], pa.int64()) if has_index
                   else pa.nulls(table.num_rows, pa.int64()))
        self.table = pa.table({"path": paths, "rec_index": indices, label_column: labels}).combine_chunks()
        is_record = pc.is_null(self.table["path"]).to_numpy(zero_copy_only=False)
        orphan = np.flatnonzero(is_record & pc.is_null(self.table["rec_index"]).to_numpy(zero_copy_only=False))
        if orphan.size:
            raise InputError(f"{self.manifest} has neither a path nor a rec_index on {self.position(int(orphan[0]))} "
                             f"({orphan.size} such rows)", "give every row the image file it stands for")
        self.record_rows = int(is_record.sum())
        if root is not None and not Path(root).is_dir() and not self.record_rows:
            raise InputError(f"--root {root} is a file, and {self.manifest} lists image files, not RecordIO records",
                             "give the folder the manifest's relative paths start from")
        input_root = self.meta.get("input_root") if isinstance(self.meta.get("input_root"), str) else None
        folders = [p for p in (root, input_root) if p is not None and Path(p).is_dir()]
        self.file_root = os.path.abspath(folders[0] if folders else self.manifest.parent)
        self.recordio = None
        self._rec_rows = np.full(len(self), -1, dtype=np.int64)
        if self.record_rows:
            recs = [Path(p) for p in (root, input_root) if p is not None and Path(p).is_file()]
            self._open_recordio(recs[0] if recs else None, input_root, is_record)

    def _label_array(self, column: pa.ChunkedArray) -> pa.ChunkedArray:
        """The label column as int64 or text, without nulls; a CSV's canonical integers become int64, and so
        do the whole floats an integer column turns into when pandas meets a null."""
        labels = plain(column)
        if pa.types.is_floating(labels.type) or pa.types.is_integer(labels.type):
            labels = as_type(self.manifest, self.label_column, labels, pa.int64())
        else:
            labels = as_type(self.manifest, self.label_column, labels, pa.string())
            if is_csv(self.manifest) and pc.all(pc.match_substring_regex(labels, CANONICAL_INTEGER)).as_py():
                labels = labels.cast(pa.int64())
        missing = first(labels.is_null().to_numpy(zero_copy_only=False))
        if missing is not None:
            raise InputError(f"{self.manifest} has no {self.label_column} on {self.position(missing)} "
                             f"({labels.null_count} such rows)",
                             "give every row a label, or remove the unlabelled rows")
        return labels

    def position(self, row: int) -> str:
        """Where row ``row`` (0-based) is in the manifest, as a person counts: ``row N`` or a CSV's ``line N``."""
        return row_position(self.manifest, row)

    def __len__(self) -> int:
        return self.table.num_rows

    @property
    def labels(self) -> pa.ChunkedArray:
        return self.table[self.label_column]

    def _open_recordio(self, rec: Path | None, recorded: str | None, is_record: np.ndarray) -> None:
        from facecleaner.sources.recordio import open_recordio

        if rec is None:
            where = (f"the train.rec in its metadata ({recorded}) is not there" if recorded
                     else "no facecleaner metadata says which train.rec they come from")
            raise InputError(f"{self.manifest} lists {self.record_rows} RecordIO records (rows with a rec_index "
                             f"and no path), and {where}",
                             "give the train.rec they come from with --root PATH/TO/train.rec (its train.idx "
                             "beside it)")
        self.recordio = open_recordio(rec)
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

    An integer column qualifies, and so does text when every value is a plain decimal integer (``"7"``, not
    ``"07"`` or ``"alice"``, so that two distinct labels never become one number); anything else is an
    InputError pointing to ``--label-column new_label``.
    """
    labels = inp.labels
    fix = "export with --label-column new_label (contiguous class numbers 0..C-1)"
    if pa.types.is_integer(labels.type):
        values = labels.to_numpy().astype(np.int64)
    else:
        plain_text = pc.match_substring_regex(labels, CANONICAL_INTEGER).to_numpy(zero_copy_only=False)
        if not plain_text.all():
            row = int(np.flatnonzero(~plain_text)[0])
            raise InputError(f"--format {fmt} stores integer class numbers, but {inp.manifest} has the "
                             f"{inp.label_column} {labels[row].as_py()!r} ({inp.position(row)})", fix)
        values = pc.cast(labels, pa.int64()).to_numpy()
    bad = np.zeros(len(values), dtype=bool)
    if low is not None:
        bad |= values < low
    if high is not None:
        bad |= values >= high
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise InputError(f"--format {fmt} needs class numbers in {low}..{high - 1}, but {inp.manifest} has the "
                         f"{inp.label_column} {int(values[row])} ({inp.position(row)})", fix)
    return values


def _label_fix(label_column: str, names: list[str]) -> str:
    """Which --label-column to try instead: ``label`` when the table has it, else its columns."""
    if "label" in names and label_column != "label":
        return "export its original identities with --label-column label (or name another column)"
    shown = ", ".join(names[:12]) + (", …" if len(names) > 12 else "")
    return f"name the column that holds each row's identity with --label-column (its columns: {shown})"
