"""The drop rule: hand-checked cases and property tests of the invariants every prune must keep."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import assert_error, assert_ok, invoke
from hypothesis import given, settings
from hypothesis import strategies as st

from facecleaner import api
from facecleaner.errors import InputError, PruneRefused
from facecleaner.manifests import io
from facecleaner.manifests.companions import check_companions
from facecleaner.manifests.io import read_metadata
from facecleaner.manifests.schema import REASONS
from facecleaner.pruning.evaluate import kept_detection_metrics
from facecleaner.pruning.rules import KEPT, decide


def test_paper_rule_on_hand_checked_rows() -> None:
    classes = np.array([0, 0, 0, 0, 1, 1, 2])
    readable = np.array([True, True, True, True, True, False, True])
    dominant = np.array([True, False, True, False, True, True, True])
    angle = np.array([10.0, 40.0, 75.0, 75.0001, 80.0, np.nan, 30.0])
    d = decide(classes, readable, dominant, angle, 3, threshold=75.0)
    names = [REASONS[r] if r != KEPT else "kept" for r in d.reason]
    # Exactly 75° is kept; nearest a non-dominant sub-center but within 75° is kept (reference script).
    assert names == ["kept", "kept", "kept", "angle", "angle", "unreadable", "kept"]
    assert d.new_label.tolist() == [0, 0, 0, -1, -1, -1, 1]  # class 1 lost everything
    assert d.kept_per_class.tolist() == [3, 0, 1]


def test_drop_non_dominant_and_min_images() -> None:
    classes = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    readable = np.ones(8, dtype=bool)
    dominant = np.array([True, False, True, True, True, True, True, False])
    angle = np.array([10, 20, 30, 10, 90, 5, 6, 80.0])
    d = decide(classes, readable, dominant, angle, 3, 75.0, drop_non_dominant=True, min_images=2)
    names = [REASONS[r] if r != KEPT else "kept" for r in d.reason]
    assert names == ["kept", "non_dominant", "kept", "small_class", "angle", "kept", "kept", "non_dominant"]
    assert d.new_label.tolist() == [0, -1, 0, -1, -1, 1, 1, -1]


@st.composite
def score_columns(draw):  # noqa: ANN001, ANN201
    n = draw(st.integers(1, 60))
    classes = draw(st.integers(1, 8))
    class_index = np.array(draw(st.lists(st.integers(0, classes - 1), min_size=n, max_size=n)))
    readable = np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    dominant = np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    angle = np.array(draw(st.lists(st.sampled_from([0.0, 30.0, 74.9, 75.0, 75.1, 120.0, 180.0]),
                                   min_size=n, max_size=n)))
    angle[~readable] = np.nan
    return class_index, readable, dominant, angle, classes


@settings(max_examples=200, deadline=None)
@given(score_columns(), st.floats(1, 179), st.booleans(), st.integers(1, 4))
def test_invariants(columns, threshold, drop_non_dominant, min_images) -> None:  # noqa: ANN001
    class_index, readable, dominant, angle, classes = columns
    d = decide(class_index, readable, dominant, angle, classes, threshold, drop_non_dominant, min_images)
    keep = d.keep
    # Every kept sample satisfies the rule; every dropped one has exactly one reason.
    assert np.all(readable[keep]) and np.all(angle[keep] <= threshold)
    if drop_non_dominant:
        assert np.all(dominant[keep])
    assert np.all((d.reason == KEPT) | ((d.reason >= 0) & (d.reason < len(REASONS))))
    # new_label: contiguous 0..C'-1, one per kept class, in class order (stable), -1 exactly where dropped.
    kept_classes = np.unique(class_index[keep])
    assert sorted(np.unique(d.new_label[keep]).tolist()) == list(range(len(kept_classes)))
    for new, old in enumerate(kept_classes):
        assert np.all(d.new_label[keep & (class_index == old)] == new)
    assert np.all(d.new_label[~keep] == -1)
    assert np.all(np.bincount(class_index[keep], minlength=classes)[kept_classes] >= min_images)
    # Unreadable samples are always dropped as unreadable.
    assert np.all(d.reason[~readable] == REASONS.index("unreadable"))


def test_api_prune_writes_disjoint_manifests_covering_the_input(scores_file, tmp_path) -> None:  # noqa: ANN001
    path = scores_file([0, 0, 0, 1, 1, 1, 2, 2], [10, 80, 20, 30, 40, 50, 60, 100],
                       [True, True, False, True, True, True, True, False],
                       status=["ok"] * 7 + ["unreadable: empty file"], labels=[7, 7, 7, 3, 3, 3, 9, 9])
    summary = api.prune(path, tmp_path / "clean.parquet", angle=75)
    clean = pd.read_parquet(tmp_path / "clean.parquet")
    dropped = pd.read_parquet(tmp_path / "clean.dropped.parquet")
    assert sorted(clean.sample_id.tolist() + dropped.sample_id.tolist()) == list(range(8))
    assert set(clean.sample_id) & set(dropped.sample_id) == set()
    assert clean.sample_id.tolist() == [0, 2, 3, 4, 5, 6]  # input order kept
    assert clean.new_label.tolist() == [0, 0, 1, 1, 1, 2]
    assert dropped.reason.tolist() == ["angle", "unreadable"]
    assert clean.label.dtype.kind == "i"  # integer labels stay integers
    assert summary["by_reason"]["angle"] == 1 and summary["classes_kept"] == 3
    classes = pd.read_parquet(tmp_path / "clean.classes.parquet")
    assert classes.kept.tolist() == [2, 3, 1] and classes.new_label.tolist() == [0, 1, 2]


def test_prune_refuses_to_drop_most_samples_unless_forced(scores_file, tmp_path) -> None:  # noqa: ANN001
    path = scores_file([0, 0, 1, 1], [150, 140, 160, 30], [True] * 4)
    with pytest.raises(PruneRefused, match="drop 3 of 4 samples .*median angle is 145°"):
        api.prune(path, tmp_path / "clean.parquet")
    assert not (tmp_path / "clean.parquet").exists()
    assert api.prune(path, tmp_path / "clean.parquet", force=True)["kept"] == 1


@pytest.mark.parametrize("angle", [0, -5, 180, 200])
def test_angle_outside_open_interval_is_refused(scores_file, tmp_path, angle) -> None:  # noqa: ANN001
    path = scores_file([0, 1], [10, 20], [True, True])
    with pytest.raises(InputError, match="neither 'auto' nor in \\(0, 180\\)"):
        api.prune(path, tmp_path / "clean.parquet", angle=angle)


def test_prune_rejects_files_that_are_not_scores(tmp_path, scores_file) -> None:  # noqa: ANN001
    foreign = tmp_path / "foreign.parquet"
    pd.DataFrame({"path": ["a"], "label": [1]}).to_parquet(foreign)  # no metadata: judged by its columns
    with pytest.raises(InputError, match="has no column 'class_index', 'status', .*'dominant_subcenter'"):
        api.prune(foreign, tmp_path / "clean.parquet")
    scores = scores_file([0, 1], [10, 20], [True, True])
    api.prune(scores, tmp_path / "clean.parquet")
    with pytest.raises(InputError, match="is a clean manifest, not a scores manifest"):
        api.prune(tmp_path / "clean.parquet", tmp_path / "again.parquet")
    (tmp_path / "text.parquet").write_text("hello")
    with pytest.raises(InputError, match="not a Parquet file"):
        api.prune(tmp_path / "text.parquet", tmp_path / "x.parquet")


def test_streaming_in_small_batches_gives_the_same_files(scores_file, tmp_path, monkeypatch) -> None:  # noqa: ANN001
    rng = np.random.default_rng(4)
    n = 50
    path = scores_file(rng.integers(0, 6, n).tolist(), rng.uniform(0, 120, n).tolist(),
                       rng.random(n).astype(bool).tolist(),
                       status=["ok" if r > 0.1 else "unreadable: empty file" for r in rng.random(n)])
    api.prune(path, tmp_path / "whole.parquet", force=True, min_images=3)
    monkeypatch.setattr(io, "rows_per_batch", lambda bytes_per_row, budget=None: 7)
    api.prune(path, tmp_path / "batched.parquet", force=True, min_images=3)
    for suffix in ("", ".dropped", ".classes"):
        whole = pd.read_parquet(tmp_path / f"whole{suffix}.parquet")
        batched = pd.read_parquet(tmp_path / f"batched{suffix}.parquet")
        pd.testing.assert_frame_equal(whole, batched)
    assert len(pd.read_parquet(tmp_path / "batched.parquet")) + len(
        pd.read_parquet(tmp_path / "batched.dropped.parquet")) == n


def test_a_wide_manifest_in_byte_sized_batches_gives_the_same_files(scores_file, tmp_path, monkeypatch) -> None:  # noqa: ANN001
    rng = np.random.default_rng(12)
    n, dim = 400, 32
    path = scores_file(rng.integers(0, 9, n).tolist(), rng.uniform(0, 120, n).tolist(),
                       rng.random(n).astype(bool).tolist(),
                       status=["ok" if r > 0.1 else "unreadable: empty file" for r in rng.random(n)])
    table = pq.read_table(path)  # an embedding a user joined in, some rows without one
    values = rng.standard_normal(n * dim).astype(np.float32)
    embedding = pa.ListArray.from_arrays(pa.array(np.arange(0, n * dim + 1, dim, dtype=np.int32)), pa.array(values),
                                         mask=pa.array(rng.random(n) < 0.05))
    pq.write_table(table.append_column("embedding", embedding), path)  # one row group, our metadata kept
    api.prune(path, tmp_path / "whole.parquet", force=True, min_images=3)
    budget = 4_000
    monkeypatch.setattr(io, "BATCH_BYTES", budget)
    monkeypatch.setattr(io, "MIN_BATCH_ROWS", 1)
    api.prune(path, tmp_path / "batched.parquet", force=True, min_images=3)
    rows = int(budget // io.parquet_bytes_per_row(pq.read_metadata(path)))
    assert 10 < rows < 40  # a row is over 128 bytes: many batches
    for suffix in ("", ".dropped", ".classes"):
        whole = pq.read_table(tmp_path / f"whole{suffix}.parquet")
        batched = pq.read_table(tmp_path / f"batched{suffix}.parquet")
        assert batched.replace_schema_metadata(None).equals(whole.replace_schema_metadata(None)), suffix
    clean, dropped = pq.read_table(tmp_path / "batched.parquet"), pq.read_table(tmp_path / "batched.dropped.parquet")
    assert sorted(clean["sample_id"].to_pylist() + dropped["sample_id"].to_pylist()) == list(range(n))
    for part in (clean, dropped):  # each row's embedding is its own, missing ones included
        ids = part["sample_id"].to_numpy()
        assert part["embedding"].combine_chunks().equals(embedding.take(pa.array(ids)))
        assert np.all(np.diff(ids) > 0)  # the input's order
    for name in ("batched.parquet", "batched.dropped.parquet"):  # a row group per batch, the kept or dropped part
        footer = pq.read_metadata(tmp_path / name)
        sizes = [footer.row_group(i).num_rows for i in range(footer.num_row_groups)]
        assert len(sizes) == -(-n // rows) and max(sizes) <= rows, (name, sizes)
    assert pq.read_metadata(tmp_path / "whole.parquet").num_row_groups == 1


def test_detection_metrics_of_a_clean_manifest_by_hand() -> None:
    is_noise = np.array([True, True, False, False, False])
    figures = kept_detection_metrics(np.array([1, 2, 3]), is_noise)  # rows 0 and 4 dropped: one hit, one miss
    assert figures == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "clean_kept": pytest.approx(2 / 3),
                       "dropped": 2, "noise": 2}


# --- issue #9: non-finite angles, option ranges, outputs that are inputs, one commit for three files ----------

def test_non_finite_angles_of_readable_rows_are_dropped_as_angle() -> None:
    classes = np.zeros(6, dtype=np.int64)
    readable = np.array([True, True, True, True, True, False])
    angle = np.array([10.0, np.nan, np.inf, -np.inf, 75.0, np.nan])
    d = decide(classes, readable, np.ones(6, dtype=bool), angle, 1, threshold=75.0)
    assert [REASONS[r] if r != KEPT else "kept" for r in d.reason] == [
        "kept", "angle", "angle", "angle", "kept", "unreadable"]


def test_api_prune_drops_nan_and_null_angles_of_readable_rows(scores_file, tmp_path) -> None:  # noqa: ANN001
    path = scores_file([0, 0, 0, 1, 1, 1], [10.0, float("nan"), 20.0, float("inf"), 30.0, 40.0], [True] * 6)
    table = pq.read_table(path)
    angles = table["angle"].to_pylist()
    angles[5] = None  # an ok row whose angle a pandas round trip turned into a null
    pq.write_table(table.set_column(table.schema.get_field_index("angle"), "angle",
                                    pa.array(angles, pa.float32())), path)
    summary = api.prune(path, tmp_path / "clean.parquet")
    dropped = pd.read_parquet(tmp_path / "clean.dropped.parquet")
    assert dropped.sample_id.tolist() == [1, 3, 5] and dropped.reason.tolist() == ["angle"] * 3
    assert summary["by_reason"]["angle"] == 3


RANGES = [("--angle", "0", "0<x<180"), ("--angle", "180", "0<x<180"), ("--angle", "200", "0<x<180"),
          ("--angle", "-1", "0<x<180"), ("--min-images", "0", "x>=1"), ("--max-drop-fraction", "1.5", "0<=x<=1"),
          ("--max-drop-fraction", "-0.1", "0<=x<=1")]


@pytest.mark.parametrize(("option", "value", "shown"), RANGES)
def test_out_of_range_options_are_usage_errors_and_help_shows_the_range(scores_file, tmp_path, option, value,
                                                                        shown) -> None:  # noqa: ANN001
    scores = scores_file([0, 0, 1, 1], [10.0, 20.0, 30.0, 40.0], [True] * 4)
    result = invoke("prune", scores, "--out", tmp_path / "clean.parquet", option, value)
    assert result.exit_code == 2, (result.exit_code, result.stderr)
    assert f"Invalid value for '{option}'" in result.stderr and shown in result.stderr
    assert list(tmp_path.iterdir()) == [scores]
    help_text = " ".join(invoke("prune", "--help").stdout.split())
    assert shown in help_text


def test_api_keeps_raising_input_errors_for_out_of_range_values(scores_file, tmp_path) -> None:  # noqa: ANN001
    scores = scores_file([0, 1], [10.0, 20.0], [True, True])
    for kwargs, fragment in (({"min_images": 0}, "--min-images"), ({"max_drop_fraction": 2.0}, "--max-drop-fraction"),
                             ({"angle": float("nan")}, "--angle")):
        with pytest.raises(InputError, match=fragment):
            api.prune(scores, tmp_path / "clean.parquet", **kwargs)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_outputs_that_are_inputs_or_each_other_are_refused_before_any_work(scores_file, tmp_path) -> None:  # noqa: ANN001
    scores = scores_file([0, 0, 1, 1], [10.0, 20.0, 30.0, 40.0], [True] * 4, name="s.parquet")
    classes = tmp_path / "s.classes.parquet"
    classes.write_bytes(b"the scores' per-class table")
    (tmp_path / "link.parquet").symlink_to(scores)
    before = {p.name: sha(p) for p in tmp_path.iterdir()}
    c = str(tmp_path / "c.parquet")
    cases = [
        (["--out", scores], "--out", "is the scores input"),
        (["--out", tmp_path / "link.parquet"], "--out", "is the scores input"),
        (["--out", c, "--dropped", c], "--dropped", "same file"),
        (["--out", c, "--dropped", scores], "--dropped", "is the scores input"),
        (["--out", classes], "--out", "is the scores input's classes file"),
        (["--out", tmp_path / "s.x.parquet", "--dropped", tmp_path / "s.x.classes.parquet"], "--dropped",
         "same file"),
        (["--out", tmp_path / "sub" / ".." / "s.parquet"], "--out", "is the scores input"),
    ]
    for args, option, fragment in cases:
        line = assert_error(invoke("prune", scores, *args, "--force"), option, fragment)
        assert "facecleaner bug" not in line
        assert {p.name: sha(p) for p in tmp_path.iterdir() if p.is_file()} == before, args
    assert not (tmp_path / "sub").exists()


def test_the_classes_file_beside_a_symlinked_scores_input_is_protected(scores_file, tmp_path) -> None:  # noqa: ANN001
    """SCORES given as a link: its classes file is the one beside the file linked to, not beside the link."""
    scores = scores_file([0, 0, 1, 1], [10.0, 20.0, 30.0, 40.0], [True] * 4, name="data/s.parquet")
    classes = tmp_path / "data" / "s.classes.parquet"
    classes.write_bytes(b"the scores' per-class table")
    (tmp_path / "elsewhere").mkdir()
    link = tmp_path / "elsewhere" / "link.parquet"
    link.symlink_to(scores)
    line = assert_error(invoke("prune", link, "--out", classes, "--force"), "--out",
                        "is the scores input's classes file")
    assert "facecleaner bug" not in line
    assert classes.read_bytes() == b"the scores' per-class table"
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["s.classes.parquet", "s.parquet"]


def test_files_of_one_prune_share_a_run_id_and_record_their_rows(scores_file, tmp_path) -> None:  # noqa: ANN001
    scores = scores_file([0, 0, 0, 1, 1, 2], [10.0, 80.0, 20.0, 30.0, 40.0, 50.0], [True] * 6)
    out, dropped = tmp_path / "clean.parquet", tmp_path / "elsewhere" / "d.parquet"
    api.prune(scores, out, dropped=dropped)
    paths = {"clean": out, "dropped": dropped, "classes": tmp_path / "clean.classes.parquet"}
    metas = {role: read_metadata(path) for role, path in paths.items()}
    run_ids = {meta["run_id"] for meta in metas.values()}
    assert len(run_ids) == 1 and re.fullmatch("[0-9a-f]{32}", run_ids.pop())
    rows = {role: pq.ParquetFile(path).metadata.num_rows for role, path in paths.items()}
    assert rows == {"clean": 5, "dropped": 1, "classes": 3}
    for role, meta in metas.items():
        assert meta["kind"] == role and meta["rows"] == rows[role]
        companions = meta["companions"]
        assert {name: entry["rows"] for name, entry in companions.items()} == rows
        for name, entry in companions.items():  # each path is relative to the file that records it
            assert (paths[role].parent / entry["path"]).resolve() == paths[name].resolve()


PRUNE_FAULT_CHILD = ["-m", "facecleaner", "prune", "-q", "--force"]


def test_a_prune_killed_between_its_renames_is_reported_by_export_and_completed_by_the_next_prune(
        scores_file, tmp_path) -> None:  # noqa: ANN001
    scores = scores_file(list(range(5)) * 2, [10.0 * i for i in range(10)], [True] * 10)
    (tmp_path / "img").mkdir()
    for i in range(10):  # the images the manifest lists (relative to its folder): a csv export checks they exist
        (tmp_path / "img" / f"{i}.jpg").write_bytes(b"\xff\xd8\xff")
    out = tmp_path / "clean.parquet"
    api.prune(scores, out, angle=179)  # a first, complete run: 10 kept, 0 dropped
    env = {**os.environ, "FACECLEANER_FAULT": "between renames"}
    child = subprocess.run([sys.executable, *PRUNE_FAULT_CHILD, str(scores), "--out", str(out), "--angle", "45"],
                           env=env, capture_output=True, text=True)
    assert child.returncode == 137, child.stderr
    # The clean manifest is the new run's; the dropped one (and the classes table) still the first run's.
    assert pq.ParquetFile(out).metadata.num_rows == 5
    assert pq.ParquetFile(tmp_path / "clean.dropped.parquet").metadata.num_rows == 0
    problems = check_companions(out)
    assert not problems.edited and len(problems.mixed) == 2
    # (the list goes to another folder: a command completes the dead commits it finds beside its own outputs)
    exported = invoke("export", out, "--format", "csv", "--out", tmp_path / "lists" / "list.csv")
    assert_ok(exported)
    warning = [line for line in exported.stderr.splitlines() if "rerun prune" in line]
    assert len(warning) == 1 and str(out) in warning[0] and str(tmp_path / "clean.dropped.parquet") in warning[0]
    # The next prune first completes the dead commit (and says so), then writes its own matching set.
    again = invoke("prune", scores, "--out", out, "--angle", "45", "--force")
    assert_ok(again)
    assert "completed the unfinished publication of" in again.stderr
    assert not list(tmp_path.glob(".*"))
    assert check_companions(out).mixed == [] and check_companions(tmp_path / "clean.dropped.parquet").mixed == []
    assert sum(pq.ParquetFile(p).metadata.num_rows for p in (out, tmp_path / "clean.dropped.parquet")) == 10
    exported = invoke("export", out, "--format", "csv", "--out", tmp_path / "lists" / "list2.csv")
    assert_ok(exported)
    assert "rerun prune" not in exported.stderr


def test_a_dead_commit_is_completed_even_when_nothing_else_changes(scores_file, tmp_path) -> None:  # noqa: ANN001
    scores = scores_file(list(range(3)) * 2, [10.0 * i for i in range(6)], [True] * 6)
    out = tmp_path / "clean.parquet"
    env = {**os.environ, "FACECLEANER_FAULT": "journal written"}
    child = subprocess.run([sys.executable, *PRUNE_FAULT_CHILD, str(scores), "--out", str(out)], env=env,
                           capture_output=True, text=True)
    assert child.returncode == 137, child.stderr
    assert not out.exists()
    summary = api.prune(scores, out)
    assert summary["recovered"] and all(check_companions(p).mixed == [] for p in (
        out, tmp_path / "clean.dropped.parquet", tmp_path / "clean.classes.parquet"))


def test_prune_reads_a_scores_table_without_our_metadata(scores_file, tmp_path) -> None:  # noqa: ANN001
    scores = scores_file([0, 0, 0, 1, 1, 2, 2], [10.0, 80.0, 20.0, 30.0, 40.0, 50.0, 95.0], [True] * 7,
                         labels=[7, 7, 7, 3, 3, 9, 9])
    api.prune(scores, tmp_path / "ours.parquet")
    plain = tmp_path / "plain.parquet"
    frame = pd.read_parquet(scores)
    frame.to_parquet(plain)  # pandas: our metadata is gone
    summary = api.prune(plain, tmp_path / "theirs.parquet")
    assert read_metadata(tmp_path / "theirs.parquet")["kind"] == "clean"
    for suffix in ("", ".dropped", ".classes"):
        ours = pd.read_parquet(tmp_path / f"ours{suffix}.parquet")
        theirs = pd.read_parquet(tmp_path / f"theirs{suffix}.parquet")
        if suffix == ".classes":  # K comes from the data now: every sample is nearest sub-center 0
            assert [list(c) for c in theirs.pop("nearest_counts")] == [list(c)[:1] for c in ours.pop("nearest_counts")]
        pd.testing.assert_frame_equal(ours, theirs, check_dtype=False)
    assert summary["kept"] == 5 and summary["classes_kept"] == 3


def test_an_edited_clean_manifest_can_be_pruned_again(scores_file, tmp_path) -> None:  # noqa: ANN001
    scores = scores_file([0, 0, 1, 1, 2, 2], [10.0, 60.0, 30.0, 40.0, 50.0, 20.0], [True] * 6)
    api.prune(scores, tmp_path / "clean.parquet")
    edited = tmp_path / "edited.parquet"
    pd.read_parquet(tmp_path / "clean.parquet").query("label != 'id0'").to_parquet(edited)  # drops our metadata
    api.prune(edited, tmp_path / "stricter.parquet", angle=35)
    stricter = pq.read_table(tmp_path / "stricter.parquet")
    assert stricter.column_names.count("new_label") == 1  # decided afresh, not carried twice
    assert stricter["sample_id"].to_pylist() == [2, 5] and stricter["new_label"].to_pylist() == [0, 1]
    assert pq.read_table(tmp_path / "stricter.dropped.parquet").column_names.count("new_label") == 0


def test_a_csv_scores_file_is_refused_with_a_fix(tmp_path) -> None:  # noqa: ANN001
    (tmp_path / "scores.csv").write_text("class_index,label\n0,a\n")
    with pytest.raises(InputError, match="prune reads scores as Parquet"):
        api.prune(tmp_path / "scores.csv", tmp_path / "clean.parquet")


def test_other_class_rule_on_hand_checked_rows() -> None:
    classes = np.array([0, 0, 0, 1, 1, 1])
    readable = np.array([True, True, True, True, False, True])
    dominant = np.ones(6, dtype=bool)
    angle = np.array([30.0, 50.0, 80.0, 40.0, np.nan, 20.0])
    other = np.array([60.0, 45.0, 40.0, np.nan, 10.0, 20.0])
    d = decide(classes, readable, dominant, angle, 2, 75.0, angle_other=other)
    names = [REASONS[r] if r != KEPT else "kept" for r in d.reason]
    # nearer another class (45 < 50) within the angle: other_class; over the angle: angle first; no other class
    # (NaN): kept; exactly as near another class as its own (20 = 20): kept.
    assert names == ["kept", "other_class", "angle", "kept", "unreadable", "kept"]
    without = decide(classes, readable, dominant, angle, 2, 75.0)
    assert [REASONS[r] if r != KEPT else "kept" for r in without.reason][1] == "kept"


def two_mode_angles(clean: int, noise: int, seed: int) -> list[float]:
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.normal(30, 5, clean), rng.normal(90, 8, noise)]).round(2).tolist()


def test_angle_auto_cuts_at_the_valley_and_records_it(scores_file, tmp_path) -> None:  # noqa: ANN001
    from facecleaner.manifests.io import read_metadata
    from facecleaner.pruning.threshold import choose_threshold

    angles = two_mode_angles(800, 200, seed=1)
    classes = [i % 20 for i in range(1000)]
    path = scores_file(classes, angles, [True] * 1000)
    summary = api.prune(path, tmp_path / "clean.parquet", angle="auto")
    grid = np.arange(30, 90, 0.001)  # the mixture density's minimum, from the two normals themselves
    density = 0.8 * np.exp(-0.5 * ((grid - 30) / 5) ** 2) / 5 + 0.2 * np.exp(-0.5 * ((grid - 90) / 8) ** 2) / 8
    assert summary["angle"] == pytest.approx(grid[np.argmin(density)], abs=3.0)
    assert summary["angle"] == choose_threshold(np.array(angles, dtype=np.float32)).angle
    auto = summary["auto_threshold"]
    assert auto["noise_mode"] and auto["noise_share"] == pytest.approx(0.2, abs=0.02)
    dropped = pd.read_parquet(tmp_path / "clean.dropped.parquet")
    assert (dropped["angle"] > summary["angle"]).all() and set(dropped["reason"]) == {"angle"}
    assert len(dropped) == sum(a > summary["angle"] for a in np.array(angles, dtype=np.float32))
    for role in ("clean.parquet", "clean.dropped.parquet", "clean.classes.parquet"):
        meta = read_metadata(tmp_path / role)
        assert meta["angle_threshold"] == summary["angle"] and meta["angle_choice"] == "auto"
        assert meta["auto_threshold"] == auto


def test_angle_auto_without_a_noise_mode_falls_back_to_75(scores_file, tmp_path) -> None:  # noqa: ANN001
    rng = np.random.default_rng(2)
    angles = rng.gamma(9.0, 4.0, 600).round(2).tolist()  # one skewed mode
    path = scores_file([i % 6 for i in range(600)], angles, [True] * 600)
    result = invoke("prune", path, "--out", tmp_path / "clean.parquet", "--angle", "AUTO", "--json")
    assert_ok(result)
    summary = json.loads(result.stdout)
    assert summary["angle"] == 75.0 and not summary["auto_threshold"]["noise_mode"]
    assert "no separate noise mode" in summary["auto_threshold"]["note"]
    human = invoke("prune", path, "--out", tmp_path / "again.parquet", "--angle", "auto")
    assert human.stdout.splitlines()[0].startswith("angle: 75.0° (auto: the angles show no separate noise mode")


def test_drop_other_class_through_the_cli(scores_file, tmp_path) -> None:  # noqa: ANN001
    path = scores_file([0, 0, 1, 1], [20.0, 40.0, 30.0, 80.0], [True] * 4, angle_other=[50.0, 35.0, 29.0, 60.0])
    result = invoke("prune", path, "--out", tmp_path / "c.parquet", "--drop-other-class", "--force", "--json")
    assert_ok(result)
    summary = json.loads(result.stdout)
    assert summary["by_reason"]["other_class"] == 2 and summary["by_reason"]["angle"] == 1
    dropped = pd.read_parquet(tmp_path / "c.dropped.parquet")
    assert dropped.set_index("sample_id")["reason"].to_dict() == {1: "other_class", 2: "other_class", 3: "angle"}
