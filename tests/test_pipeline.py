"""End to end on generated data: train → score → prune drops planted noise; resume is bit-for-bit."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from facecleaner import api
from facecleaner.config import TrainConfig
from facecleaner.jobs import train as train_job
from facecleaner.scoring.health import assess
from facecleaner.sources import dataset
from facecleaner.sources.synthetic import generate_noisy_faces
from facecleaner.training import loop

TINY = dict(backbone="tiny", image_size=24, embedding_size=32, batch_size=32, device="cpu")


@pytest.fixture(scope="module")
def noisy_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("noisy")
    return generate_noisy_faces(root, identities=12, images_per_identity=20, image_size=24, close_set_noise=0.1,
                                open_set_noise=0.1, seed=3)


@pytest.mark.slow
def test_planted_noise_is_dropped_far_more_often_than_clean(noisy_set: Path, tmp_path: Path) -> None:
    summary = api.train(noisy_set, tmp_path / "run", TrainConfig(epochs=30, **TINY), progress=False)
    assert summary["separated"], summary["warning"]
    scored = api.score(tmp_path / "run", noisy_set, tmp_path / "scores.parquet", device="cpu", progress=False)
    assert scored["median_angle"] < 60
    api.prune(tmp_path / "scores.parquet", tmp_path / "clean.parquet")
    clean = pd.read_parquet(tmp_path / "clean.parquet")
    truth = pd.read_parquet(noisy_set)
    dropped = ~truth.index.isin(clean.sample_id)
    noise = truth.is_noise.to_numpy()
    noise_drop_rate = dropped[noise].mean()
    clean_drop_rate = dropped[~noise].mean()
    assert noise_drop_rate > 0.5, (noise_drop_rate, clean_drop_rate)
    assert noise_drop_rate > 5 * clean_drop_rate, (noise_drop_rate, clean_drop_rate)


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    payload = torch.load(run_dir / "model.pt", weights_only=True)
    return {**{f"b.{k}": v for k, v in payload["backbone"].items()},
            **{f"h.{k}": v for k, v in payload["head"].items()}}


@pytest.mark.parametrize("stop_at_step", [9, 14])  # mid-epoch, and the first step of an epoch
def test_resume_after_sigterm_is_bit_for_bit(noisy_set: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             stop_at_step: int) -> None:
    config = TrainConfig(epochs=3, seed=5, **TINY)
    api.train(noisy_set, tmp_path / "straight", config, progress=False)

    real_lr_factor = loop.lr_factor

    def sigterm_once(step: int, *args: int) -> float:
        if step == stop_at_step:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_lr_factor(step, *args)

    monkeypatch.setattr(loop, "lr_factor", sigterm_once)
    with pytest.raises(loop.Interrupted, match="--resume"):
        api.train(noisy_set, tmp_path / "resumed", config, progress=False)
    assert not (tmp_path / "resumed" / "model.pt").exists()
    monkeypatch.setattr(loop, "lr_factor", real_lr_factor)
    api.train(noisy_set, tmp_path / "resumed", config, resume=True, progress=False)

    straight, resumed = _weights(tmp_path / "straight"), _weights(tmp_path / "resumed")
    assert straight.keys() == resumed.keys()
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name
    lines = (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3


def test_score_embeddings_file_holds_unit_vectors(noisy_set: Path, tmp_path: Path) -> None:
    api.train(noisy_set, tmp_path / "run", TrainConfig(epochs=1, **TINY), progress=False)
    api.score(tmp_path / "run", noisy_set, tmp_path / "s.parquet", device="cpu", embeddings=tmp_path / "e.npy",
              progress=False)
    embeddings = np.load(tmp_path / "e.npy")
    assert embeddings.shape == (len(pd.read_parquet(noisy_set)), 32) and embeddings.dtype == np.float16
    assert np.allclose(np.linalg.norm(embeddings.astype(np.float32), axis=1), 1.0, atol=1e-2)
    assert not list(tmp_path.glob(".*tmp*"))


def test_clean_set_exported_to_rec_retrains_with_one_subcenter(noisy_set: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from facecleaner.cli import main
    from facecleaner.sources import open_source

    api.train(noisy_set, tmp_path / "run", TrainConfig(epochs=2, **TINY), progress=False)
    api.score(tmp_path / "run", noisy_set, tmp_path / "scores.parquet", device="cpu", progress=False)
    api.prune(tmp_path / "scores.parquet", tmp_path / "clean.parquet", force=True)
    result = CliRunner().invoke(main, ["export", str(tmp_path / "clean.parquet"), "--format", "rec",
                                       "--out", str(tmp_path / "rec"), "--json", "-q"])
    assert result.exit_code == 0, result.output
    clean = pd.read_parquet(tmp_path / "clean.parquet")
    records = open_source(tmp_path / "rec").table()
    assert len(records) == len(clean)
    assert sorted(records.label.tolist()) == sorted(clean.new_label.tolist())
    retrained = api.train(tmp_path / "rec", tmp_path / "k1", TrainConfig(epochs=1, subcenters=1, **TINY),
                          progress=False)
    assert retrained["classes"] == clean.new_label.nunique()
    assert retrained["config"]["subcenters"] == 1


def test_in_process_training_decodes_each_image_once(noisy_set: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The in-process loader keeps decoded images (second epoch decodes nothing); without the cache the same
    weights come out, decoding every epoch."""
    decoded: list[int] = []
    monkeypatch.setattr(train_job, "_guard", lambda *args: assess(np.array([30.0])))  # decodes on its own
    real_decode = dataset.decode_and_resize
    monkeypatch.setattr(dataset, "decode_and_resize", lambda *args: decoded.append(1) or real_decode(*args))
    samples = len(pd.read_parquet(noisy_set))
    config = TrainConfig(epochs=2, seed=1, workers=0, **TINY)
    api.train(noisy_set, tmp_path / "cached", config, progress=False)
    assert len(decoded) <= samples
    decoded.clear()
    monkeypatch.setattr(dataset, "MEMORY_CACHE_BYTES", 0)
    api.train(noisy_set, tmp_path / "uncached", config, progress=False)
    assert len(decoded) > samples
    cached, uncached = _weights(tmp_path / "cached"), _weights(tmp_path / "uncached")
    assert all(torch.equal(cached[name], uncached[name]) for name in cached)


def test_worker_processes_change_nothing(noisy_set: Path, tmp_path: Path) -> None:
    """Decoding in persistent workers across epochs yields the same batches, so the same weights."""
    for workers in (0, 2):
        api.train(noisy_set, tmp_path / f"w{workers}", TrainConfig(epochs=2, seed=1, workers=workers, **TINY),
                  progress=False)
    inline, pooled = _weights(tmp_path / "w0"), _weights(tmp_path / "w2")
    assert all(torch.equal(inline[name], pooled[name]) for name in inline)
