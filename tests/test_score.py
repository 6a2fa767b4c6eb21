"""score's reliability: outputs that are inputs, non-finite models and embeddings, any batch layout, resuming
after a crash, leftovers of dead runs, and the messages and usage errors of its options.

Models here are untrained tiny networks (a random init is as good as a trained one for checking the geometry
against an independent computation) on 16×16 random-pixel images, so every test runs in a few seconds.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import random
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from helpers import assert_error, assert_ok, invoke
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from facecleaner import api, fileio
from facecleaner.errors import FaceCleanerError, InputError
from facecleaner.model import checkpoint, prepare_images
from facecleaner.model.checkpoint import ModelSpec, save_model
from facecleaner.sources.dataset import DecodedImages
from facecleaner.sources.recordio import RecordIOWriter

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["ann", "ben", "cat", "dan"]
IMAGES = 24
SUBCENTERS = 3


def build_model(run: Path, seed: int = 0) -> Path:
    """An untrained tiny model over CLASSES, saved as RUN_DIR/model.pt."""
    torch.manual_seed(seed)
    spec = ModelSpec(backbone="tiny", embedding_size=16, image_size=16, subcenters=SUBCENTERS, scale=16.0,
                     margin=0.5, classes=CLASSES)
    backbone, head = spec.build()
    run.mkdir(parents=True)
    save_model(run / "model.pt", spec, backbone, head)
    return run


def write_manifest(path: Path, paths: list[str], labels: list[str] | None = None) -> Path:
    labels = labels if labels is not None else [CLASSES[i % len(CLASSES)] for i in range(len(paths))]
    pd.DataFrame({"path": paths, "label": labels, "quality": np.arange(len(paths)) / 10}).to_csv(path, index=False)
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def work_area(out: Path) -> Path:
    return out.with_name(out.name + ".resume")


@dataclass
class Scene:
    root: Path
    run: Path
    images: list[str]  # relative to root
    manifest: Path  # every image, labels cycling through CLASSES
    unit: np.ndarray  # each image embedded alone, float64 unit vectors (IMAGES, D)
    subcenters: np.ndarray  # float64 unit sub-centers (C, K, D)


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Scene:
    root = tmp_path_factory.mktemp("score")
    run = build_model(root / "run")
    images = []
    for i in range(IMAGES):
        pixels = np.random.default_rng(i).integers(0, 256, (16, 16, 3), dtype=np.uint8)
        images.append(f"img/{i}.png")
        (root / "img").mkdir(exist_ok=True)
        Image.fromarray(pixels).save(root / images[-1])
    model = checkpoint.load_model(run)
    model.backbone.eval()
    with torch.no_grad():
        unit = []
        for name in images:  # one image at a time: the independent reference for batched scoring
            pixels = torch.from_numpy(np.array(Image.open(root / name).convert("RGB")))[None]
            embedding = model.backbone(prepare_images(pixels, torch.device("cpu"))).double()
            unit.append(torch.nn.functional.normalize(embedding, dim=1)[0].numpy())
    weight = torch.nn.functional.normalize(model.head.weight.detach().double(), dim=1)
    return Scene(root, run, images, write_manifest(root / "all.csv", images), np.array(unit),
                 weight.view(len(CLASSES), SUBCENTERS, -1).numpy())


def score_cli(scene: Scene, data: Path, out: Path, *options: object):  # noqa: ANN201 - click's Result
    return invoke("score", scene.run, data, "--out", out, "--device", "cpu", *options)


# --- 1: outputs that resolve to inputs are refused before any work ------------------------------------------------

@pytest.fixture
def no_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail any test that decodes an image: the refusals below must come before any work."""
    def refuse(self, index):  # noqa: ANN001, ANN202
        raise AssertionError("an image was decoded")

    monkeypatch.setattr(DecodedImages, "__getitem__", refuse)


def test_out_that_is_data_is_refused(scene: Scene, tmp_path: Path, no_decoding: None) -> None:
    data = tmp_path / "m.parquet"
    pd.read_csv(scene.manifest).assign(path=lambda f: [str(scene.root / p) for p in f.path]).to_parquet(data)
    link = tmp_path / "link.parquet"
    link.symlink_to(data)
    before = sha256(data)
    for out in (data, link, tmp_path / "sub" / ".." / "m.parquet"):
        assert_error(score_cli(scene, data, out, "-q"), "--out", "is the DATA", str(data))
    # DATA named like the classes file that --out would write beside itself
    classes_named = tmp_path / "s.classes.parquet"
    classes_named.write_bytes(data.read_bytes())
    assert_error(score_cli(scene, classes_named, tmp_path / "s.parquet", "-q"), "--out (its classes file)",
                 "is the DATA")
    assert sha256(data) == before and sha256(classes_named) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.parquet", "m.parquet", "s.classes.parquet"]


