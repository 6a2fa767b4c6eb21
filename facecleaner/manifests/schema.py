"""The manifest schemas, declared once. Bump SCHEMA_VERSION whenever a column changes meaning or type."""

from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = 1
METADATA_KEY = b"facecleaner"

KINDS = ("scores", "clean", "dropped", "classes")

#: The scores manifest's own columns, in order; ``label``'s type follows the input (string or int64),
#: and the input's extra columns follow ``status``.
SCORE_FIELDS = (
    pa.field("sample_id", pa.int64(), nullable=False),
    pa.field("path", pa.string()),
    pa.field("rec_index", pa.int64()),
    pa.field("label", pa.string()),
    pa.field("class_index", pa.int32()),
    pa.field("nearest_subcenter", pa.int8()),
    pa.field("dominant_subcenter", pa.int8()),
    pa.field("is_dominant", pa.bool_()),
    pa.field("angle", pa.float32()),
    pa.field("angle_nearest", pa.float32()),
    pa.field("nearest_other_class", pa.int32()),
    pa.field("angle_other", pa.float32()),
    pa.field("status", pa.string(), nullable=False),
)
SCORE_COLUMNS = tuple(f.name for f in SCORE_FIELDS)

NEW_LABEL = pa.field("new_label", pa.int64(), nullable=False)
REASON = pa.field("reason", pa.string(), nullable=False)
#: Why a row was dropped, in the order the rule checks them (the first that applies is recorded).
REASONS = ("unreadable", "non_dominant", "angle", "other_class", "small_class")

STATUS_OK = "ok"

#: Column names facecleaner writes; an input's extra column with one of these names is renamed input_<name>.
RESERVED = frozenset(SCORE_COLUMNS) | {NEW_LABEL.name, REASON.name}


def scores_schema(label_type: pa.DataType, extras: pa.Schema | None = None) -> pa.Schema:
    """The scores schema for an input whose labels are ``label_type``, with the input's extras appended."""
    fields = [f.with_type(label_type) if f.name == "label" else f for f in SCORE_FIELDS]
    return pa.schema(fields + (list(extras) if extras is not None else []))


def classes_schema(label_type: pa.DataType) -> pa.Schema:
    """Per class: its label, sample counts, dominant sub-center and how many samples sit nearest each one."""
    return pa.schema([
        pa.field("class_index", pa.int32(), nullable=False),
        pa.field("label", label_type),
        pa.field("samples", pa.int64(), nullable=False),
        pa.field("readable", pa.int64(), nullable=False),
        pa.field("kept", pa.int64()),
        pa.field("dominant_subcenter", pa.int8(), nullable=False),
        pa.field("nearest_counts", pa.list_(pa.int64()), nullable=False),
        pa.field("new_label", pa.int64()),
    ])
