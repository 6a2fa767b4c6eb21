"""Fuzzing prune and export through the CLI with manifests whose columns were dropped, renamed, retyped or
null-filled, whose values went out of range, or whose metadata no longer describes them: every outcome is a
success that keeps the invariants, or exactly one ``Error:`` line that is not the catch-all "facecleaner bug"."""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import Result
from conftest import write_scores
from helpers import invoke
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_edited_manifests import jpeg

from facecleaner import api
from facecleaner.manifests.schema import METADATA_KEY, SCORE_COLUMNS

OPS = ("drop", "rename", "text", "float", "int", "bool", "null-fill", "one null", "too big", "negative", "nan")


def number(value: object) -> float:
    """Some number for any value, so that every column can be retyped."""
    if isinstance(value, bool | int | float):
        return float(value)
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return float(len(str(value)))


def whole(value: object) -> int:
    """Some integer for any value (0 for NaN and infinities)."""
    as_number = number(value)
    return int(as_number) if math.isfinite(as_number) else 0


def mutate(table: pa.Table, column: str, op: str, row: int) -> pa.Table:
    """``table`` with one edit a user (or a tool) might have made to ``column``."""
    if column not in table.column_names:
        return table
    if op == "drop":
        return table.drop_columns([column])
    if op == "rename":
        return table.rename_columns([f"{name}_renamed" if name == column else name for name in table.column_names])
    values = table[column].to_pylist()
    row %= len(values)
    kept = {"text": str, "float": number, "int": whole, "bool": bool}
    if op in kept:
        array = pa.array([None if v is None else kept[op](v) for v in values])
    elif op == "null-fill":
        array = pa.nulls(len(values))
    elif op == "nan":
        array = pa.array([float("nan") if i == row else (None if v is None else number(v))
                          for i, v in enumerate(values)], pa.float64())
    else:
        values[row] = None if op == "one null" else (-1 if op == "negative" else whole(values[row]) + 100)
        try:
            array = pa.array(values, table[column].type)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            array = pa.array([None if v is None else str(v) for v in values])
    return table.set_column(table.column_names.index(column), column, array)


def with_metadata(table: pa.Table, original: pa.Schema, how: str) -> pa.Table:
    """Our metadata kept, removed (pandas, duckdb) or claiming fewer classes and sub-centers than the rows use."""
    if how == "removed":
        return table.replace_schema_metadata(None)
    meta = json.loads(original.metadata[METADATA_KEY])
    if how == "shrunk":
        meta["num_classes"] = 1
        meta.setdefault("model", {})["subcenters"] = 1
    return table.replace_schema_metadata({METADATA_KEY: json.dumps(meta).encode()})


def assert_success_or_one_error(result: Result) -> None:
    assert result.exit_code in (0, 1), (result.exit_code, result.stderr, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    if result.exit_code == 1:
        errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
        assert len(errors) == 1 and " — " in errors[0], result.stderr
        assert "facecleaner bug" not in errors[0], errors[0]
        assert "Traceback" not in result.stderr and result.stdout == ""


edits = st.lists(st.tuples(st.integers(0, 100), st.sampled_from(OPS), st.integers(0, 100)), min_size=1, max_size=3)
FUZZ = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def scores_table(tmp_path_factory: pytest.TempPathFactory) -> pa.Table:
    path = tmp_path_factory.mktemp("fuzz") / "scores.parquet"
    write_scores(path, [0, 0, 0, 1, 1, 1, 2, 2], [10.0, 80.0, 20.0, 30.0, 40.0, 50.0, 60.0, None],
                 [True, False, True, True, True, False, True, None], status=["ok"] * 7 + ["unreadable: empty file"])
    return pq.read_table(path)


@FUZZ
@given(edits=edits, metadata=st.sampled_from(["kept", "removed", "shrunk"]), twice=st.booleans(),
       force=st.booleans())
def test_prune_never_ends_in_the_catch_all(scores_table: pa.Table, edits, metadata, twice, force) -> None:  # noqa: ANN001
    table = scores_table
    for column, op, row in edits:
        table = mutate(table, SCORE_COLUMNS[column % len(SCORE_COLUMNS)], op, row)
    if twice:  # two scores files concatenated
        table = pa.concat_tables([table, table])
    table = with_metadata(table, scores_table.schema, metadata)
    with tempfile.TemporaryDirectory() as folder:
        scores, out = Path(folder) / "scores.parquet", Path(folder) / "clean.parquet"
        pq.write_table(table, scores)
        result = invoke("prune", scores, "--out", out, *(["--force"] if force else []))
        assert_success_or_one_error(result)
        if result.exit_code == 0:  # clean and dropped split the input between them
            clean, dropped = pq.read_table(out), pq.read_table(Path(folder) / "clean.dropped.parquet")
            assert clean.num_rows + dropped.num_rows == table.num_rows
            assert clean.column_names[-1] == "new_label" and dropped.column_names[-1] == "reason"
        else:
            assert not out.exists()


EXPORT_COLUMNS = ("path", "rec_index", "label", "new_label", "status", "sample_id")


@pytest.fixture(scope="module")
def clean_table(tmp_path_factory: pytest.TempPathFactory) -> tuple[pa.Table, Path]:
    root = tmp_path_factory.mktemp("fuzz-export")
    data = root / "data"
    data.mkdir()
    paths = [f"{i}.jpg" for i in range(6)]
    for i, path in enumerate(paths):
        (data / path).write_bytes(jpeg(i))
    scores = write_scores(root / "scores.parquet", [0, 0, 1, 1, 2, 2], [10.0] * 6, [True] * 6,
                          labels=["a", "a", "b", "b", "c", "c"], paths=paths, input_root=str(data))
    api.prune(scores, root / "clean.parquet")
    return pq.read_table(root / "clean.parquet"), data


@FUZZ
@given(edits=edits, metadata=st.sampled_from(["kept", "removed"]), as_csv=st.booleans(), use_root=st.booleans(),
       fmt=st.sampled_from(["rec", "folder", "csv", "lst"]), label_column=st.sampled_from(["new_label", "label"]))
def test_export_never_ends_in_the_catch_all(clean_table, edits, metadata, as_csv, use_root, fmt,  # noqa: ANN001
                                            label_column) -> None:
    original, data = clean_table
    table = original
    for column, op, row in edits:
        table = mutate(table, EXPORT_COLUMNS[column % len(EXPORT_COLUMNS)], op, row)
    table = with_metadata(table, original.schema, metadata)
    with tempfile.TemporaryDirectory() as folder:
        manifest = Path(folder) / ("clean.csv" if as_csv else "clean.parquet")
        if as_csv:
            table.to_pandas().to_csv(manifest, index=False)
        else:
            pq.write_table(table, manifest)
        out = Path(folder) / ("out" if fmt in ("rec", "folder") else f"out.{fmt}")
        result = invoke("export", manifest, "--format", fmt, "--out", out, "--label-column", label_column, "--json",
                        "-q", *(["--root", data] if use_root else []))
        assert_success_or_one_error(result)
        if result.exit_code == 0:
            summary = json.loads(result.stdout)
            assert summary["written"] + summary["skipped"] == summary["rows"] == table.num_rows
            assert summary["written"] >= 1 and out.exists()
        else:
            assert not out.exists()