def test_outputs_that_are_the_model_or_each_other_are_refused(scene: Scene, tmp_path: Path) -> None:
    ours = tmp_path / "ours.parquet"
    assert_ok(score_cli(scene, scene.manifest, ours, "-q"))
    ours_classes = ours.with_name("ours.classes.parquet")
    model = scene.run / "model.pt"
    link = tmp_path / "e.npy"
    link.symlink_to(model)
    before = {p: sha256(p) for p in (ours, ours_classes, model)}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(DecodedImages, "__getitem__", lambda self, i: (_ for _ in ()).throw(AssertionError(i)))
        # A scores manifest is a valid DATA; its own classes file is an input too.
        assert_error(score_cli(scene, ours, ours_classes, "-q"), "--out", "is the DATA's classes file")
        assert_error(score_cli(scene, scene.manifest, model, "-q"), "--out", "is the model")
        assert_error(score_cli(scene, scene.manifest, tmp_path / "s.parquet", "--embeddings", link, "-q"),
                     "--embeddings", "is the model")
        both = tmp_path / "both.npy"
        assert_error(score_cli(scene, scene.manifest, both, "--embeddings", both, "-q"),
                     "--embeddings", "and --out", "are the same file")
    assert {p: sha256(p) for p in before} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.npy", "ours.classes.parquet", "ours.parquet"]


def test_the_classes_file_beside_a_symlinked_data_manifest_is_protected(scene: Scene, tmp_path: Path) -> None:
    ours = tmp_path / "data" / "ours.parquet"
    assert_ok(score_cli(scene, scene.manifest, ours, "-q"))
    ours_classes = ours.with_name("ours.classes.parquet")
    before = sha256(ours_classes)
    link = tmp_path / "link.parquet"
    link.symlink_to(ours)
    assert_error(score_cli(scene, link, ours_classes, "-q"), "--out", "is the DATA's classes file")
    assert sha256(ours_classes) == before


def test_outputs_that_are_a_recordio_input_are_refused(tmp_path: Path, no_decoding: None) -> None:
    torch.manual_seed(0)
    spec = ModelSpec(backbone="tiny", embedding_size=16, image_size=16, subcenters=2, scale=16.0, margin=0.5,
                     classes=[0, 1])
    (tmp_path / "run").mkdir()
    save_model(tmp_path / "run" / "model.pt", spec, *spec.build())
    rec = tmp_path / "rec"
    with RecordIOWriter(rec, (16, 16)) as writer:
        for label in (0, 0, 1, 1):
            image = io.BytesIO()
            Image.fromarray(np.full((16, 16, 3), 60 * label + 10, dtype=np.uint8)).save(image, format="JPEG")
            writer.write(label, image.getvalue())
    before = {p.name: sha256(p) for p in rec.iterdir()}
    for data in (rec, rec / "train.rec"):
        for name, fragment in (("train.rec", "is the DATA"), ("train.idx", "is the DATA's index")):
            assert_error(invoke("score", tmp_path / "run", data, "--out", rec / name, "--device", "cpu", "-q"),
                         "--out", fragment)
    assert {p.name: sha256(p) for p in rec.iterdir()} == before


# --- 3: non-finite weights and embeddings --------------------------------------------------------------------------

@pytest.mark.parametrize("where", ["head", "backbone"])
def test_a_model_with_non_finite_weights_is_refused_before_any_work(scene: Scene, tmp_path: Path, where: str,
                                                                   no_decoding: None) -> None:
    payload = torch.load(scene.run / "model.pt", weights_only=True)
    if where == "head":
        payload["head"]["weight"][5, 3] = math.nan
    else:
        name = next(k for k in payload["backbone"] if k.endswith("running_var"))
        payload["backbone"][name][0] = math.inf
    broken = tmp_path / "run"
    broken.mkdir()
    torch.save(payload, broken / "model.pt")
    out = tmp_path / "out" / "s.parquet"
    result = invoke("score", broken, scene.manifest, "--out", out, "--device", "cpu", "-q")
    line = assert_error(result, str(broken), "non-finite", "head.weight" if where == "head" else "running_var")
    assert "retrain" in line
    assert not out.parent.exists()


