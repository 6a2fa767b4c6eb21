"""Held-out scoring (``train --folds``): the fold assignment, models that never see their fold, each sample's row
taken from the model that left it out (checked against scoring with that model alone), resumption."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from helpers import assert_error, assert_ok, invoke

from facecleaner import api
from facecleaner.config import TrainConfig
from facecleaner.jobs import train as train_job
from facecleaner.jobs.folds import assign_folds
from facecleaner.sources.synthetic import generate_noisy_faces

TINY = dict(backbone="tiny", image_size=16, embedding_size=16, batch_size=8, epochs=2, device="cpu", seed=3)


@pytest.mark.parametrize("folds", [2, 3, 5])
def test_every_class_is_dealt_round_robin(folds: int) -> None:
    rng = np.random.default_rng(folds)
    class_index = rng.integers(0, 7, 200)
    fold = assign_folds(class_index, folds, seed=1)
    assert fold.dtype == np.int8 and set(np.unique(fold)) <= set(range(folds))
    for c in range(7):
        counts = np.bincount(fold[class_index == c], minlength=folds)
        assert counts.max() - counts.min() <= 1, (c, counts)  # each fold holds its share of every class
    assert np.array_equal(fold, assign_folds(class_index, folds, seed=1))
    assert not np.array_equal(fold, assign_folds(class_index, folds, seed=2))


@pytest.fixture(scope="module")
def folded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("folds")
    data = generate_noisy_faces(root / "data", identities=4, images_per_identity=9, image_size=16, seed=4)
    api.train(data, root / "run", TrainConfig(**TINY), folds=3, progress=False)
    return data, root / "run"


def test_each_model_trains_without_its_fold(folded: tuple[Path, Path]) -> None:
    data, run = folded
    record = json.loads((run / "folds.json").read_text())
    assignment = np.load(run / "folds.npy")
    assert record["folds"] == 3 and record["samples"] == len(assignment) == 36
    for fold in range(3):
        config = json.loads((run / f"fold-{fold + 1}" / "config.json").read_text())
        assert config["samples"] == int((assignment != fold).sum()) == 24
        assert config["classes"] == 4  # every identity, so each model can score every sample
        assert (run / f"fold-{fold + 1}" / "model.pt").is_file()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["folds"] == 3 and len(summary["fold_runs"]) == 3


def test_each_sample_is_scored_by_the_model_that_left_it_out(folded: tuple[Path, Path], tmp_path: Path) -> None:
    data, run = folded
    result = invoke("score", run, data, "--out", tmp_path / "held.parquet", "--device", "cpu", "--embeddings",
                    tmp_path / "held.npy", "--json", "-q")
    assert_ok(result)
    summary = json.loads(result.stdout)
    held = pd.read_parquet(tmp_path / "held.parquet")
    assignment = np.load(run / "folds.npy")
    assert held["sample_id"].tolist() == list(range(36)) and (held["fold"].to_numpy() == assignment + 1).all()
    embeddings = np.load(tmp_path / "held.npy")
    for fold in range(3):  # the independent reference: score with that fold's model alone
        alone = tmp_path / f"alone{fold}.parquet"
        api.score(run / f"fold-{fold + 1}", data, alone, device="cpu", embeddings=tmp_path / f"alone{fold}.npy",
                  progress=False)
        reference = pd.read_parquet(alone)
        rows = assignment == fold
        for column in ("angle", "angle_other", "nearest_subcenter", "dominant_subcenter", "nearest_other_class"):
            assert held[column].to_numpy()[rows].tolist() == reference[column].to_numpy()[rows].tolist(), column
        assert np.array_equal(embeddings[rows], np.load(tmp_path / f"alone{fold}.npy")[rows])
    meta = json.loads(pq.read_schema(tmp_path / "held.parquet").metadata[b"facecleaner"])
    assert meta["folds"] == 3 and len(meta["fold_checkpoints"]) == 3 and meta["health"] == summary["health"]
    assert summary["samples"] == 36 and summary["median_angle"] == pytest.approx(float(held["angle"].median()))
    assert not (tmp_path / "held.parquet.folds").exists()
    assert_ok(invoke("prune", tmp_path / "held.parquet", "--out", tmp_path / "clean.parquet", "--force"))


def test_training_resumes_at_the_unfinished_fold(folded: tuple[Path, Path], tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    data, _ = folded
    run = tmp_path / "run"
    real_run = train_job.train_run
    trained = []

    def train_run(data, out, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        trained.append(Path(out).name)
        if trained == ["fold-1", "fold-2"]:
            raise KeyboardInterrupt  # Ctrl-C as fold 2 starts
        return real_run(data, out, *args, **kwargs)

    monkeypatch.setattr(train_job, "train_run", train_run)  # train_folds looks it up at call time
    with pytest.raises(KeyboardInterrupt):
        api.train(data, run, TrainConfig(**TINY), folds=2, progress=False)
    first = (run / "fold-1" / "model.pt").stat().st_mtime_ns
    assert not (run / "fold-2" / "model.pt").exists()
    assert_error(invoke("train", data, "--out", run, "--folds", "2", "--backbone", "tiny", "-q"), "already holds")
    api.train(data, run, TrainConfig(**TINY), folds=2, resume=True, progress=False)
    assert trained == ["fold-1", "fold-2", "fold-2"]  # fold 1 was not trained again
    assert (run / "fold-1" / "model.pt").stat().st_mtime_ns == first
    assert (run / "fold-2" / "model.pt").is_file()
    result = invoke("train", data, "--out", run, "--folds", "3", "--resume", "-q")
    assert_error(result, "folds 3 (the run has 2)")
    for resume in ([], ["--resume"]):  # a plain run never starts inside, nor resumes, held-out training
        assert_error(invoke("train", data, "--out", run, *resume, "-q"), "holds the models of held-out training")


def test_held_out_scoring_needs_the_data_the_folds_came_from(folded: tuple[Path, Path], tmp_path: Path) -> None:
    data, run = folded
    other = pd.read_parquet(data).iloc[:-1]
    other["path"] = [str(data.parent / p) for p in other["path"]]
    other.to_parquet(tmp_path / "other.parquet")
    result = invoke("score", run, tmp_path / "other.parquet", "--out", tmp_path / "s.parquet", "--device", "cpu")
    assert_error(result, "is not the dataset the folds of")
