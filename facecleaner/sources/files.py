"""Sources whose samples are image files: identity-folder trees and Parquet/CSV manifests."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from facecleaner.errors import InputError
from facecleaner.fileio import row_position
from facecleaner.sources.base import BASE_COLUMNS

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".pgm", ".ppm", ".tif", ".tiff", ".gif"})


class FileSource:
    """Samples stored as files; ``path`` in the table is what the user wrote, ``_resolved`` what we open."""

    def __init__(self, table: pd.DataFrame, resolved: list[str], description: str, root: Path) -> None:
        self.root = root
        self._table = table
        self._resolved = resolved
        self.description = description

    def table(self) -> pd.DataFrame:
        return self._table

    def read_bytes(self, index: int) -> bytes:
        with open(self._resolved[index], "rb") as handle:
            return handle.read()

    def resolved_path(self, index: int) -> str:
        """The absolute path of sample ``index`` (what exports link or copy)."""
        return self._resolved[index]


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
                          "rec_index": pd.array([None] * len(paths), dtype="Int64"),
                          "label": pd.array(labels, dtype="string")})
    resolved = [os.path.join(root, p) for p in paths]
    return FileSource(table, resolved, f"identity folders at {root}", root)


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
    """A Parquet or CSV manifest with ``path,label`` columns; relative paths resolve against its folder."""
    try:
        if path.suffix.lower() == ".parquet":
            frame = pq.read_table(path).to_pandas(types_mapper=_nullable_types)
        else:
            frame = pd.read_csv(path, dtype={"path": "string", "label": "string"}, keep_default_na=False,
                                na_values=[""])
            frame = frame.convert_dtypes()
            if "label" in frame.columns:
                frame["label"] = _integer_if_canonical(frame["label"])
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise InputError(f"cannot read manifest {path}: {exc}".splitlines()[0],
                         "give a Parquet or CSV file with columns path,label") from exc
    frame = frame.reset_index(drop=True)  # a Parquet file written from a filtered DataFrame keeps its index
    missing = [c for c in ("path", "label") if c not in frame.columns]
    if missing:
        raise InputError(f"manifest {path} has no column {', '.join(repr(c) for c in missing)} "
                         f"(columns: {', '.join(map(str, frame.columns))})",
                         "a manifest needs a 'path' column (image file) and a 'label' column (identity)")
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
    base = _manifest_root(path)
    raw_paths = frame["path"].astype("string")
    resolved = [os.path.join(base, p) if isinstance(p, str) else "" for p in raw_paths.tolist()]
    table = pd.DataFrame({"path": raw_paths,
                          "rec_index": pd.array([None] * len(frame), dtype="Int64"),
                          "label": labels.reset_index(drop=True)})
    extras = [c for c in frame.columns if c not in BASE_COLUMNS]
    for column in extras:
        table[column] = frame[column].reset_index(drop=True)
    return FileSource(table, resolved, f"manifest {path}", base)


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