class NaNOnFlat(torch.nn.Module):
    """The real backbone, except that a flat (one-colour) image gives a NaN embedding: an overflow stand-in."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = self.inner(images)
        flat = images.flatten(1).amax(dim=1) == images.flatten(1).amin(dim=1)
        return torch.where(flat[:, None], torch.full_like(out, math.nan), out)


@pytest.fixture
def flat_images_give_nan(monkeypatch: pytest.MonkeyPatch) -> None:
    real = checkpoint.load_model

    def load(run_dir: Path) -> checkpoint.LoadedModel:
        model = real(run_dir)
        model.backbone = NaNOnFlat(model.backbone)
        return model

    monkeypatch.setattr(checkpoint, "load_model", load)


def flat_set(scene: Scene, folder: Path, flat: list[int], count: int = 12) -> Path:
    """``count`` of the scene's images, with the rows in ``flat`` replaced by one-colour images."""
    paths = []
    for i in range(count):
        if i in flat:
            (folder / "flat").mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((16, 16, 3), 40 + i, dtype=np.uint8)).save(folder / "flat" / f"{i}.png")
            paths.append(str(folder / "flat" / f"{i}.png"))
        else:
            paths.append(str(scene.root / scene.images[i]))
    return write_manifest(folder / "flat.csv", paths)


def test_non_finite_embeddings_are_unreadable_rows(scene: Scene, tmp_path: Path, flat_images_give_nan: None) -> None:
    data = flat_set(scene, tmp_path, flat=[2, 7])
    out = tmp_path / "s.parquet"
    result = score_cli(scene, data, out, "--max-bad-fraction", "0.2", "--json", "-q")
    assert_ok(result)
    summary = json.loads(result.stdout)
    assert summary["unreadable"] == 2 and summary["non_finite"] == 2 and math.isfinite(summary["median_angle"])
    scores = pd.read_parquet(out)
    flat = scores.path.str.contains("/flat/")
    assert flat.tolist() == [i in (2, 7) for i in range(12)]
    assert (scores.status[flat] == "unreadable: non-finite embedding").all() and (scores.status[~flat] == "ok").all()
    assert scores.loc[flat, ["angle", "angle_nearest", "angle_other", "nearest_subcenter"]].isna().all().all()
    assert np.isfinite(scores.loc[~flat, ["angle", "angle_nearest", "angle_other"]].to_numpy()).all()
    votes = pd.read_parquet(out.with_name("s.classes.parquet"))
    assert votes.readable.sum() == 10 and sum(map(sum, votes.nearest_counts)) == 10
    # the median of the finite rows only
    assert summary["median_angle"] == pytest.approx(float(np.median(scores.angle[~flat])), abs=1e-4)


def test_non_finite_embeddings_count_against_max_bad_fraction(scene: Scene, tmp_path: Path,
                                                              flat_images_give_nan: None) -> None:
    data = flat_set(scene, tmp_path, flat=[4])
    out = tmp_path / "s.parquet"
    assert_error(score_cli(scene, data, out, "-q"), "1 of 12", "--max-bad-fraction",
                 f"{tmp_path}/flat/4.png (non-finite embedding)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flat", "flat.csv"]


def test_no_finite_angle_at_all_is_an_error(scene: Scene, tmp_path: Path, flat_images_give_nan: None) -> None:
    data = flat_set(scene, tmp_path, flat=list(range(4)), count=4)
    out = tmp_path / "s.parquet"
    assert_error(score_cli(scene, data, out, "--max-bad-fraction", "1", "-q"), "none of the 4 samples",
                 "median angle")
    assert not out.exists()


# --- 4: any batch layout, missing files anywhere: equal to one image at a time --------------------------------------

