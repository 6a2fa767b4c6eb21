"""Manifests that users edited with pandas (or duckdb) before exporting: no facecleaner metadata, CSV instead of
Parquet, their own label column, RecordIO rows whose train.rec the metadata no longer names; and exports whose
DEST would overwrite or hold their inputs. Every outcome is checked against the images written or an exact error."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from helpers import assert_error, assert_ok, check_insightface_layout, invoke
from PIL import Image

from facecleaner import api
from facecleaner.manifests.schema import METADATA_KEY
from facecleaner.sources.recordio import RecordIOWriter

#: Eleven identities, so that integer folder names are zero-padded ("00".."10") and text ones would not be.
NAMES = ["ann", "bob", "cat", "dan", "eve", "fay", "gus", "hal", "ivy", "jon", "kim"]


def jpeg(seed: int) -> bytes:
    """A JPEG of insightface's 112 × 112, which a rec export stores byte for byte."""
    pixels = np.random.default_rng(seed).integers(0, 256, (112, 112, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=90)
    return out.getvalue()


@pytest.fixture
def clean(tmp_path: Path, scores_file) -> Path:  # noqa: ANN001
    """data/<name>/<i>.jpg, two images per identity, scored (input_root = data) and pruned into run/."""
    data = tmp_path / "data"
    labels = [name for name in NAMES for _ in range(2)]
    paths = [f"{name}/{i}.jpg" for i, name in enumerate(labels)]
    for i, path in enumerate(paths):
        (data / path).parent.mkdir(parents=True, exist_ok=True)
        (data / path).write_bytes(jpeg(i))
    (tmp_path / "run").mkdir()
    scores = scores_file([NAMES.index(name) for name in labels], [10.0] * len(labels), [True] * len(labels),
                         labels=labels, paths=paths, name="run/scores.parquet", input_root=str(data))
    api.prune(scores, tmp_path / "run" / "clean.parquet")
    return tmp_path / "run" / "clean.parquet"


def image_of(data: Path, relative: str) -> bytes:
    return (data / relative).read_bytes()


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_readme_recipe_drop_one_identity_with_pandas_then_export_rec(clean: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    # The README recipe: drop an identity, renumber new_label to stay contiguous, save (pandas drops our metadata).
    frame = pd.read_parquet(clean)
    kept = frame[frame["label"] != "bob"].copy()
    kept["new_label"] = pd.factorize(kept["new_label"], sort=True)[0]
    edited = tmp_path / "run" / "no_bob.parquet"
    kept.to_parquet(edited, index=False)
    assert METADATA_KEY not in (pq.read_schema(edited).metadata or {})
    # Relative paths start from the manifest's folder unless --root says otherwise: here, nothing is there.
    missing = assert_error(invoke("export", edited, "--format", "rec", "--out", tmp_path / "rec"),
                           "none of the 20 images", "--root")
    assert "facecleaner bug" not in missing and not (tmp_path / "rec").exists()
    assert_ok(invoke("export", edited, "--format", "rec", "--out", tmp_path / "rec", "--root", data))
    labels, images = check_insightface_layout(tmp_path / "rec")
    assert (tmp_path / "rec" / "property").read_text() == "10,112,112\n"
    assert len(images) == 20 and sorted(set(labels)) == list(range(10))
    expected = sorted((NAMES.index(name) - (NAMES.index(name) > 1), image_of(data, path))
                      for name, path in zip(frame["label"], frame["path"], strict=True) if name != "bob")
    assert sorted(zip(labels, images, strict=True)) == expected


def test_a_root_that_is_a_file_is_refused_for_image_files(clean: Path, tmp_path: Path) -> None:
    """It used to be ignored: paths resolved against the manifest's folder while the error said '--root'."""
    edited = tmp_path / "run" / "edited.csv"
    pd.read_parquet(clean).to_csv(edited, index=False)
    not_a_folder = tmp_path / "data" / "ann" / "0.jpg"
    line = assert_error(invoke("export", edited, "--format", "csv", "--out", tmp_path / "list.csv", "--root",
                               not_a_folder), f"--root {not_a_folder} is a file", "give the folder")
    assert "facecleaner bug" not in line and not (tmp_path / "list.csv").exists()


def test_a_csv_manifest_exports_like_the_parquet_it_came_from(clean: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    as_csv = data / "clean.csv"  # beside the images: relative paths resolve against its folder
    pd.read_parquet(clean).to_csv(as_csv, index=False)
    assert_ok(invoke("export", clean, "--format", "folder", "--out", tmp_path / "from_parquet", "--link", "copy"))
    assert_ok(invoke("export", as_csv, "--format", "folder", "--out", tmp_path / "from_csv", "--link", "copy"))
    assert tree(tmp_path / "from_csv") == tree(tmp_path / "from_parquet")
    assert sorted(p.name for p in (tmp_path / "from_csv").iterdir()) == [f"{i:02d}" for i in range(11)]
    assert_ok(invoke("export", as_csv, "--format", "lst", "--out", tmp_path / "train.lst"))
    lines = (tmp_path / "train.lst").read_text().splitlines()
    assert [line.split("\t")[1] for line in lines] == [str(i // 2) for i in range(22)]


def test_any_column_can_hold_the_labels(clean: Path, tmp_path: Path) -> None:
    frame = pd.read_parquet(clean)
    frame["person"] = frame["label"].str.upper()
    edited = tmp_path / "data" / "people.parquet"
    frame.to_parquet(edited)
    assert_ok(invoke("export", edited, "--format", "folder", "--out", tmp_path / "out", "--label-column", "person"))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [name.upper() for name in NAMES]
    assert sorted(p.name for p in (tmp_path / "out" / "BOB").iterdir()) == ["2.jpg", "3.jpg"]
    line = assert_error(invoke("export", edited, "--format", "csv", "--out", tmp_path / "x.csv",
                               "--label-column", "identity"), "no column 'identity'", "--label-column label")
    assert "facecleaner bug" not in line
    mine = tmp_path / "data" / "mine.csv"  # a list of the user's own: path,label only
    frame[["path", "label"]].to_csv(mine, index=False)
    assert_error(invoke("export", mine, "--format", "csv", "--out", tmp_path / "x.csv"),
                 "no column 'new_label'", "--label-column label")
    assert_ok(invoke("export", mine, "--format", "csv", "--out", tmp_path / "x.csv", "--label-column", "label"))
    assert (tmp_path / "x.csv").read_text().splitlines()[1] == f"{tmp_path / 'data' / 'ann' / '0.jpg'},ann"


def test_errors_count_rows_from_one_and_csv_lines_from_the_header(clean: Path, tmp_path: Path) -> None:
    frame = pd.read_parquet(clean)
    frame.loc[2, "new_label"] = None  # pandas makes the column float; the null is on the third row
    frame.to_parquet(tmp_path / "data" / "holes.parquet")
    frame.to_csv(tmp_path / "data" / "holes.csv", index=False)
    assert_error(invoke("export", tmp_path / "data" / "holes.parquet", "--format", "csv", "--out", tmp_path / "a.csv"),
                 "no new_label on row 3")
    assert_error(invoke("export", tmp_path / "data" / "holes.csv", "--format", "csv", "--out", tmp_path / "a.csv"),
                 "no new_label on line 4")
    assert_error(invoke("export", clean, "--format", "lst", "--out", tmp_path / "a.lst", "--label-column", "label"),
                 "'ann' (row 1)")
    frame.loc[2, "new_label"] = 1.5
    frame.to_parquet(tmp_path / "data" / "half.parquet")
    assert_error(invoke("export", tmp_path / "data" / "half.parquet", "--format", "csv", "--out", tmp_path / "a.csv"),
                 "new_label on row 3 is 1.5")


def test_a_manifest_edited_with_pyarrow_keeps_its_input_root_and_is_not_mixed(clean: Path, tmp_path: Path) -> None:
    table = pq.read_table(clean)
    pq.write_table(table.slice(0, 6), clean)  # our metadata kept, its row counts now stale
    result = invoke("export", clean, "--format", "csv", "--out", tmp_path / "a.csv")
    assert_ok(result)
    assert "rerun prune" not in result.stderr and len((tmp_path / "a.csv").read_text().splitlines()) == 7


@pytest.fixture
def rec_clean(tmp_path: Path, scores_file) -> tuple[Path, Path, list[bytes]]:  # noqa: ANN001
    labels = [4, 4, 2, 2, 9, 9]
    images = [jpeg(i) for i in range(len(labels))]
    with RecordIOWriter(tmp_path / "src") as writer:
        keys = [writer.write(label, image) for label, image in zip(labels, images, strict=True)]
    rec = tmp_path / "src" / "train.rec"
    scores = scores_file([sorted(set(labels)).index(label) for label in labels], [10.0] * 6, [True] * 6,
                         labels=labels, paths=[None] * 6, rec_index=keys, input_root=str(rec))
    api.prune(scores, tmp_path / "clean.parquet")
    return tmp_path / "clean.parquet", rec, images


def test_recordio_rows_of_an_edited_manifest_need_root_naming_the_rec(rec_clean, tmp_path: Path) -> None:  # noqa: ANN001
    clean, rec, images = rec_clean
    frame = pd.read_parquet(clean)
    edited = tmp_path / "edited.parquet"
    frame[frame["label"] != 2].to_parquet(edited)
    assert_error(invoke("export", edited, "--format", "folder", "--out", tmp_path / "out"),
                 "4 RecordIO records", "--root PATH/TO/train.rec")
    assert not (tmp_path / "out").exists()
    assert_ok(invoke("export", edited, "--format", "folder", "--out", tmp_path / "out", "--root", rec))
    written = tree(tmp_path / "out")
    assert sorted(written) == ["1/1.jpg", "1/2.jpg", "2/5.jpg", "2/6.jpg"]  # new_label (4 → 1, 9 → 2) / rec_index
    assert sorted(written.values()) == sorted([images[0], images[1], images[4], images[5]])


@pytest.mark.parametrize(("fmt", "target", "fragment"), [
    ("csv", "clean.parquet", "is the manifest"),
    ("lst", "link.parquet", "is the manifest"),
    ("csv", "clean.classes.parquet", "is the manifest's classes file"),
    ("csv", "clean.dropped.parquet", "is the manifest's dropped file"),
    ("rec", ".", "holds the manifest"),
    ("folder", ".", "holds the manifest"),
    ("folder", "clean.parquet", "is the manifest"),
])
def test_outputs_that_are_or_hold_the_manifest_are_refused(clean: Path, tmp_path: Path, fmt: str, target: str,
                                                           fragment: str) -> None:
    run = clean.parent
    (run / "link.parquet").symlink_to(clean)
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    line = assert_error(invoke("export", clean, "--format", fmt, "--out", run / target), "--out", fragment)
    assert "facecleaner bug" not in line
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


def test_a_dropped_file_elsewhere_is_protected_through_the_metadata(scores_file, tmp_path: Path) -> None:  # noqa: ANN001
    scores = scores_file([0, 0, 1, 1], [10.0, 20.0, 80.0, 40.0], [True] * 4)
    os.makedirs(tmp_path / "img")
    for i in range(4):
        (tmp_path / "img" / f"{i}.jpg").write_bytes(jpeg(i))
    api.prune(scores, tmp_path / "clean.parquet", dropped=tmp_path / "rejects" / "d.parquet")
    dropped = (tmp_path / "rejects" / "d.parquet").read_bytes()
    assert_error(invoke("export", tmp_path / "clean.parquet", "--format", "csv", "--out",
                        tmp_path / "rejects" / "d.parquet"), "is the manifest's dropped companion")
    assert (tmp_path / "rejects" / "d.parquet").read_bytes() == dropped
