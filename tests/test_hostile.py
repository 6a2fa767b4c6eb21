"""Hostile file-system input end to end: names that are not UTF-8, repeated paths, odd image sizes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image

from facecleaner.cli import main

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