def expected_scores(scene: Scene, classes: np.ndarray, readable: np.ndarray) -> dict[str, np.ndarray]:
    """The manifest's geometry computed independently, in float64, from each image embedded alone."""
    cos = np.einsum("ckd,nd->nck", scene.subcenters, scene.unit[:len(classes)])
    own = cos[np.arange(len(classes)), classes]
    nearest = own.argmax(axis=1)
    votes = np.zeros((len(CLASSES), SUBCENTERS), dtype=int)
    for c, k in zip(classes[readable], nearest[readable], strict=True):
        votes[c, k] += 1
    dominant = votes.argmax(axis=1)  # ties to the lowest index
    per_class = cos.max(axis=2)
    per_class[np.arange(len(classes)), classes] = -np.inf
    degrees = lambda c: np.degrees(np.arccos(np.clip(c, -1, 1)))  # noqa: E731
    return {"nearest_subcenter": nearest, "dominant_subcenter": dominant[classes],
            "angle": degrees(own[np.arange(len(classes)), dominant[classes]]), "angle_nearest": degrees(own.max(1)),
            "nearest_other_class": per_class.argmax(axis=1), "angle_other": degrees(per_class.max(axis=1)),
            "own": own}


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_batch_layout_equals_one_image_at_a_time(scene: Scene, tmp_path: Path, data: st.DataObject) -> None:
    count = data.draw(st.integers(1, 14), label="samples")
    batch_size = data.draw(st.integers(1, count + 2), label="batch size")
    missing = data.draw(st.sets(st.integers(0, count - 1)), label="missing rows")
    folder = Path(tempfile.mkdtemp(dir=tmp_path))
    paths = [f"absent/{i}.png" if i in missing else str(scene.root / scene.images[i]) for i in range(count)]
    manifest = write_manifest(folder / "m.csv", paths)
    classes = np.arange(count) % len(CLASSES)
    readable = np.array([i not in missing for i in range(count)])
    if not readable.any():
        with pytest.raises(FaceCleanerError, match=f"none of the {count} samples"):
            api.score(scene.run, manifest, folder / "s.parquet", batch_size=batch_size, device="cpu",
                      max_bad_fraction=1.0, progress=False)
        return
    summary = api.score(scene.run, manifest, folder / "s.parquet", batch_size=batch_size, device="cpu",
                        max_bad_fraction=1.0, progress=False)
    scores = pd.read_parquet(folder / "s.parquet")
    expected = expected_scores(scene, classes, readable)
    assert summary["unreadable"] == len(missing)
    assert scores.status.tolist() == ["unreadable: missing file" if i in missing else "ok" for i in range(count)]
    got = scores[readable]
    own = np.sort(expected["own"][readable], axis=1)
    clear = own[:, -1] - own[:, -2] > 1e-4  # rows whose nearest sub-center is not a float tie
    assert (got.nearest_subcenter.to_numpy()[clear] == expected["nearest_subcenter"][readable][clear]).all()
    assert (got.dominant_subcenter.to_numpy() == expected["dominant_subcenter"][readable]).all()
    assert (got.nearest_other_class.to_numpy() == expected["nearest_other_class"][readable]).all()
    for column in ("angle", "angle_nearest", "angle_other"):
        np.testing.assert_allclose(got[column].to_numpy(), expected[column][readable], atol=2e-3, err_msg=column)
    assert summary["median_angle"] == pytest.approx(float(np.median(expected["angle"][readable])), abs=2e-3)
    health = summary["health"]  # the same measures for every K, from the angles to the dominant sub-center
    assert health["median_angle"] == summary["median_angle"] and health["samples"] == int(readable.sum())
    assert health["unseparated_share"] == pytest.approx(float(np.mean(expected["angle"][readable] > 90)))
    gaps = expected["angle_other"][readable] - expected["angle"][readable]
    assert health["median_gap"] == pytest.approx(float(np.median(gaps)), abs=2e-3)
    meta = json.loads(pq.read_schema(folder / "s.parquet").metadata[b"facecleaner"])
    assert meta["health"] == health and meta["auto_threshold"] == summary["auto_threshold"]
    assert summary["suggested_angle"] == summary["auto_threshold"]["angle"]


# --- 7: resume -----------------------------------------------------------------------------------------------------

def reference(scene: Scene, folder: Path, batch_size: int = 3) -> tuple[Path, Path]:
    """An uninterrupted run: (scores, embeddings)."""
    folder.mkdir(parents=True, exist_ok=True)
    assert_ok(score_cli(scene, scene.manifest, folder / "s.parquet", "--batch-size", batch_size, "--embeddings",
                        folder / "e.npy", "-q"))
    return folder / "s.parquet", folder / "e.npy"


def assert_same_outputs(out: Path, embeddings: Path, expected_out: Path, expected_embeddings: Path) -> None:
    """Every column of the scores and classes manifests, their metadata (bar time and run id) and the embeddings."""
    for name in (out.name, out.name.replace(".parquet", ".classes.parquet")):
        got, want = out.with_name(name), expected_out.with_name(name)
        pd.testing.assert_frame_equal(pd.read_parquet(got), pd.read_parquet(want))
        meta = [json.loads(pq.read_schema(p).metadata[b"facecleaner"]) for p in (got, want)]
        for m in meta:
            del m["created"], m["run_id"]
        assert meta[0] == meta[1]
    assert np.array_equal(np.load(embeddings), np.load(expected_embeddings))


