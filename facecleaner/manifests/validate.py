"""Columns read as the types facecleaner needs, checked before any decision is made on them.

Manifests come back edited: filtered or joined with pandas or duckdb, concatenated, retyped (an integer
column with a null becomes float), null-filled. Every check here ends in an InputError naming the file, the
column and the first bad row (counted from 1; a CSV's file line), never in an exception from deep inside.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from facecleaner.errors import InputError
from facecleaner.fileio import row_position
from facecleaner.manifests.io import is_csv, read_columns, table_columns
from facecleaner.manifests.schema import SCORE_FIELDS, STATUS_OK

#: The scores columns prune decides from; every other column is streamed through untouched.
DECISION_COLUMNS = ("class_index", "label", "status", "is_dominant", "angle", "nearest_subcenter",
                    "dominant_subcenter")
_RESCORE = "rescore the data with `facecleaner score`, or repair the column"
_CAST_ERRORS = (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError)


def require_columns(path: Path, names: Sequence[str], wanted: Sequence[str], fix: str) -> None:
    """InputError naming every column of ``wanted`` that ``names`` lacks."""
    missing = [c for c in wanted if c not in names]
    if missing:
        raise InputError(f"{path} has no column {', '.join(repr(c) for c in missing)}", fix)


def plain(column: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """The column with dictionary encoding (pandas categoricals) decoded; chunks stay as they are, uncopied."""
    if pa.types.is_dictionary(column.type):
        return pc.cast(column, column.type.value_type)
    return column


def as_type(path: Path, name: str, column: pa.Array | pa.ChunkedArray,
            type_: pa.DataType) -> pa.Array | pa.ChunkedArray:
    """``column`` cast to ``type_`` without losing anything; InputError naming the first value that does not fit."""
    array = plain(column)
    if array.type == type_:
        return array
    try:
        return pc.cast(array, type_, safe=True)
    except pa.ArrowNotImplementedError:
        raise InputError(f"{path}'s {name} column holds {array.type}, which cannot be read as {type_}",
                         _RESCORE) from None
    except _CAST_ERRORS:
        pass
    low, high = 0, len(array)  # the first value that fails: the shortest failing prefix, by bisection
    while high - low > 1:
        middle = (low + high) // 2
        try:
            pc.cast(array.slice(low, middle - low), type_, safe=True)
            low = middle
        except _CAST_ERRORS:
            high = middle
    raise InputError(f"{path}'s {name} on {row_position(path, low)} is {array[low].as_py()!r}, "
                     f"which is not a {type_} value", _RESCORE)


def first(mask: np.ndarray) -> int | None:
    """The first index where ``mask`` holds, or None."""
    hits = np.flatnonzero(mask)
    return int(hits[0]) if hits.size else None


def require_values(path: Path, name: str, array: pa.Array | pa.ChunkedArray, where: np.ndarray | None = None,
                   why: str = "") -> None:
    """InputError at the first null of ``array`` (among the rows ``where`` selects, when given)."""
    if not array.null_count:
        return
    missing = array.is_null().to_numpy(zero_copy_only=False)
    row = first(missing if where is None else missing & where)
    if row is not None:
        raise InputError(f"{path} has an empty {name} on {row_position(path, row)}{why}", _RESCORE)


def require_range(path: Path, name: str, values: np.ndarray, high: int | None, source: str = "") -> None:
    """InputError at the first value outside ``0..high-1`` (below 0 when ``high`` is unknown)."""
    outside = values < 0 if high is None else (values < 0) | (values >= high)
    row = first(outside)
    if row is not None:
        span = "below 0" if high is None else f"outside 0..{high - 1}{source}"
        raise InputError(f"{path} has {name} {int(values[row])} on {row_position(path, row)}, {span}", _RESCORE)


def meta_count(meta: dict[str, Any], *keys: str) -> int | None:
    """A positive integer from nested metadata (``meta[k1][k2]…``), or None when absent or not one."""
    value: Any = meta
    for key in keys:
        value = value.get(key) if isinstance(value, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


@dataclass
class ScoreColumns:
    """The decision columns of a scores table, validated, in the scores schema's types (int32 classes, int8
    sub-centers, float32 angles: the copies stay as small as the file's own columns)."""

    class_index: np.ndarray  # int32 (N,), in 0..num_classes-1
    labels: pa.Array | pa.ChunkedArray
    readable: np.ndarray  # bool: status is "ok"
    is_dominant: np.ndarray  # bool, False where null
    angle: np.ndarray  # float32, NaN where null
    nearest: np.ndarray  # int8, in 0..subcenters-1 (0 where not readable)
    dominant: np.ndarray  # int8, in 0..subcenters-1
    num_classes: int
    subcenters: int
    angle_other: np.ndarray | None = None  # float32, NaN where null; read only for the other-class rule


