"""Sources whose samples are image files: identity-folder trees and Parquet/CSV manifests."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from facecleaner.errors import InputError
from facecleaner.fileio import row_position
from facecleaner.manifests.io import ROW_GROUP_ROWS, open_stream
from facecleaner.sources.base import BASE_COLUMNS, no_rec_index

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".pgm", ".ppm", ".tif", ".tiff", ".gif"})


class FileSource:
    """Samples stored as files; ``path`` in the table is what the user wrote, resolved against ``root`` to open.

    The paths to open are one Arrow binary column (file-system bytes, so that names which are not UTF-8 still
    open), never a Python list: DataLoader workers forked from this process read them without copying, where a
    list's strings would be copied page by page into every worker as their reference counts change.
    The input's extra columns (a manifest's other columns) are not held: :attr:`extras` streams them when the
    scores are written.
    """

    def __init__(self, table: pd.DataFrame, paths: pa.Array | pa.ChunkedArray | Sequence[str], description: str,
                 root: Path, extras: ExtraColumns | None = None) -> None:
        self.root = root
        self._table = table
        self._root = os.fsencode(os.path.abspath(root))
        self._paths = _as_binary(paths)
        self.description = description
        self.extras = extras

    def table(self) -> pd.DataFrame:
        return self._table

    def read_bytes(self, index: int) -> bytes:
        with open(self._open_path(index), "rb") as handle:
            return handle.read()

    def resolved_path(self, index: int) -> str:
        """The absolute path of sample ``index`` (what exports link or copy)."""
        return os.fsdecode(self._open_path(index))

    def _open_path(self, index: int) -> bytes:
        """What to open for sample ``index``: its path joined to the root (an absolute path stays as it is);
        ``b""`` (which no file has) for a row without a path."""
        path = self._paths[index].as_py()
        return os.path.join(self._root, path) if path else b""


def _as_binary(paths: pa.Array | pa.ChunkedArray | Sequence[str]) -> pa.Array | pa.ChunkedArray:
    """Paths as Arrow binary: an Arrow string column is reinterpreted without a copy, Python strings are encoded
    the way the file system wants them (``os.fsencode`` keeps undecodable names)."""
    if isinstance(paths, pa.Array | pa.ChunkedArray):
        return pc.cast(paths, pa.large_binary() if pa.types.is_large_string(paths.type) else pa.binary())
    return pa.array([os.fsencode(p) for p in paths], type=pa.binary())


class ExtraColumns:
    """A manifest's columns besides path and label, read from the file only when the scores are written, in
    row order and in batches, so that no rank holds a wide column (a joined-in embedding) while it works."""

    def __init__(self, path: Path, names: list[str]) -> None:
        self.path = path
        self.names = names

    def batches(self) -> Iterator[pa.Table]:
        """The extra columns of consecutive rows, in batches of about BATCH_BYTES (a Parquet input) or slices of
        the whole columns (a CSV, whose column types come from the whole file)."""
        if self.path.suffix.lower() == ".parquet":
            reader, rows = open_stream(self.path)
            for batch in reader.iter_batches(batch_size=rows, columns=self.names):
                yield pa.Table.from_batches([batch])
            return
        frame = _read_csv_manifest(self.path, usecols=self.names)[self.names]
        table = pa.Table.from_pandas(frame, preserve_index=False)
        for start in range(0, table.num_rows, ROW_GROUP_ROWS):
            yield table.slice(start, ROW_GROUP_ROWS)


def open_identity_folders(root: Path) -> FileSource:
    """``<root>/<identity>/<image>``: one class per sub-folder, images sorted by name for a stable order."""
    paths: list[str] = []
    labels: list[str] = []
    for identity in sorted((entry for entry in os.scandir(root) if entry.is_dir()), key=lambda entry: entry.name):
        for dirpath, dirnames, filenames in os.walk(identity.path):
            dirnames.sort()
            for name in sorted(filenames):
                if Path(name).suffix.lower() in IMAGE_SUFFIXES:
                    paths.append(os.path.relpath(os.path.join(dirpath, name), root))
                    labels.append(_displayable(identity.name))
    if not paths:
        raise InputError(f"no images found under {root}",
                         "DATA must hold one folder per identity with image files inside (<root>/<identity>/<image>)")
    table = pd.DataFrame({"path": pd.array([_displayable(p) for p in paths], dtype="string"),
                          "rec_index": no_rec_index(len(paths)),
                          "label": pd.array(labels, dtype="string")})
    return FileSource(table, paths, f"identity folders at {root}", root)


def _integer_if_canonical(labels: pd.Series) -> pd.Series:
    """CSV labels become integers only when every one is written as an integer is ("7", "-3", never "007"):
    identity codes with leading zeros stay text, so "007" and "7" remain two identities."""
    text = labels.astype("string")
    given = text.dropna()
    if given.empty:
        return text
    if given.str.fullmatch(r"-?(0|[1-9][0-9]{0,17})").all():
        return text.astype("Int64")
    if given.str.fullmatch(r"-?[0-9]+(\.[0-9]*)?").all() and given.str.contains(".", regex=False).any():
        return text.astype("Float64")  # numbers with decimals: refused below as fractional labels
    return text


def _whole_float_labels(labels: pd.Series, path: Path) -> pd.Series:
    """Float labels that are all whole numbers (``3.0``: an integer column that once held a NaN) as integers;
    a fractional one is refused, since ``1.5`` names no identity."""
    values = labels.to_numpy(dtype=np.float64)
    fractional = ~np.isfinite(values) | (values != np.round(values)) | (np.abs(values) > 2.0 ** 53)
    if fractional.any():
        row = int(fractional.nonzero()[0][0])
        raise InputError(f"manifest {path} has a fractional label on {row_position(path, row)} "
                         f"({float(values[row])!r})",
                         "labels must be integers or strings")
    return pd.Series(values.astype(np.int64), index=labels.index).astype("Int64")


def _displayable(name: str) -> str:
    """A file name as UTF-8 text: bytes that are not UTF-8 (kept by Python as surrogates) become \\xNN escapes."""
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        return os.fsencode(name).decode("utf-8", "backslashreplace")


def open_manifest(path: Path) -> FileSource:
    """A Parquet or CSV manifest with ``path,label`` columns; relative paths resolve against its folder.

    Only those two columns are read now; the others are the input's extras, streamed from the file when the
    scores are written (:class:`ExtraColumns`)."""
    try:
        if path.suffix.lower() == ".parquet":
            schema = pq.read_schema(path)
            index = {c for c in (schema.pandas_metadata or {}).get("index_columns", []) if isinstance(c, str)}
            names = [n for n in schema.names if n not in index]  # a DataFrame's index saved with it is not data
            _require_columns(path, names)
            frame = pq.read_table(path, columns=["path", "label"]).to_pandas(types_mapper=_nullable_types)
        else:
            # Read whole, as a row with too many fields is refused only then; the extras are dropped here and
            # read again when the scores are written (CSV is not the format of the largest sets).
            frame = _read_csv_manifest(path)
            names = [str(c) for c in frame.columns]
            _require_columns(path, names)
            frame = frame[["path", "label"]].copy()
            frame["label"] = _integer_if_canonical(frame["label"])
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise InputError(f"cannot read manifest {path}: {exc}".splitlines()[0],
                         "give a Parquet or CSV file with columns path,label") from exc
    frame = frame.reset_index(drop=True)
    if frame.empty:
        raise InputError(f"manifest {path} has no rows", "give a manifest with at least one image")
    labels = frame["label"]
    if labels.isna().any():
        bad = int(labels.isna().to_numpy().nonzero()[0][0])
        raise InputError(f"manifest {path} has an empty label on {row_position(path, bad)} "
                         f"({int(labels.isna().sum())} rows in all)",
                         "give every row a label, or remove the unlabelled rows")
    if pd.api.types.is_float_dtype(labels.dtype):
        labels = _whole_float_labels(labels, path)
    if not pd.api.types.is_integer_dtype(labels.dtype):
        labels = labels.astype("string")
    raw_paths = frame["path"].astype("string")
    table = pd.DataFrame({"path": raw_paths,
                          "rec_index": no_rec_index(len(frame)),
                          "label": labels})
    extras = [c for c in names if c not in BASE_COLUMNS]
    return FileSource(table, pa.array(raw_paths), f"manifest {path}", _manifest_root(path),
                      ExtraColumns(path.absolute(), extras) if extras else None)


def _require_columns(path: Path, names: Sequence[str]) -> None:
    missing = [c for c in ("path", "label") if c not in names]
    if missing:
        raise InputError(f"manifest {path} has no column {', '.join(repr(c) for c in missing)} "
                         f"(columns: {', '.join(map(str, names))})",
                         "a manifest needs a 'path' column (image file) and a 'label' column (identity)")


def _read_csv_manifest(path: Path, **options: Any) -> pd.DataFrame:
    """A CSV manifest's columns as pandas reads them for us: path and label as text, empty fields missing,
    the other columns in the narrowest nullable type that holds them."""
    frame = pd.read_csv(path, dtype={"path": "string", "label": "string"}, keep_default_na=False, na_values=[""],
                        **options)
    return frame.convert_dtypes()


def _manifest_root(path: Path) -> Path:
    """Relative paths resolve against the manifest's folder, or, for a manifest facecleaner wrote, against
    the folder of the input it came from (so a clean manifest written elsewhere still finds its images)."""
    if path.suffix.lower() == ".parquet":
        raw = (pq.read_schema(path).metadata or {}).get(b"facecleaner")
        if raw:
            root = json.loads(raw).get("input_root")
            if root and Path(root).is_dir():
                return Path(root)
    return path.parent


def _nullable_types(arrow_type):  # noqa: ANN001 - pyarrow's types_mapper signature
    """Keep integer columns with nulls integer and strings as pandas strings when reading Parquet."""
    import pyarrow as pa

    if pa.types.is_integer(arrow_type):
        return pd.Int64Dtype()
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return pd.StringDtype()
    return None