def assert_interrupted(result, out: Path) -> None:  # noqa: ANN001 - click's Result
    """Ctrl-C: exit 1, one error line saying where the measurements are kept and how to continue."""
    assert result.exit_code == 1 and result.stderr.splitlines() == [
        f"Error: interrupted by Ctrl-C; the measurements made so far are kept in {work_area(out)} — run the same "
        "command with --resume to continue"], result.stderr


def interrupt_after(monkeypatch: pytest.MonkeyPatch, images: int) -> None:
    """Ctrl-C after ``images`` images were decoded."""
    real = DecodedImages.__getitem__
    seen = []

    def getitem(self, index):  # noqa: ANN001, ANN202
        seen.append(index)
        if len(seen) > images:
            raise KeyboardInterrupt
        return real(self, index)

    monkeypatch.setattr(DecodedImages, "__getitem__", getitem)


def test_resume_after_sigkill_equals_an_uninterrupted_run(scene: Scene, tmp_path: Path) -> None:
    expected_out, expected_embeddings = reference(scene, tmp_path / "straight")
    out, embeddings = tmp_path / "resumed" / "s.parquet", tmp_path / "resumed" / "e.npy"
    batches = math.ceil(IMAGES / 3)
    kill_at = random.randint(1, batches - 1)
    env = {**os.environ, "PYTHONPATH": str(REPO), "FACECLEANER_FAULT": f"score batch {kill_at}",
           "OMP_NUM_THREADS": str(torch.get_num_threads())}
    killed = subprocess.run([sys.executable, "-m", "facecleaner", "score", str(scene.run), str(scene.manifest),
                             "--out", str(out), "--batch-size", "3", "--device", "cpu", "--embeddings",
                             str(embeddings), "-q"], env=env, capture_output=True, text=True, timeout=120)
    assert killed.returncode == 137, (kill_at, killed.returncode, killed.stderr[-2000:])
    assert sorted(p.name for p in out.parent.iterdir()) == ["s.parquet.resume"]
    parts = sorted(p.name for p in work_area(out).iterdir() if p.name.startswith("batches-"))
    assert parts, kill_at
    result = score_cli(scene, scene.manifest, out, "--batch-size", 3, "--embeddings", embeddings, "--resume",
                       "--json")
    assert_ok(result)
    assert f"resuming from {work_area(out)}" in result.stderr
    summary = json.loads(result.stdout)
    assert 0 < summary["resumed"] <= 3 * kill_at, (kill_at, summary["resumed"])
    assert_same_outputs(out, embeddings, expected_out, expected_embeddings)
    assert sorted(p.name for p in out.parent.iterdir()) == ["e.npy", "s.classes.parquet", "s.parquet"]


def test_resume_after_an_interrupt_and_its_refusals(scene: Scene, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    expected_out, expected_embeddings = reference(scene, tmp_path / "straight")
    out, embeddings = tmp_path / "s.parquet", tmp_path / "e.npy"
    with monkeypatch.context() as patch:
        interrupt_after(patch, 10)
        assert_interrupted(score_cli(scene, scene.manifest, out, "--batch-size", 3, "--embeddings", embeddings,
                                     "-q"), out)
    stamp = work_area(out) / "stamp.json"
    assert stamp.is_file() and not out.exists() and not embeddings.exists()
    kept = {p.name: sha256(p) for p in work_area(out).iterdir()}
    assert len(kept) >= 2  # the stamp and at least one part

    # A foreign work area is refused, named, and left as it is.
    other_run = build_model(tmp_path / "other_run", seed=1)
    foreign = [(scene.run, ["--batch-size", 4, "--embeddings", embeddings], "batch size 3 there, 4 now"),
               (scene.run, ["--batch-size", 3], "embeddings"),
               (other_run, ["--batch-size", 3, "--embeddings", embeddings], "model")]
    for run, options, fragment in foreign:
        line = assert_error(invoke("score", run, scene.manifest, "--out", out, "--device", "cpu", *options,
                                   "--resume", "-q"), str(work_area(out)), fragment)
        assert "without --resume" in line
    assert {p.name: sha256(p) for p in work_area(out).iterdir()} == kept

    result = score_cli(scene, scene.manifest, out, "--batch-size", 3, "--embeddings", embeddings, "--resume")
    assert_ok(result)
    assert_same_outputs(out, embeddings, expected_out, expected_embeddings)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.npy", "other_run", "s.classes.parquet", "s.parquet",
                                                          "straight"]


