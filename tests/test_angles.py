"""Scoring geometry on hand-built embeddings and sub-centers whose angles and majorities are known."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch

from facecleaner.manifests.classes import classes_table
from facecleaner.scoring.angles import dominant_subcenters, own_class_cosines, to_degrees
from facecleaner.scoring.measure import Measurements, scores_table, summarize
from facecleaner.scoring.search import OtherClassSearch


def unit(degrees: float) -> list[float]:
    """A unit vector in the x–y plane at ``degrees`` from the x axis (z = 0)."""
    return [math.cos(math.radians(degrees)), math.sin(math.radians(degrees)), 0.0]


# Class 0's sub-centers at 0°, 120°, 240° in the plane; class 1's at +z, -z and 90° in the plane.
SUBCENTERS = torch.tensor([[unit(0), unit(120), unit(240)],
                           [[0, 0, 1.0], [0, 0, -1.0], unit(90)]])


def test_own_cosines_nearest_and_angles_on_known_geometry() -> None:
    x = torch.tensor([unit(10), unit(100), unit(200), unit(-30)])
    y = torch.tensor([0, 0, 0, 0])
    cos = own_class_cosines(x, SUBCENTERS, y)
    expected = np.cos(np.radians([[10, 110, 130], [100, 20, 140], [160, 80, 40], [30, 150, 90]]))
    assert cos.numpy() == pytest.approx(expected, abs=1e-6)
    assert cos.argmax(dim=1).tolist() == [0, 1, 2, 0]
    assert to_degrees(cos.max(dim=1).values.numpy()).tolist() == pytest.approx([10, 20, 40, 30], abs=1e-4)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_nearest_other_class_excludes_own_class(precision: str) -> None:
    x = torch.tensor([unit(80), unit(10), [0.0, 0.6, 0.8]])
    y = torch.tensor([0, 1, 0])
    cls, cos = OtherClassSearch(SUBCENTERS, precision=precision)(x, y)
    assert cls.tolist() == [1, 0, 1]
    # sample 0 at 80°: class 1's nearest is the 90° sub-center (10°); sample 2: +z at acos(0.8).
    assert to_degrees(cos.numpy()).tolist() == pytest.approx([10.0, 10.0, math.degrees(math.acos(0.8))], abs=1e-3)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_single_class_has_no_other_class(precision: str) -> None:
    cls, cos = OtherClassSearch(SUBCENTERS[:1], precision=precision)(torch.tensor([unit(5)]), torch.tensor([0]))
    assert cls.tolist() == [-1] and cos.tolist() == [-math.inf]


def test_dominant_is_majority_with_lowest_index_tie_break() -> None:
    nearest = np.array([2, 2, 1, 0, 0, 1, 1, 0])
    classes = np.array([0, 0, 0, 1, 1, 1, 1, 2])
    dominant, votes = dominant_subcenters(nearest, classes, 4, 3)
    assert dominant.tolist() == [2, 0, 0, 0]  # class 1 ties 2–2 between sub-centers 0 and 1 → 0
    assert votes.tolist() == [[0, 1, 2], [2, 2, 0], [1, 0, 0], [0, 0, 0]]


def test_summarize_measures_angle_to_dominant_not_nearest() -> None:
    # Class 0: three samples near sub-center 0, one near sub-center 2 at 20° from it (and 100° from 0).
    own = np.cos(np.radians([[5, 115, 125], [10, 110, 130], [15, 105, 135], [100, 140, 20], [0, 0, 0]]))
    m = Measurements(readable=np.array([True, True, True, True, False]), reasons=["", "", "", "", "empty file"],
                     own_cosines=own.astype(np.float32), other_class=np.array([1, 1, 1, 1, -1], dtype=np.int32),
                     other_cosine=np.cos(np.radians([50, 60, 70, 30, 0])).astype(np.float32),
                     resized=np.zeros(5, dtype=bool))
    classes = np.array([0, 0, 0, 0, 0])
    scores = summarize(m, classes, 2)
    assert scores.dominant.tolist() == [0, 0]
    assert scores.nearest.tolist() == [0, 0, 0, 2, -1]
    assert scores.angle[:4] == pytest.approx([5, 10, 15, 100], abs=1e-3)
    assert scores.angle_nearest[:4] == pytest.approx([5, 10, 15, 20], abs=1e-3)
    assert np.isnan(scores.angle[4])
    frame = pd.DataFrame({"path": pd.array(list("abcde"), dtype="string"),
                          "rec_index": pd.array([None] * 5, dtype="Int64"),
                          "label": pd.array(["x"] * 5, dtype="string"), "quality": [1, 2, 3, 4, 5]})
    table = scores_table(frame, classes, scores)
    rows = table.to_pylist()
    assert [r["is_dominant"] for r in rows] == [True, True, True, False, None]
    assert rows[4]["status"] == "unreadable: empty file" and rows[4]["angle"] is None
    assert rows[3]["angle_other"] == pytest.approx(30, abs=1e-3)
    assert table.column_names[-1] == "quality"
    per_class = classes_table(classes, table["label"].combine_chunks(), m.readable, scores.nearest,
                              scores.dominant[classes], 3).to_pylist()
    assert per_class == [{"class_index": 0, "label": "x", "samples": 5, "readable": 4, "kept": None,
                          "dominant_subcenter": 0, "nearest_counts": [3, 0, 1], "new_label": None}]
    assert pa.types.is_string(table.schema.field("label").type)
