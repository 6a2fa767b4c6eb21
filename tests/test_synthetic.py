"""The generated demo set: deterministic, with the noise it claims and a ground truth that agrees with itself."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from facecleaner.errors import InputError
from facecleaner.sources.synthetic import NOISE_KINDS, generate_noisy_faces

SMALL = dict(identities=12, images_per_identity=20, image_size=32, close_set_noise=0.1, open_set_noise=0.15,
             hard_mode_fraction=0.2)


def _digest(root: Path, manifest: pd.DataFrame) -> str:
    """One hash over every image's bytes, in manifest order."""
    digest = hashlib.sha256()
    for path in manifest["path"]:
        digest.update((root / path).read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    root = tmp_path_factory.mktemp("synthetic")
    manifest = generate_noisy_faces(root / "a", seed=7, **SMALL)
    return manifest.parent, pd.read_parquet(manifest)


def test_manifest_schema_and_layout(generated: tuple[Path, pd.DataFrame]) -> None:
    root, frame = generated
    assert list(frame.columns) == ["path", "label", "true_identity", "noise", "is_noise"]
    assert len(frame) == SMALL["identities"] * SMALL["images_per_identity"]
    assert frame["path"].tolist() == sorted(frame["path"])
    assert frame["is_noise"].dtype == bool
    assert set(frame["noise"]) <= set(NOISE_KINDS)
    folders = frame["path"].str.split("/").str[1]
    assert (folders == frame["label"]).all(), "the folder is the (noisy) label"
    assert frame["path"].str.startswith("images/").all()
    on_disk = sorted(p.relative_to(root).as_posix() for p in (root / "images").rglob("*") if p.is_file())
    assert on_disk == frame["path"].tolist(), "exactly the manifest's files, nothing else"
    assert not [p for p in root.iterdir() if p.name.startswith(".")], "no temporary leftovers"


def test_images_decode_to_requested_size_rgb(generated: tuple[Path, pd.DataFrame]) -> None:
    root, frame = generated
    for path in frame["path"]:
        with Image.open(root / path) as img:
            assert img.mode == "RGB"
            assert img.size == (32, 32)
    pixels = np.stack([np.asarray(Image.open(root / p)) for p in frame["path"][:50]])
    assert pixels.std(axis=0).mean() > 10, "images vary"


def test_ground_truth_is_consistent(generated: tuple[Path, pd.DataFrame]) -> None:
    _, frame = generated
    labels = set(frame["label"])
    assert len(labels) == SMALL["identities"]
    kept = frame["noise"].isin(["clean", "clean_hard"])
    assert (frame.loc[kept, "true_identity"] == frame.loc[kept, "label"]).all()
    close = frame[frame["noise"] == "close_set"]
    assert close["true_identity"].isin(labels).all()
    assert (close["true_identity"] != close["label"]).all()
    opened = frame[frame["noise"] == "open_set"]
    assert not opened["true_identity"].isin(labels).any()
    assert opened["true_identity"].str.fullmatch(r"outsider_\d{3,}").all()
    assert (frame["is_noise"] == frame["noise"].isin(["close_set", "open_set"])).all()
    assert opened["true_identity"].value_counts().max() >= 2, "outsiders appear more than once"
    assert frame.groupby("label").size().min() >= 2
    assert (frame[~frame["is_noise"]].groupby("label").size() >= 2).all(), "every identity keeps a clean core"


def test_noise_fractions_match_request(generated: tuple[Path, pd.DataFrame]) -> None:
    _, frame = generated
    n = len(frame)
    counts = frame["noise"].value_counts()
    assert abs(counts.get("close_set", 0) / n - SMALL["close_set_noise"]) <= 1 / n
    assert abs(counts.get("open_set", 0) / n - SMALL["open_set_noise"]) <= 1 / n
    clean = counts.get("clean", 0) + counts.get("clean_hard", 0)
    assert abs(counts.get("clean_hard", 0) / clean - SMALL["hard_mode_fraction"]) < 0.05
    per_label = frame.groupby("label")["is_noise"].sum()
    assert per_label.max() - per_label.min() <= 1, "noise is spread evenly over labels"
    assert (frame[frame["noise"] == "clean_hard"].groupby("label").size() >= 1).all()


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path, generated: tuple[Path, pd.DataFrame]) -> None:
    root, frame = generated
    again = generate_noisy_faces(tmp_path / "b", seed=7, **SMALL)
    assert again.read_bytes() == (root / "manifest.parquet").read_bytes()
    assert _digest(again.parent, frame) == _digest(root, frame)
    other = generate_noisy_faces(tmp_path / "c", seed=8, **SMALL)
    other_frame = pd.read_parquet(other)
    assert _digest(other.parent, other_frame) != _digest(root, frame)
    assert not other_frame.equals(frame)


def test_no_noise_means_all_clean(tmp_path: Path) -> None:
    manifest = generate_noisy_faces(tmp_path, identities=3, images_per_identity=5, close_set_noise=0.0,
                                    open_set_noise=0.0, hard_mode_fraction=0.0)
    frame = pd.read_parquet(manifest)
    assert (frame["noise"] == "clean").all() and not frame["is_noise"].any()


@pytest.mark.parametrize("size", [48, 112])
def test_other_sizes(tmp_path: Path, size: int) -> None:
    manifest = generate_noisy_faces(tmp_path, identities=2, images_per_identity=3, image_size=size)
    frame = pd.read_parquet(manifest)
    with Image.open(tmp_path / frame["path"][0]) as img:
        assert img.size == (size, size) and img.mode == "RGB"


def test_rerun_replaces_previous_set(tmp_path: Path) -> None:
    generate_noisy_faces(tmp_path, identities=4, images_per_identity=6)
    manifest = generate_noisy_faces(tmp_path, identities=2, images_per_identity=3)
    frame = pd.read_parquet(manifest)
    on_disk = sorted(p.relative_to(tmp_path).as_posix() for p in (tmp_path / "images").rglob("*.png"))
    assert on_disk == frame["path"].tolist()


@pytest.mark.parametrize("own_manifest", [False, True])
def test_refuses_to_overwrite_foreign_images(tmp_path: Path, own_manifest: bool) -> None:
    (tmp_path / "images" / "mine").mkdir(parents=True)
    (tmp_path / "images" / "mine" / "photo.png").write_bytes(b"keep me")
    if own_manifest:  # the user's own path,label manifest is not a generated set either
        pd.DataFrame({"path": ["images/mine/photo.png"], "label": ["mine"]}).to_parquet(tmp_path / "manifest.parquet")
    with pytest.raises(InputError):
        generate_noisy_faces(tmp_path, identities=2, images_per_identity=3)
    assert (tmp_path / "images" / "mine" / "photo.png").read_bytes() == b"keep me"


@pytest.mark.parametrize("kwargs", [dict(identities=1), dict(images_per_identity=1), dict(image_size=8),
                                    dict(close_set_noise=0.6, open_set_noise=0.5), dict(open_set_noise=-0.1),
                                    dict(images_per_identity=2, close_set_noise=0.5, open_set_noise=0.4)])
def test_bad_arguments_are_refused(tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(InputError):
        generate_noisy_faces(tmp_path, **kwargs)