def test_a_stale_work_area_without_resume_starts_over(scene: Scene, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    expected_out, expected_embeddings = reference(scene, tmp_path / "straight", batch_size=5)
    out, embeddings = tmp_path / "s.parquet", tmp_path / "e.npy"
    with monkeypatch.context() as patch:
        interrupt_after(patch, 12)
        assert_interrupted(score_cli(scene, scene.manifest, out, "--batch-size", 3, "-q"), out)
    assert work_area(out).is_dir()
    result = score_cli(scene, scene.manifest, out, "--batch-size", 5, "--embeddings", embeddings)
    assert_ok(result)
    assert f"starting over: removed the work area {work_area(out)}" in result.stderr
    assert_same_outputs(out, embeddings, expected_out, expected_embeddings)
    assert not work_area(out).exists()


def test_a_folder_in_the_work_areas_place_is_never_removed(scene: Scene, tmp_path: Path) -> None:
    out = tmp_path / "s.parquet"
    mine = work_area(out)
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    for resume in ([], ["--resume"]):
        assert_error(score_cli(scene, scene.manifest, out, *resume, "-q"), str(mine), "not a score work area")
    assert (mine / "notes.txt").read_text() == "mine" and not out.exists()


def test_a_work_area_a_live_run_is_using_is_left_alone(scene: Scene, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "s.parquet"
    with monkeypatch.context() as patch:
        interrupt_after(patch, 7)
        assert_interrupted(score_cli(scene, scene.manifest, out, "--batch-size", 3, "-q"), out)
    stamp_path = work_area(out) / "stamp.json"
    stamp = json.loads(stamp_path.read_text())
    assert stamp["owner"] == fileio.owner_tag()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        stamp_path.write_text(json.dumps({**stamp, "owner": f"{fileio.owner_tag().rpartition('-')[0]}-{other.pid}"}))
        before = {p.name: sha256(p) for p in work_area(out).iterdir()}
        for resume in ([], ["--resume"]):
            assert_error(score_cli(scene, scene.manifest, out, "--batch-size", 3, *resume, "-q"),
                         str(work_area(out)), f"still going (process {other.pid})")
        assert {p.name: sha256(p) for p in work_area(out).iterdir()} == before
    finally:
        other.kill()
        other.wait()
    result = score_cli(scene, scene.manifest, out, "--batch-size", 3, "--resume", "--json", "-q")
    assert_ok(result)  # its owner is gone: the work area is this run's to continue
    assert json.loads(result.stdout)["resumed"] == 6 and not work_area(out).exists()


# --- 8 and the group commit: leftovers of dead runs, outputs published together ------------------------------------

def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_leftovers_of_dead_runs_are_removed_at_start(scene: Scene, tmp_path: Path) -> None:
    host = fileio.owner_tag().rpartition("-")[0]
    out, embeddings = tmp_path / "s.parquet", tmp_path / "e.npy"
    dead = [tmp_path / f".{name}.{host}-{dead_pid()}.0123abcd.tmp" for name in ("s.parquet", "s.classes.parquet",
                                                                                "e.npy")]
    for path in dead:
        with open(path, "wb") as handle:
            handle.truncate(1 << 30)  # the sparse .npy a killed run used to leave behind
    alive = tmp_path / f".e.npy.{fileio.owner_tag()}.0123abcd.tmp"
    alive.write_bytes(b"")
    assert_ok(score_cli(scene, scene.manifest, out, "--embeddings", embeddings, "-q"))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([alive.name, "e.npy", "s.classes.parquet",
                                                                 "s.parquet"])


def test_outputs_are_published_together_and_stamped(scene: Scene, tmp_path: Path) -> None:
    out, embeddings = tmp_path / "s.parquet", tmp_path / "e.npy"
    env = {**os.environ, "PYTHONPATH": str(REPO), "FACECLEANER_FAULT": "between renames"}
    crashed = subprocess.run([sys.executable, "-m", "facecleaner", "score", str(scene.run), str(scene.manifest),
                              "--out", str(out), "--device", "cpu", "--embeddings", str(embeddings), "-q"],
                             env=env, capture_output=True, text=True, timeout=120)
    assert crashed.returncode == 137, crashed.stderr[-2000:]
    assert len(list(tmp_path.glob(".facecleaner-commit.*"))) == 1
    fileio.recover_outputs([out, out.with_name("s.classes.parquet"), embeddings])
    # the work area outlives a crash until the next run on --out removes it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.npy", "s.classes.parquet", "s.parquet",
                                                          "s.parquet.resume"]
    metas = {name: json.loads(pq.read_schema(tmp_path / name).metadata[b"facecleaner"])
             for name in ("s.parquet", "s.classes.parquet")}
    assert metas["s.parquet"]["run_id"] == metas["s.classes.parquet"]["run_id"]
    assert len(metas["s.parquet"]["run_id"]) == 32 and int(metas["s.parquet"]["run_id"], 16) >= 0
    for name, meta in metas.items():
        assert meta["rows"] == pq.read_metadata(tmp_path / name).num_rows, name
    assert metas["s.parquet"]["rows"] == IMAGES and metas["s.classes.parquet"]["rows"] == len(CLASSES)
    published = np.load(embeddings)
    assert published.shape == (IMAGES, 16) and np.abs(published).sum(axis=1).min() > 0
    # The published embeddings are a second name of the work area's array, which is whole after the crash:
    # --resume finishes from the work area alone, to the same embeddings.
    result = score_cli(scene, scene.manifest, out, "--embeddings", embeddings, "--resume", "--json")
    assert_ok(result)
    assert json.loads(result.stdout)["resumed"] == IMAGES
    assert np.array_equal(np.load(embeddings), published)
    assert not work_area(out).exists()


# --- 14 and 15: the abort message and the options' ranges ----------------------------------------------------------

def test_too_many_unreadable_names_the_first_files(scene: Scene, tmp_path: Path) -> None:
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    bad = {3: "gone/3.png", 4: "broken.png", 8: "gone/8.png", 9: "gone/9.png", 15: "gone/15.png",
           16: "gone/16.png", 20: "gone/20.png"}
    paths = [bad.get(i, str(scene.root / scene.images[i])) for i in range(IMAGES)]
    line = assert_error(score_cli(scene, write_manifest(tmp_path / "m.csv", paths), tmp_path / "s.parquet", "-q"),
                        "7 of 24 samples are unreadable", "--max-bad-fraction 0.01")
    named = line[line.index("): ") + 3:]
    # The files as opened (relative to the manifest's folder), the way train names them too.
    assert named.startswith(f"{tmp_path / 'gone/3.png'} (missing file), {tmp_path / 'broken.png'} (")
    positions = [named.index(str(tmp_path / bad[i])) for i in (3, 4, 8, 9, 15)]
    assert positions == sorted(positions)
    assert "gone/16.png" not in named and "gone/20.png" not in named and "and 2 more" in named


@pytest.mark.parametrize(("option", "value"), [("--batch-size", "0"), ("--workers", "-1"),
                                               ("--max-bad-fraction", "-0.1"), ("--max-bad-fraction", "1.5"),
                                               ("--max-bad-fraction", "nan"), ("--max-bad-fraction", "inf")])
def test_out_of_range_options_are_usage_errors(tmp_path: Path, option: str, value: str) -> None:
    result = invoke("score", tmp_path / "run", tmp_path / "data", "--out", tmp_path / "s.parquet", option, value)
    assert result.exit_code == 2, (result.exit_code, result.stderr)
    assert f"Invalid value for '{option}'" in result.stderr


def test_help_shows_every_range() -> None:
    text = " ".join(invoke("score", "--help").stdout.split())
    for fragment in ("--batch-size INTEGER RANGE [default: 256; x>=1]", "--workers INTEGER RANGE",
                     "[x>=0]", "--max-bad-fraction FLOAT RANGE", "[default: 0.01; 0<=x<=1]"):
        assert fragment in text, fragment


@pytest.mark.parametrize("options", [{"max_bad_fraction": math.nan}, {"max_bad_fraction": 2.0}, {"workers": -1},
                                     {"batch_size": 0}])
def test_the_api_refuses_the_same_values(scene: Scene, tmp_path: Path, options: dict) -> None:
    with pytest.raises(InputError, match=next(iter(options)).replace("_", "-")):
        api.score(scene.run, scene.manifest, tmp_path / "s.parquet", device="cpu", progress=False, **options)
    assert list(tmp_path.iterdir()) == []


# --- scale: parts merged one at a time, extras streamed from the input, embeddings written in place --------------

def test_many_small_parts_and_row_groups_stream_into_the_same_manifest(scene: Scene, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The manifest is written part by part, its extra columns read from the input in batches of other sizes:
    with parts of one batch, input batches of 5 rows and tables of at least 7 rows, every row equals the float64
    reference, the extras equal the input's (a list column too) and each embedding is its image's, zeros where
    unreadable."""
    import pyarrow as pa

    from facecleaner.scoring import merge, workarea
    from facecleaner.sources import files

    count, missing = IMAGES, {4, 17}
    classes = np.arange(count) % len(CLASSES)
    readable = np.array([i not in missing for i in range(count)])
    extras = pa.table({"quality": np.arange(count) / 10, "note": [f"n{i}" if i % 3 else None for i in range(count)],
                       "vector": pa.array([[float(i), -float(i)] for i in range(count)], pa.list_(pa.float32()))})
    manifest = tmp_path / "m.parquet"
    paths = [f"absent/{i}.png" if i in missing else str(scene.root / scene.images[i]) for i in range(count)]
    pq.write_table(pa.table({"path": paths, "label": [CLASSES[c] for c in classes]}).append_column(
        "status", pa.array(["given"] * count)).append_column("quality", extras["quality"]).append_column(
        "note", extras["note"]).append_column("vector", extras["vector"]), manifest, row_group_size=5)
    monkeypatch.setattr(workarea, "PART_ROWS", 1)  # one batch per part
    monkeypatch.setattr(merge, "rows_per_batch", lambda bytes_per_row: 7)
    monkeypatch.setattr(files, "open_stream", lambda path: (pq.ParquetFile(path), 5))
    out, embeddings = tmp_path / "s.parquet", tmp_path / "e.npy"
    api.score(scene.run, manifest, out, batch_size=2, device="cpu", embeddings=embeddings, max_bad_fraction=1.0,
              progress=False)
    written = pq.ParquetFile(out)
    assert written.metadata.num_row_groups == math.ceil(count / 8)  # 7 rows asked: whole parts of 2 make 8
    scores = pd.read_parquet(out)
    expected = expected_scores(scene, classes, readable)
    assert scores.sample_id.tolist() == list(range(count))
    assert scores.input_status.tolist() == ["given"] * count  # our column name in the input: kept, renamed
    assert pa.Table.from_pandas(scores[["quality", "note", "vector"]], preserve_index=False).cast(
        extras.schema).equals(extras)
    for column in ("angle", "angle_other"):
        np.testing.assert_allclose(scores[column].to_numpy()[readable], expected[column][readable], atol=2e-3)
    assert (scores.dominant_subcenter.to_numpy()[readable] == expected["dominant_subcenter"][readable]).all()
    stored = np.load(embeddings)
    np.testing.assert_allclose(stored[readable], scene.unit[:count][readable], atol=2e-3)
    assert not stored[~readable].any()


def test_embedding_rows_are_written_where_they_belong(tmp_path: Path) -> None:
    """Each process writes its rows of the embeddings .npy with plain writes at their offsets (no shared memory
    map): runs of consecutive rows, in any order, land exactly there and leave every other row as it was."""
    from facecleaner.scoring.workarea import EmbeddingRows

    path = tmp_path / "e.npy"
    store = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(10, 3))
    del store
    rows = EmbeddingRows(path)
    values = np.arange(30, dtype=np.float16).reshape(10, 3) + 1
    rows.write(np.array([7, 8, 2, 3, 4]), values[[7, 8, 2, 3, 4]])
    rows.write(np.array([0]), values[[0]])
    rows.sync()
    expected = np.zeros((10, 3), dtype=np.float16)
    expected[[0, 2, 3, 4, 7, 8]] = values[[0, 2, 3, 4, 7, 8]]
    assert np.array_equal(np.load(path), expected)


def test_a_work_area_that_lost_its_embeddings_is_refused_on_resume(scene: Scene, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    out, embeddings = tmp_path / "s.parquet", tmp_path / "e.npy"
    interrupt_after(monkeypatch, 6)
    score_cli(scene, scene.manifest, out, "--batch-size", 3, "--embeddings", embeddings, "-q")
    monkeypatch.undo()
    (work_area(out) / "embeddings.npy").unlink()
    assert_error(score_cli(scene, scene.manifest, out, "--batch-size", 3, "--embeddings", embeddings, "--resume",
                           "-q"), "has lost its embeddings.npy", "without --resume")
