"""Shared fixtures: hand-written scores manifests and tiny generated datasets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from facecleaner.manifests.io import manifest_metadata, write_manifest
from facecleaner.manifests.schema import scores_schema


def write_scores(path: Path, class_index: list[int], angle: list[float | None], is_dominant: list[bool | None],
                 status: list[str] | None = None, labels: list | None = None, subcenters: int = 3,
                 paths: list[str | None] | None = None, rec_index: list[int | None] | None = None,
                 angle_other: list[float] | None = None, **meta: object) -> Path:
    """A scores manifest with the given decision columns; the other geometry columns are plausible filler.

    ``paths`` default to ``img/<row>.jpg``; ``meta`` adds metadata fields (``input_root=…``)."""
    n = len(class_index)
    status = status or ["ok"] * n
    labels = labels if labels is not None else [f"id{c}" for c in class_index]
    label_type = pa.int64() if isinstance(labels[0], int) else pa.string()
    ok = np.array([s == "ok" for s in status])
    dominant = [0] * n
    nearest = [None if not good else (0 if dom else 1) for good, dom in zip(ok, is_dominant, strict=True)]
    columns = {
        "sample_id": pa.array(np.arange(n, dtype=np.int64)),
        "path": pa.array(paths if paths is not None else [f"img/{i}.jpg" for i in range(n)], pa.string()),
        "rec_index": pa.array(rec_index if rec_index is not None else [None] * n, pa.int64()),
        "label": pa.array(labels, type=label_type),
        "class_index": pa.array(class_index, type=pa.int32()),
        "nearest_subcenter": pa.array(nearest, type=pa.int8()),
        "dominant_subcenter": pa.array(dominant, type=pa.int8()),
        "is_dominant": pa.array([d if good else None for d, good in zip(is_dominant, ok, strict=True)]),
        "angle": pa.array([a if good else None for a, good in zip(angle, ok, strict=True)], type=pa.float32()),
        "angle_nearest": pa.array([a if good else None for a, good in zip(angle, ok, strict=True)], type=pa.float32()),
        "nearest_other_class": pa.array([0] * n, type=pa.int32()),
        "angle_other": pa.array(angle_other if angle_other is not None else [90.0] * n, type=pa.float32()),
        "status": pa.array(status),
    }
    table = pa.Table.from_arrays(list(columns.values()), schema=scores_schema(label_type))
    meta = manifest_metadata("scores", model={"subcenters": subcenters, "margin": 0.5, "scale": 64.0,
                                              "backbone": "tiny"}, num_classes=max(class_index) + 1, **meta)
    write_manifest(path, table, meta)
    return path


@pytest.fixture
def scores_file(tmp_path: Path):
    """Factory: ``scores_file(class_index, angle, is_dominant, status=None, labels=None)`` → path."""
    def make(*args, name: str = "scores.parquet", **kwargs):  # noqa: ANN002, ANN003, ANN202
        return write_scores(tmp_path / name, *args, **kwargs)

    return make
