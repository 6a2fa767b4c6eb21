"""Reading manifests that were not left as facecleaner wrote them: a scores table is validated column by column
(errors name the column and the first bad row, counted from 1), and the files of one prune check each other."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import assert_error, invoke

from facecleaner import api
from facecleaner.errors import InputError
from facecleaner.manifests import io
from facecleaner.manifests.companions import check_companions
from facecleaner.manifests.io import read_metadata
from facecleaner.manifests.schema import METADATA_KEY


def replace_column(path, name: str, values: list, type_: pa.DataType | None = None, keep_meta: bool = True):  # noqa: ANN001, ANN201
    table = pq.read_table(path)
    table = table.set_column(table.schema.get_field_index(name), name, pa.array(values, type=type_))
    if not keep_meta:
        table = table.replace_schema_metadata(None)
    pq.write_table(table, path)
    return path


@pytest.fixture
def scores(scores_file):  # noqa: ANN001, ANN201
    """Three classes, six rows, the last one unreadable."""
    return scores_file([0, 0, 1, 1, 2, 2], [10.0, 20.0, 30.0, 40.0, 50.0, None], [True] * 5 + [None],
                       status=["ok"] * 5 + ["unreadable: empty file"])


def test_concatenated_scores_with_a_class_past_the_metadata_are_one_line_errors(scores_file, tmp_path) -> None:  # noqa: ANN001
    first = scores_file([0, 0, 1, 1], [10.0, 20.0, 30.0, 40.0], [True] * 4, name="a.parquet")
    second = scores_file([0, 1, 2, 2], [10.0, 20.0, 30.0, 40.0], [True] * 4, name="b.parquet")
    both = tmp_path / "both.parquet"
    pq.write_table(pa.concat_tables([pq.read_table(first), pq.read_table(second)]), both)  # a's metadata
    line = assert_error(invoke("prune", both, "--out", tmp_path / "clean.parquet"),
                        str(both), "class_index", "row 7", "2 classes")
    assert "facecleaner bug" not in line
    assert not (tmp_path / "clean.parquet").exists()


@pytest.mark.parametrize(("column", "values", "type_", "fragments"), [
    ("class_index", [0, 0, 1, -1, 2, 2], pa.int32(), ["class_index", "-1", "row 4"]),
    ("class_index", [0.0, 0.0, 1.5, 1.0, 2.0, 2.0], pa.float64(), ["class_index", "row 3"]),
    ("class_index", ["0", "0", "1", "one", "2", "2"], pa.string(), ["class_index", "row 4", "'one'"]),
    ("class_index", [0, 0, None, 1, 2, 2], pa.int32(), ["class_index", "row 3", "empty"]),
    ("status", ["ok", None, "ok", "ok", "ok", "ok"], pa.string(), ["status", "row 2", "empty"]),
    ("label", ["a", "a", "b", None, "c", "c"], pa.string(), ["label", "row 4", "empty"]),
    ("nearest_subcenter", [0, 1, 3, 0, 0, None], pa.int8(), ["nearest_subcenter", "3", "row 3", "0..2"]),
    ("nearest_subcenter", [0, 1, 0, None, 0, None], pa.int8(), ["nearest_subcenter", "row 4", "ok"]),
    ("dominant_subcenter", [0, 0, 0, 0, -2, 0], pa.int8(), ["dominant_subcenter", "-2", "row 5", "0..2"]),
    ("dominant_subcenter", [0, 0, 0, 0, 0, None], pa.int8(), ["dominant_subcenter", "row 6", "empty"]),
    ("angle", ["10", "20", "x", "40", "50", None], pa.string(), ["angle", "row 3", "'x'"]),
    ("is_dominant", [[1], [1], [1], [1], [1], None], pa.list_(pa.int8()), ["is_dominant", "list"]),
])
def test_bad_columns_name_the_column_and_the_first_bad_row(scores, tmp_path, column, values, type_,  # noqa: ANN001
                                                           fragments) -> None:
    replace_column(scores, column, values, type_)
    with pytest.raises(InputError) as caught:
        api.prune(scores, tmp_path / "clean.parquet", force=True)
    assert all(fragment in str(caught.value) for fragment in fragments), str(caught.value)
    assert not (tmp_path / "clean.parquet").exists()


def test_missing_columns_are_named(scores, tmp_path) -> None:  # noqa: ANN001
    table = pq.read_table(scores).drop_columns(["angle", "status"]).replace_schema_metadata(None)
    pq.write_table(table, scores)
    with pytest.raises(InputError, match="has no column 'status', 'angle'") as caught:
        api.prune(scores, tmp_path / "clean.parquet")
    assert "class_index" in caught.value.fix  # the fix lists what a scores table needs


def test_castable_retyped_columns_give_the_same_result(scores, tmp_path) -> None:  # noqa: ANN001
    api.prune(scores, tmp_path / "ours.parquet")
    replace_column(scores, "class_index", ["0", "0", "1", "1", "2", "2"], pa.string(), keep_meta=False)
    replace_column(scores, "nearest_subcenter", [0.0, 0.0, 0.0, 0.0, 0.0, None], pa.float64(), keep_meta=False)
    replace_column(scores, "is_dominant", [1, 1, 1, 1, 1, None], pa.int64(), keep_meta=False)
    replace_column(scores, "angle", [10, 20, 30, 40, 50, None], pa.int64(), keep_meta=False)
    table = pq.read_table(scores)
    pq.write_table(table.set_column(table.schema.get_field_index("status"), "status",
                                    table["status"].dictionary_encode()), scores)
    api.prune(scores, tmp_path / "theirs.parquet")
    assert pq.read_table(tmp_path / "theirs.parquet")["sample_id"].to_pylist() == [0, 1, 2, 3, 4]
    assert pq.read_table(tmp_path / "theirs.parquet")["new_label"].to_pylist() == \
        pq.read_table(tmp_path / "ours.parquet")["new_label"].to_pylist()


def test_metadata_that_is_not_json_is_an_input_error(scores, tmp_path) -> None:  # noqa: ANN001
    table = pq.read_table(scores)
    pq.write_table(table.replace_schema_metadata({METADATA_KEY: b"{not json"}), scores)
    with pytest.raises(InputError, match="metadata"):
        api.prune(scores, tmp_path / "clean.parquet")


def test_companions_match_until_a_file_is_replaced_by_another_runs(scores_file, tmp_path) -> None:  # noqa: ANN001
    scores = scores_file([0, 0, 1, 1, 2, 2], [10.0, 80.0, 30.0, 40.0, 50.0, 60.0], [True] * 6)
    api.prune(scores, tmp_path / "clean.parquet")
    api.prune(scores, tmp_path / "other.parquet", angle=45)
    clean, dropped = tmp_path / "clean.parquet", tmp_path / "clean.dropped.parquet"
    for path in (clean, dropped, tmp_path / "clean.classes.parquet"):
        report = check_companions(path)
        assert report.mixed == [] and not report.edited and report.matched == 2
    (tmp_path / "other.dropped.parquet").replace(dropped)
    report = check_companions(clean)
    assert report.mixed == [dropped] and report.matched == 1
    warning = report.warning()
    assert str(clean) in warning and str(dropped) in warning and "rerun prune" in warning
    assert check_companions(tmp_path / "clean.classes.parquet").mixed == [dropped]
    assert check_companions(dropped).mixed == []  # it names its own run's files, other.parquet and its classes
    dropped.unlink()  # a companion the user deleted is not a mix-up
    assert check_companions(clean).mixed == [] and check_companions(clean).warning() is None


def test_companions_of_a_symlinked_manifest_are_found_beside_the_file_it_links_to(scores_file, tmp_path) -> None:  # noqa: ANN001
    scores = scores_file([0, 0, 1, 1, 2, 2], [10.0, 80.0, 30.0, 40.0, 50.0, 60.0], [True] * 6)
    run = tmp_path / "run"
    api.prune(scores, run / "clean.parquet")
    api.prune(scores, run / "other.parquet", angle=45)
    (tmp_path / "links").mkdir()
    link = tmp_path / "links" / "clean.parquet"
    link.symlink_to(run / "clean.parquet")
    assert check_companions(link).matched == 2
    (run / "other.dropped.parquet").replace(run / "clean.dropped.parquet")
    assert check_companions(link).mixed == [run / "clean.dropped.parquet"]


def test_a_manifest_edited_with_its_metadata_kept_is_not_mixed(scores_file, tmp_path) -> None:  # noqa: ANN001
    scores = scores_file([0, 0, 1, 1, 2, 2], [10.0, 20.0, 30.0, 40.0, 50.0, 60.0], [True] * 6)
    clean = tmp_path / "clean.parquet"
    api.prune(scores, clean)
    table = pq.read_table(clean)
    pq.write_table(table.filter(pa.array(np.array(table["label"].to_pylist()) != "id1")), clean)
    assert read_metadata(clean)["rows"] == 6  # pyarrow kept the metadata, which no longer describes the rows
    report = check_companions(clean)
    assert report.edited and report.mixed == []
    meta = json.loads(pq.read_schema(clean).metadata[METADATA_KEY])
    assert meta["run_id"] == read_metadata(tmp_path / "clean.dropped.parquet")["run_id"]


# --- issue #12: read batches and written row groups sized by bytes, not rows ---------------------------------

def test_rows_per_batch_by_hand() -> None:
    assert io.rows_per_batch(100.0, budget=1_000_000) == 10_000
    assert io.rows_per_batch(3.0, budget=10_000) == 3_333  # whole rows that fit
    assert io.rows_per_batch(600.0) == 55_924  # the default budget, 32 MiB, of 600-byte (embedding) rows
    assert io.rows_per_batch(1.0) == 1 << 20  # narrow rows: at most ROW_GROUP_ROWS
    assert io.rows_per_batch(0.0) == 1 << 20  # an empty file's 0 bytes per row
    assert io.rows_per_batch(1e9) == 1 << 10  # a row wider than the budget: at least MIN_BATCH_ROWS


def test_bytes_per_row_from_parquet_metadata(tmp_path) -> None:  # noqa: ANN001
    n = 50_000
    pq.write_table(pa.table({"x": np.arange(n, dtype=np.int64)}), tmp_path / "narrow.parquet",
                   compression="none", use_dictionary=False, row_group_size=n // 4)
    narrow = io.parquet_bytes_per_row(pq.read_metadata(tmp_path / "narrow.parquet"))
    assert 8.0 <= narrow < 8.05  # 8 bytes of int64 plus page headers, over 4 row groups
    values = np.random.default_rng(0).standard_normal(n * 16, dtype=np.float32)  # no dictionary shortens them
    wide = pa.table({"x": np.arange(n, dtype=np.int64),
                     "v": pa.ListArray.from_arrays(np.arange(0, n * 16 + 1, 16, dtype=np.int32), values)})
    pq.write_table(wide, tmp_path / "wide.parquet", compression="zstd", row_group_size=n // 3)
    assert io.parquet_bytes_per_row(pq.read_metadata(tmp_path / "wide.parquet")) >= 8 + 16 * 4  # uncompressed
    pq.write_table(wide.slice(0, 0), tmp_path / "empty.parquet")
    assert io.parquet_bytes_per_row(pq.read_metadata(tmp_path / "empty.parquet")) == 0.0


def row_groups(path) -> list[int]:  # noqa: ANN001
    footer = pq.read_metadata(path)
    return [footer.row_group(i).num_rows for i in range(footer.num_row_groups)]


def test_parquet_writer_writes_each_table_in_row_groups_of_at_most_the_given_rows(tmp_path) -> None:  # noqa: ANN001
    table = pa.table({"a": np.arange(25, dtype=np.int64), "s": [f"s{i % 3}" for i in range(25)]})
    with io.parquet_writer(tmp_path / "t.parquet", table.schema, {"kind": "test"}, row_group_rows=7) as write:
        for start, stop in ((0, 5), (5, 22), (22, 25)):
            write(table.slice(start, stop - start))
    assert row_groups(tmp_path / "t.parquet") == [5, 7, 7, 3, 3]
    assert pq.read_table(tmp_path / "t.parquet").replace_schema_metadata(None).equals(table)
    assert read_metadata(tmp_path / "t.parquet") == {"kind": "test"}


def test_parquet_writer_sizes_row_groups_by_the_first_tables_bytes(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setattr(io, "BATCH_BYTES", 10_000)
    monkeypatch.setattr(io, "MIN_BATCH_ROWS", 1)
    n = 300
    wide = pa.table({"a": np.arange(n, dtype=np.int64),  # 8 + 4 (offset) + 32 × 4 bytes = 140 bytes a row
                     "v": pa.ListArray.from_arrays(np.arange(0, n * 32 + 1, 32, dtype=np.int32),
                                                   np.ones(n * 32, dtype=np.float32))})
    with io.parquet_writer(tmp_path / "wide.parquet", wide.schema, {}) as write:
        write(wide)
    assert row_groups(tmp_path / "wide.parquet") == [10_000 // 140] * (n // 71) + [n % 71]  # 71 rows a group
    narrow = pa.table({"a": np.arange(n, dtype=np.int64)})
    with io.parquet_writer(tmp_path / "narrow.parquet", narrow.schema, {}) as write:
        write(narrow)
    assert row_groups(tmp_path / "narrow.parquet") == [n]  # 2,400 bytes: under the budget


def test_a_stream_sizes_its_batches_by_the_decoded_width(tmp_path: Path) -> None:
    """A repetitive wide string column is small in the file (dictionary-encoded) but wide once decoded: the
    stream's batches are sized by the decoded width, so they stay near the byte budget."""
    text = "x" * 2000
    rows = 20_000
    pq.write_table(pa.table({"note": [text] * rows, "n": np.arange(rows)}), tmp_path / "rep.parquet")
    assert io.parquet_bytes_per_row(pq.read_metadata(tmp_path / "rep.parquet")) < 100  # what the footer says
    _, batch_rows = io.open_stream(tmp_path / "rep.parquet")
    # the decoded bytes (text, its offset, the integer), not the footer's: 16K rows of 32 MiB, not 1M
    assert batch_rows == pytest.approx(io.rows_per_batch(2000 + 4 + 8), rel=0.01)
