"""The drop rule: hand-checked cases and property tests of the invariants every prune must keep."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from facecleaner import api
from facecleaner.errors import InputError, PruneRefused
from facecleaner.jobs import prune as prune_job
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
    with pytest.raises(InputError, match="outside \\(0, 180\\)"):
        api.prune(path, tmp_path / "clean.parquet", angle=angle)


def test_prune_rejects_files_that_are_not_scores(tmp_path, scores_file) -> None:  # noqa: ANN001
    foreign = tmp_path / "foreign.parquet"
    pd.DataFrame({"path": ["a"], "label": [1]}).to_parquet(foreign)
    with pytest.raises(InputError, match="not a facecleaner manifest"):
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
    monkeypatch.setattr(prune_job, "ROW_GROUP_ROWS", 7)
    api.prune(path, tmp_path / "batched.parquet", force=True, min_images=3)
    for suffix in ("", ".dropped", ".classes"):
        whole = pd.read_parquet(tmp_path / f"whole{suffix}.parquet")
        batched = pd.read_parquet(tmp_path / f"batched{suffix}.parquet")
        pd.testing.assert_frame_equal(whole, batched)
    assert len(pd.read_parquet(tmp_path / "batched.parquet")) + len(
        pd.read_parquet(tmp_path / "batched.dropped.parquet")) == n


def test_detection_metrics_of_a_clean_manifest_by_hand() -> None:
    is_noise = np.array([True, True, False, False, False])
    figures = kept_detection_metrics(np.array([1, 2, 3]), is_noise)  # rows 0 and 4 dropped: one hit, one miss
    assert figures == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "clean_kept": pytest.approx(2 / 3),
                       "dropped": 2, "noise": 2}