def read_scores(path: Path, other_class: bool = False) -> tuple[ScoreColumns, dict[str, Any]]:
    """The decision columns of a scores table, ours or edited (then class and sub-center counts come from
    the data), with the metadata (``{}`` without ours); InputError at the first thing that is not right.
    ``other_class`` also reads ``angle_other`` (the other-class rule needs it)."""
    path = Path(path)
    if is_csv(path):  # prune streams the rows through: it needs the column types a Parquet file keeps
        raise InputError(f"{path} is a CSV file; prune reads scores as Parquet",
                         "write it as Parquet, e.g. pandas.read_csv(path).to_parquet('scores.parquet')")
    names, meta = table_columns(path, "scores")
    wanted = DECISION_COLUMNS + (("angle_other",) if other_class else ())
    require_columns(path, names, wanted,
                    f"give a scores manifest written by `facecleaner score` (prune needs the columns "
                    f"{', '.join(wanted)})")
    table = read_columns(path, wanted)
    types = {f.name: f.type for f in SCORE_FIELDS}
    status = as_type(path, "status", table["status"], pa.string())
    require_values(path, "status", status)
    readable = pc.equal(status, STATUS_OK).to_numpy(zero_copy_only=False)
    labels = plain(table["label"])
    require_values(path, "label", labels)
    integers = {}
    for name in ("class_index", "nearest_subcenter", "dominant_subcenter"):
        array = as_type(path, name, table[name], types[name])
        require_values(path, name, array, readable if name == "nearest_subcenter" else None,
                       ", whose status is ok" if name == "nearest_subcenter" else "")
        integers[name] = pc.fill_null(array, 0).to_numpy()
    num_classes = meta_count(meta, "num_classes")
    require_range(path, "class_index", integers["class_index"], num_classes,
                  f" (the {num_classes} classes in its metadata)" if num_classes else "")
    subcenters = meta_count(meta, "model", "subcenters")
    for name in ("nearest_subcenter", "dominant_subcenter"):
        require_range(path, name, integers[name], subcenters,
                      f" (the model's {subcenters} sub-centers)" if subcenters else "")
    angle = as_type(path, "angle", table["angle"], types["angle"])
    angle_other = as_type(path, "angle_other", table["angle_other"], types["angle_other"]) if other_class else None
    is_dominant = as_type(path, "is_dominant", table["is_dominant"], types["is_dominant"])
    class_index = integers["class_index"]
    return ScoreColumns(
        class_index=class_index, labels=labels, readable=readable,
        is_dominant=pc.fill_null(is_dominant, False).to_numpy(zero_copy_only=False),
        angle=pc.fill_null(angle, np.nan).to_numpy(zero_copy_only=False),
        angle_other=None if angle_other is None else pc.fill_null(angle_other, np.nan).to_numpy(zero_copy_only=False),
        nearest=integers["nearest_subcenter"], dominant=integers["dominant_subcenter"],
        num_classes=num_classes or (int(class_index.max()) + 1 if len(class_index) else 0),
        subcenters=subcenters or int(max(integers["nearest_subcenter"].max(initial=0),
                                         integers["dominant_subcenter"].max(initial=0))) + 1), meta
