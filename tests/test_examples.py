"""The scripts in examples/ run as documented (at toy sizes), so they cannot rot unnoticed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from facecleaner.sources import open_source
from facecleaner.sources.synthetic import generate_noisy_faces

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TOY_TRAIN = ["--backbone", "tiny", "--image-size", "16", "--embedding-size", "16", "--epochs", "10",
             "--batch-size", "8", "--device", "cpu"]


def test_threshold_sweep_figures_match_its_manifests(tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    result = subprocess.run([sys.executable, str(EXAMPLES / "threshold_sweep.py"), "--out", str(out),
                             "--identities", "6", "--images-per-identity", "12", "--epochs", "10", "--lr", "0.05",
                             "--angles", "75", "90"], capture_output=True, text=True, check=True)
    rows = [line.split() for line in result.stdout.splitlines()[1:]]
    assert [(r[0], r[1]) for r in rows] == [("75", "paper"), ("75", "drop_non_dominant"), ("90", "paper"),
                                          ("90", "drop_non_dominant")]
    truth = pd.read_parquet(out / "data" / "manifest.parquet")["is_noise"].to_numpy()
    recall = {}
    for angle, rule, precision, printed_recall, _ in rows:
        kept = pd.read_parquet(out / f"clean_{rule}_{angle}.parquet")["sample_id"].to_numpy()
        dropped = np.ones(len(truth), dtype=bool)
        dropped[kept] = False
        hits = (dropped & truth).sum()
        assert float(precision) == pytest.approx(hits / max(dropped.sum(), 1), abs=5e-4)
        assert float(printed_recall) == pytest.approx(hits / truth.sum(), abs=5e-4)
        recall[angle, rule] = hits / truth.sum()
    assert recall["90", "paper"] <= recall["75", "paper"]  # a higher threshold never drops more
    assert recall["75", "drop_non_dominant"] >= recall["75", "paper"]


def test_clean_folder_dataset_script_runs_the_papers_loop(tmp_path: Path) -> None:
    generate_noisy_faces(tmp_path / "noisy", identities=6, images_per_identity=12, image_size=16, seed=2)
    work = tmp_path / "work"
    env = {**os.environ, "FACECLEANER": f"{sys.executable} -m facecleaner"}
    result = subprocess.run(["bash", str(EXAMPLES / "clean_folder_dataset.sh"), str(tmp_path / "noisy" / "images"),
                             str(work), *TOY_TRAIN], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    clean = pd.read_parquet(work / "clean.parquet")
    assert 0 < len(clean) < 72
    assert len(open_source(work / "clean_rec").table()) == len(clean)
    retrained = json.loads((work / "retrained" / "config.json").read_text())["train"]
    assert retrained["subcenters"] == 1
    assert (work / "retrained" / "model.pt").is_file()


def test_clean_folder_dataset_script_usage() -> None:
    result = subprocess.run(["bash", str(EXAMPLES / "clean_folder_dataset.sh")], capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.startswith("usage:")
