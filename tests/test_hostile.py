"""Hostile input end to end: names that are not UTF-8, repeated paths, odd image sizes, a cut-off RecordIO file."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from helpers import assert_error, assert_ok, invoke
from PIL import Image

from facecleaner.cli import main
from facecleaner.sources.recordio import RecordIOWriter

TRAIN = ["--backbone", "tiny", "--image-size", "16", "--embedding-size", "8", "--epochs", "1", "--batch-size", "4",
         "--device", "cpu", "-q"]


def _face(path: Path, seed: int, size: tuple[int, int] = (20, 20)) -> None:
    rng = np.random.default_rng(seed)
    Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype(np.uint8)).save(path)


@pytest.mark.skipif(os.name != "posix", reason="non-UTF-8 file names need a POSIX file system")
def test_non_utf8_names_spaces_and_odd_sizes_are_scored(tmp_path: Path) -> None:
    root = tmp_path / "faces"
    for who in ("alice", "bob"):
        (root / who).mkdir(parents=True)
        for i in range(4):
            _face(root / who / f"{i}.png", seed=i + (10 if who == "bob" else 0), size=(20 + 7 * i, 30))
    os.rename(os.fsencode(root / "alice" / "0.png"), os.fsencode(root / "alice") + b"/\xff\xfe odd name.png")
    runner = CliRunner()
    assert runner.invoke(main, ["train", str(root), "--out", str(tmp_path / "run"), *TRAIN]).exit_code == 0
    result = runner.invoke(main, ["score", str(tmp_path / "run"), str(root), "--out", str(tmp_path / "s.parquet"),
                                  "--json", "-q"])
    assert result.exit_code == 0, result.output
    scores = pd.read_parquet(tmp_path / "s.parquet")
    assert len(scores) == 8 and (scores.status == "ok").all()
    assert '"resized": 8' in result.stdout  # every image was 20-41 × 30 px, the model takes 16 × 16
    assert "alice/\\xff\\xfe odd name.png" in scores.path.tolist()


def test_repeated_paths_are_each_scored_and_counted(tmp_path: Path) -> None:
    for i in range(6):
        _face(tmp_path / f"{i}.png", seed=i)
    rows = [(f"{i}.png", "a" if i < 3 else "b") for i in range(6)] + [("0.png", "a"), ("0.png", "b")]
    pd.DataFrame(rows, columns=["path", "label"]).to_csv(tmp_path / "m.csv", index=False)
    runner = CliRunner()
    trained = runner.invoke(main, ["train", str(tmp_path / "m.csv"), "--out", str(tmp_path / "run"), *TRAIN])
    assert trained.exit_code == 0, trained.output
    result = runner.invoke(main, ["score", str(tmp_path / "run"), str(tmp_path / "m.csv"), "--out",
                                  str(tmp_path / "s.parquet"), "--json", "-q"])
    assert result.exit_code == 0, result.output
    assert '"duplicate_paths": 2' in result.stdout
    assert len(pd.read_parquet(tmp_path / "s.parquet")) == 8


def test_csv_labels_with_leading_zeros_stay_distinct_text(tmp_path: Path) -> None:
    from facecleaner.sources import open_source

    (tmp_path / "codes.csv").write_text("path,label\na.png,007\nb.png,7\nc.png,0042\n")
    (tmp_path / "ints.csv").write_text("path,label\na.png,7\nb.png,-3\nc.png,0\n")
    codes = open_source(tmp_path / "codes.csv").table()["label"]
    ints = open_source(tmp_path / "ints.csv").table()["label"]
    assert codes.tolist() == ["007", "7", "0042"] and codes.dtype == "string"
    assert ints.tolist() == [7, -3, 0] and pd.api.types.is_integer_dtype(ints.dtype)


def _truncatable_recordio(folder: Path) -> tuple[Path, dict[int, int]]:
    """Two identities × 4 JPEG images as insightface lays them out: keys 1-8, identity records 9 and 10."""
    with RecordIOWriter(folder) as writer:
        for i in range(8):
            pixels = (np.random.default_rng(i).random((16, 16, 3)) * 60 + (0 if i < 4 else 150)).astype(np.uint8)
            data = io.BytesIO()
            Image.fromarray(pixels).save(data, format="JPEG")
            writer.write(i // 4, data.getvalue())
    lines = (folder / "train.idx").read_text().split()
    return folder / "train.rec", {int(k): int(o) for k, o in zip(lines[::2], lines[1::2], strict=True)}


def test_a_cut_off_recordio_file_trains_and_scores_with_the_cut_image_unreadable(tmp_path: Path) -> None:
    rec, offsets = _truncatable_recordio(tmp_path / "rec")
    assert sorted(offsets) == list(range(11))
    full = rec.read_bytes()
    lenient = ["--max-bad-fraction", "0.5", "--json"]
    # Cut in the middle of the last image's bytes: its row stays, unreadable, and the set trains and scores.
    rec.write_bytes(full[:offsets[8] + 100])
    trained = invoke("train", rec, "--out", tmp_path / "run", *TRAIN, *lenient)
    assert_ok(trained)
    assert json.loads(trained.stdout)["unreadable"] == 1 and json.loads(trained.stdout)["samples"] == 8
    scored = invoke("score", tmp_path / "run", rec, "--out", tmp_path / "cut.parquet", "-q", *lenient)
    assert_ok(scored)
    assert json.loads(scored.stdout)["unreadable"] == 1
    scores = pd.read_parquet(tmp_path / "cut.parquet")
    assert scores.rec_index.tolist() == list(range(1, 9)) and scores.label.tolist() == [0] * 4 + [1] * 4
    assert (scores.status[:7] == "ok").all()
    assert scores.status[7].startswith(f"unreadable: {rec}: record key 8 at offset {offsets[8]}: ")
    assert scores.status[7].endswith("(truncated)") and pd.isna(scores.angle[7])
    # Only the identity records after the images cut off: nothing is lost.
    rec.write_bytes(full[:offsets[9] + 5])
    assert_ok(invoke("score", tmp_path / "run", rec, "--out", tmp_path / "tail.parquet", "-q", *lenient))
    assert (pd.read_parquet(tmp_path / "tail.parquet").status == "ok").all()
    # Cut inside the last image's header: its identity is lost, so both refuse up front, naming the key.
    rec.write_bytes(full[:offsets[8] + 20])
    for command in (["train", rec, "--out", tmp_path / "run2", *TRAIN],
                    ["score", tmp_path / "run", rec, "--out", tmp_path / "head.parquet", "-q"]):
        assert_error(invoke(*command), f"1 of the 8 images of {rec} have no readable label",
                     f"record key 8 at offset {offsets[8]}", "truncated", "re-download")
    assert not (tmp_path / "run2" / "model.pt").exists() and not (tmp_path / "head.parquet").exists()
