"""eval: verification metrics against an independent brute-force computation, the three pair formats (an
insightface .bin built the way its tools write one, a CSV, an LFW pairs.txt), the refusal of hostile pickles, and
the command line.

The model is an untrained tiny network on 16×16 images: its embeddings are as good as a trained model's for
checking that eval computes what it says; the metrics are checked on hand-made embeddings and distances.
"""

from __future__ import annotations

import io
import json
import math
import os
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import assert_error, assert_ok, invoke
from PIL import Image

from facecleaner import api
from facecleaner.errors import FaceCleanerError
from facecleaner.model import checkpoint
from facecleaner.model.checkpoint import ModelSpec, save_model
from facecleaner.verification import metrics
from facecleaner.verification.pairs import load_bin, read_pairs

SIZE = 16
GRID = [i / 100 for i in range(400)]  # insightface's np.arange(0, 4, 0.01), written out


# --- an independent reference: plain Python loops in float64 ----------------------------------------------------

def reference_folds(count: int, folds: int) -> list[list[int]]:
    """scikit-learn's KFold(n_splits=folds, shuffle=False) test sets, from its documentation: consecutive
    blocks, the first count % folds of them one longer."""
    blocks, start = [], 0
    for fold in range(folds):
        size = count // folds + (1 if fold < count % folds else 0)
        blocks.append(list(range(start, start + size)))
        start += size
    return blocks


def reference_accuracy(distance: list[float], same: list[bool], threshold: float) -> float:
    right = sum((d < threshold) == s for d, s in zip(distance, same, strict=True))
    return right / len(distance)


def reference_kfold(distance: list[float], same: list[bool], blocks: list[list[int]]) -> tuple[list, list]:
    accuracies, thresholds = [], []
    for test in blocks:
        train = [i for i in range(len(distance)) if i not in set(test)]
        best, best_accuracy = None, -1.0
        for threshold in GRID:
            accuracy = reference_accuracy([distance[i] for i in train], [same[i] for i in train], threshold)
            if accuracy > best_accuracy:  # the first of equals, as np.argmax
                best, best_accuracy = threshold, accuracy
        thresholds.append(best)
        accuracies.append(reference_accuracy([distance[i] for i in test], [same[i] for i in test], best))
    return accuracies, thresholds


def reference_tpr_at_fpr(distance: list[float], same: list[bool], target: float) -> float:
    """The best TPR over every possible acceptance set ``distance < t`` whose FPR is at most ``target``."""
    negatives = sum(not s for s in same)
    positives = len(same) - negatives
    best = 0.0
    for t in sorted(set(distance)) + [math.inf]:
        fp = sum(d < t and not s for d, s in zip(distance, same, strict=True))
        tp = sum(d < t and s for d, s in zip(distance, same, strict=True))
        if fp / negatives <= target:
            best = max(best, tp / positives)
    return best


def reference_auc(distance: list[float], same: list[bool]) -> float:
    """The probability that a matched pair is closer than a mismatched one (ties count half)."""
    pos = [d for d, s in zip(distance, same, strict=True) if s]
    neg = [d for d, s in zip(distance, same, strict=True) if not s]
    wins = sum(1.0 if p < n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def unit(vector: np.ndarray) -> np.ndarray:
    return vector / np.linalg.norm(vector)


def pair_at(angle: float, rng: np.random.Generator, dim: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Two unit vectors exactly ``angle`` degrees apart, in a random plane of R^dim."""
    a = unit(rng.normal(size=dim))
    b = rng.normal(size=dim)
    b = unit(b - (b @ a) * a)
    radians = math.radians(angle)
    return a, math.cos(radians) * a + math.sin(radians) * b


# --- metrics ------------------------------------------------------------------------------------------------

def test_known_angles_give_a_known_accuracy() -> None:
    """20 pairs, matched 30° apart and mismatched 100° apart, but for one mismatched pair 10° apart in fold 1:
    every fold's threshold is the first grid point above d(30°) = 0.268, so fold 1 scores 1/2 and the rest 1."""
    rng = np.random.default_rng(0)
    same = [i % 2 == 0 for i in range(20)]
    angles = [30.0 if s else 100.0 for s in same]
    angles[1] = 10.0
    vectors = [pair_at(a, rng) for a in angles]
    first = metrics.unit_rows(np.array([v[0] for v in vectors]) * 3.0)  # any scale: normalised
    second = metrics.unit_rows(np.array([v[1] for v in vectors]))
    distance = metrics.squared_distances(first, second)
    np.testing.assert_allclose(distance, [2 - 2 * math.cos(math.radians(a)) for a in angles], atol=1e-12)
    result = metrics.kfold_accuracy(distance, np.array(same), metrics.contiguous_folds(20))
    assert result.accuracies.tolist() == [0.5] + [1.0] * 9
    assert np.mean(result.accuracies) == pytest.approx(0.95)
    assert np.std(result.accuracies) == pytest.approx(0.15)
    np.testing.assert_allclose(result.thresholds, 0.27)
    assert metrics.distance_to_degrees(2 - 2 * math.cos(math.radians(30))) == pytest.approx(30.0)


@pytest.mark.parametrize("count", [57, 20, 10])
def test_kfold_accuracy_equals_a_brute_force_computation(count: int) -> None:
    rng = np.random.default_rng(count)
    same = rng.random(count) < 0.5
    angles = np.where(same, rng.normal(60, 20, count), rng.normal(90, 20, count)).clip(0, 180)
    vectors = [pair_at(a, rng) for a in angles]
    distance = metrics.squared_distances(np.array([v[0] for v in vectors]), np.array([v[1] for v in vectors]))
    blocks = reference_folds(count, 10)
    expected_folds = np.zeros(count, dtype=int)
    for fold, block in enumerate(blocks):
        expected_folds[block] = fold
    assert metrics.contiguous_folds(count).tolist() == expected_folds.tolist()
    result = metrics.kfold_accuracy(distance, same, metrics.contiguous_folds(count))
    accuracies, thresholds = reference_kfold(distance.tolist(), same.tolist(), blocks)
    np.testing.assert_allclose(result.accuracies, accuracies, atol=1e-12)
    np.testing.assert_allclose(result.thresholds, thresholds, atol=1e-12)


def test_tpr_at_fpr_and_auc_equal_a_brute_force_computation() -> None:
    rng = np.random.default_rng(1)
    same = np.r_[np.ones(300, bool), np.zeros(2500, bool)]
    # rounded: many ties, between and across the classes
    distance = np.round(np.where(same, rng.normal(1.0, 0.3, len(same)), rng.normal(1.8, 0.3, len(same))), 2)
    for target in (1e-3, 4e-3, 1e-2, 0.1):
        rate = metrics.tpr_at_fpr(distance, same, target)
        assert rate.tpr == pytest.approx(reference_tpr_at_fpr(distance.tolist(), same.tolist(), target))
        assert np.mean(distance[~same] < rate.threshold) <= target
    assert metrics.roc_curve(distance, same).auc == pytest.approx(reference_auc(distance.tolist(), same.tolist()))


def test_tpr_at_an_fpr_too_small_for_the_pairs_is_none() -> None:
    same = np.r_[np.ones(5, bool), np.zeros(999, bool)]
    distance = np.linspace(0, 4, len(same))
    rate = metrics.tpr_at_fpr(distance, same, 1e-3)
    assert rate.tpr is None and rate.needs_negatives == 1000
    same = np.r_[np.ones(5, bool), np.zeros(1000, bool)]
    distance = np.r_[np.full(5, 0.5), 0.2, np.full(999, 3.0)]  # one mismatched pair below every matched one
    assert metrics.tpr_at_fpr(distance, same, 1e-3).tpr == 1.0  # one false accept allowed
    assert metrics.tpr_at_fpr(np.r_[distance, 0.1], np.r_[same, False], 1e-3).tpr == 0.0


def test_roc_curve_points() -> None:
    roc = metrics.roc_curve(np.array([0.1, 0.2, 0.2, 0.5]), np.array([True, True, False, False]))
    assert roc.fpr.tolist() == [0.0, 0.0, 0.5, 1.0]
    assert roc.tpr.tolist() == [0.0, 0.5, 1.0, 1.0]
    assert roc.auc == pytest.approx(0.875)


# --- a scene: a tiny model and a few images -------------------------------------------------------------------

@dataclass
class Scene:
    root: Path
    run: Path
    images: list[Path]      # 12 JPEGs under root/people/<name>/<name>_000k.jpg
    jpegs: list[bytes]
    embeddings: np.ndarray  # each image embedded alone with its mirror image, summed, unit (float64)
    plain: np.ndarray       # without the mirror image


NAMES = ["ann", "ben", "cat", "dan"]


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Scene:
    root = tmp_path_factory.mktemp("eval")
    torch.manual_seed(0)
    spec = ModelSpec(backbone="tiny", embedding_size=16, image_size=SIZE, subcenters=1, scale=16.0, margin=0.5,
                     classes=NAMES)
    (root / "run").mkdir()
    save_model(root / "run" / "model.pt", spec, *spec.build())
    rng = np.random.default_rng(0)
    images, jpegs = [], []
    for person, name in enumerate(NAMES):
        base = rng.integers(0, 256, (SIZE, SIZE, 3))
        for k in range(1, 4):
            pixels = np.clip(base + rng.normal(0, 30, base.shape) + 20 * person, 0, 255).astype(np.uint8)
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
            path = root / "people" / name / f"{name}_{k:04d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(buffer.getvalue())
            images.append(path)
            jpegs.append(buffer.getvalue())
    model = checkpoint.load_model(root / "run")
    model.backbone.eval()
    summed, plain = [], []
    with torch.no_grad():
        for data in jpegs:  # one image at a time, decoded and normalised here, not by facecleaner
            pixels = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float64)
            batch = torch.from_numpy((pixels / 255 - 0.5) / 0.5).permute(2, 0, 1)[None].float()
            out = model.backbone(batch).double()[0]
            mirrored = model.backbone(batch.flip(3)).double()[0]
            summed.append(unit((out + mirrored).numpy()))
            plain.append(unit(out.numpy()))
    return Scene(root, root / "run", images, jpegs, np.array(summed), np.array(plain))


def scene_pairs(count: int = 30, seed: int = 0) -> tuple[list[int], list[int], list[bool]]:
    """``count`` pairs of the scene's 12 images, matched when both are of one person."""
    rng = np.random.default_rng(seed)
    first, second = [], []
    while len(first) < count:
        a, b = (int(v) for v in rng.choice(12, size=2, replace=False))
        if (len(first) % 2 == 0) == (a // 3 == b // 3):  # alternate matched and mismatched
            first.append(a)
            second.append(b)
    return first, second, [a // 3 == b // 3 for a, b in zip(first, second, strict=True)]


def expected(scene: Scene, first: list[int], second: list[int], same: list[bool], flip: bool = True,
             folds: list[list[int]] | None = None) -> tuple[float, list]:
    vectors = scene.embeddings if flip else scene.plain
    distance = [float(np.sum((vectors[a] - vectors[b]) ** 2)) for a, b in zip(first, second, strict=True)]
    accuracies, thresholds = reference_kfold(distance, same, folds or reference_folds(len(same), 10))
    return float(np.mean(accuracies)), thresholds


def eval_cli(*args: object):  # noqa: ANN201 - click's Result
    return invoke("eval", *args, "-q")


def write_bin(path: Path, bins: list[bytes], issame: list, protocol: int = pickle.HIGHEST_PROTOCOL) -> Path:
    """The way insightface's tools (lfw2pack.py, …) write a verification set."""
    with open(path, "wb") as f:
        pickle.dump((bins, issame), f, protocol=protocol)
    return path


def python2_pickle(bins: list[bytes], issame: list[bool]) -> bytes:
    """A protocol-2 pickle as Python 2 writes one: the images as (byte) ``str``, BINSTRING opcodes."""
    out = [b"\x80\x02", b"]q\x00(" if bins else b"]q\x00"]
    for data in bins:
        out.append(b"U" + bytes([len(data)]) + data if len(data) < 256 else b"T" + struct.pack("<I", len(data)) + data)
    out.append(b"e" if bins else b"")
    out.append(b"]q\x01(" + b"".join(b"\x88" if s else b"\x89" for s in issame) + b"e")
    out.append(b"\x86q\x02.")
    return b"".join(out)


# --- the .bin format -------------------------------------------------------------------------------------------

def test_a_bin_evaluates_like_an_independent_computation(scene: Scene, tmp_path: Path) -> None:
    first, second, same = scene_pairs()
    bins = [scene.jpegs[i] for pair in zip(first, second, strict=True) for i in pair]
    path = write_bin(tmp_path / "tiny.bin", bins, same)
    for flip in (True, False):
        summary = api.evaluate(scene.run, path, flip=flip, device="cpu", batch_size=7, progress=False)
        accuracy, thresholds = expected(scene, first, second, same, flip=flip)
        assert summary["accuracy"] == pytest.approx(accuracy, abs=1e-9)
        np.testing.assert_allclose(summary["fold_thresholds"], thresholds, atol=1e-9)
        assert summary["flip"] is flip and summary["format"] == "bin"
        assert (summary["pairs"], summary["matched_pairs"], summary["images"]) == (30, 15, 60)
        assert summary["tpr_at_fpr"] == {"1e-3": None, "1e-4": None}


def test_python2_and_protocol_2_pickles_load(scene: Scene, tmp_path: Path) -> None:
    bins, issame = [scene.jpegs[0], scene.jpegs[1], scene.jpegs[0], scene.jpegs[4]], [True, False]
    assert load_bin(python2_pickle(bins, issame)) == (bins, issame)
    with pytest.raises(UnicodeDecodeError):  # what a plain pickle.load does with it in Python 3
        pickle.loads(python2_pickle(bins, issame))
    assert load_bin(pickle.dumps((bins, issame), protocol=2)) == (bins, issame)  # bytes via _codecs.encode
    assert load_bin(pickle.dumps([bins, issame], protocol=0)) == (bins, issame)


class Boom:
    """Unpickling this runs a shell command (``os.system``): the classic pickle exploit."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (os.system, (f"touch {self.marker}",))


class Lookup:
    def __reduce__(self):  # noqa: ANN204
        return (getattr, (Path, "home"))


@pytest.mark.parametrize("payload", ["os_system", "getattr", "numpy", "shape", "ints", "count"])
def test_hostile_or_foreign_pickles_are_refused_without_running_anything(scene: Scene, tmp_path: Path,
                                                                         payload: str) -> None:
    marker = tmp_path / "pwned"
    content = {
        "os_system": lambda: ([Boom(marker), scene.jpegs[0]], [True]),
        "getattr": lambda: ([scene.jpegs[0], scene.jpegs[1]], [Lookup()]),
        "numpy": lambda: ([scene.jpegs[0], scene.jpegs[1]], np.array([True])),
        "shape": lambda: {"bins": [], "issame": []},
        "ints": lambda: ([scene.jpegs[0], scene.jpegs[1]], [1]),
        "count": lambda: ([scene.jpegs[0], scene.jpegs[1], scene.jpegs[2]], [True]),
    }[payload]()
    path = tmp_path / "evil.bin"
    path.write_bytes(pickle.dumps(content, protocol=pickle.HIGHEST_PROTOCOL))
    line = assert_error(eval_cli(scene.run, "--pairs", path, "--device", "cpu"),
                        "is not an insightface verification .bin", "pickle.dump((bins, issame_list))")
    assert not marker.exists()
    if payload == "os_system":
        assert "posix.system" in line or "os.system" in line or "nt.system" in line
    if payload == "numpy":
        assert ".tolist()" in line
    with pytest.raises(FaceCleanerError):
        read_pairs(path)


def test_a_truncated_or_garbage_bin_is_one_error_line(scene: Scene, tmp_path: Path) -> None:
    good = pickle.dumps(([scene.jpegs[0], scene.jpegs[1]], [True]), protocol=pickle.HIGHEST_PROTOCOL)
    for name, data in {"truncated.bin": good[: len(good) // 2], "garbage.bin": b"\x00not a pickle at all",
                       "empty.bin": b""}.items():
        (tmp_path / name).write_bytes(data)
        assert_error(eval_cli(scene.run, "--pairs", tmp_path / name), "cannot unpickle it")


# --- CSV and pairs.txt ------------------------------------------------------------------------------------------

def test_csv_pairs_with_folds_and_an_unreadable_image(scene: Scene, tmp_path: Path) -> None:
    first, second, same = scene_pairs(24, seed=3)
    relative = [str(p.relative_to(scene.root)) for p in scene.images]
    folds = [i % 3 for i in range(24)]  # interleaved folds: given ones are used, not blocks
    frame = pd.DataFrame({"path1": [relative[a] for a in first], "path2": [relative[b] for b in second],
                          "same": ["yes" if s else "0" for s in same], "fold": folds})
    frame.loc[len(frame)] = ["people/nobody/missing.jpg", relative[0], "1", 0]
    csv = tmp_path / "pairs.csv"
    frame.to_csv(csv, index=False)
    assert_error(eval_cli(scene.run, "--pairs", csv, "--root", scene.root), "1 of 13 samples are unreadable",
                 "missing.jpg", "--max-bad-fraction")
    pairs = read_pairs(csv, scene.root)
    assert len(pairs.images.table()) == 13 and pairs.folds.tolist() == folds + [0]  # each image listed once
    summary = api.evaluate(scene.run, csv, root=scene.root, device="cpu", max_bad_fraction=0.1, progress=False)
    blocks = [[i for i in range(24) if folds[i] == f] for f in range(3)]
    accuracy, thresholds = expected(scene, first, second, same, folds=blocks)
    assert summary["accuracy"] == pytest.approx(accuracy, abs=1e-9)
    np.testing.assert_allclose(summary["fold_thresholds"], thresholds, atol=1e-9)
    assert (summary["pairs"], summary["evaluated_pairs"], summary["unreadable_pairs"], summary["folds"]) == \
        (25, 24, 1, 3)
    image = scene.images[0].read_bytes()
    (scene.root / "people" / "ann" / "face.png").symlink_to(scene.images[0])
    assert_error(eval_cli(scene.run, "--pairs", csv, "--root", scene.root, "--roc", scene.root / "people" / "ann" /
                          "face.png"), "is one of the images of the pair list")
    assert scene.images[0].read_bytes() == image


@pytest.mark.parametrize(("text", "fragment"), [
    ("path1,path2\na.jpg,b.jpg\n", "no column 'same'"),
    ("path1,path2,same\na.jpg,b.jpg,maybe\n", "same='maybe' on line 2"),
    ("path1,path2,same\na.jpg,,1\n", "empty path2 on line 2"),
    ("path1,path2,same,fold\na.jpg,b.jpg,1,x\n", "fold='x' on line 2"),
    ("path1,path2,same\n", "has no pairs"),
])
def test_bad_csv_pair_lists_are_refused(scene: Scene, tmp_path: Path, text: str, fragment: str) -> None:
    (tmp_path / "pairs.csv").write_text(text)
    assert_error(eval_cli(scene.run, "--pairs", tmp_path / "pairs.csv"), fragment)


def lfw_lines(first: list[int], second: list[int]) -> list[str]:
    lines = []
    for a, b in zip(first, second, strict=True):
        if a // 3 == b // 3:
            lines.append(f"{NAMES[a // 3]}\t{a % 3 + 1}\t{b % 3 + 1}")
        else:
            lines.append(f"{NAMES[a // 3]}\t{a % 3 + 1}\t{NAMES[b // 3]}\t{b % 3 + 1}")
    return lines


def test_lfw_pairs_txt_with_its_header_folds(scene: Scene, tmp_path: Path) -> None:
    """LFW's layout: sets of N matched then N mismatched pairs, announced as ``sets N``."""
    first, second, same = scene_pairs(40, seed=5)
    matched = [i for i in range(40) if same[i]][:20]
    mismatched = [i for i in range(40) if not same[i]][:20]
    order = [i for s in range(4) for i in matched[5 * s:5 * s + 5] + mismatched[5 * s:5 * s + 5]]
    first, second, same = [first[i] for i in order], [second[i] for i in order], [same[i] for i in order]
    text = tmp_path / "pairs.txt"
    text.write_text("4\t5\n" + "\n".join(lfw_lines(first, second)) + "\n")
    pairs = read_pairs(text, scene.root / "people")
    assert pairs.folds.tolist() == [i // 10 for i in range(40)]
    assert pairs.same.tolist() == same
    summary = api.evaluate(scene.run, text, root=scene.root / "people", device="cpu", progress=False)
    accuracy, thresholds = expected(scene, first, second, same, folds=reference_folds(40, 4))
    assert summary["accuracy"] == pytest.approx(accuracy, abs=1e-9)
    assert summary["folds"] == 4 and summary["format"] == "pairs.txt"
    # without a header: 10 folds in order
    text.write_text("\n".join(lfw_lines(first, second)) + "\n")
    assert read_pairs(text, scene.root / "people").folds is None
    summary = api.evaluate(scene.run, text, root=scene.root / "people", device="cpu", progress=False)
    assert summary["accuracy"] == pytest.approx(expected(scene, first, second, same)[0], abs=1e-9)


@pytest.mark.parametrize(("text", "fragment"), [
    ("1 2\nann 1 2\n", "announces 1 sets of 2 matched and 2 mismatched pairs (4) but holds 1"),
    ("ann 1 2\nann 1\n", "line 2 is neither"),
    ("ann 1 ben x\n", "line 1 is neither"),
    ("10 300\n", "has no pairs"),
])
def test_bad_pairs_txt_is_refused(scene: Scene, tmp_path: Path, text: str, fragment: str) -> None:
    (tmp_path / "pairs.txt").write_text(text)
    assert_error(eval_cli(scene.run, "--pairs", tmp_path / "pairs.txt", "--root", scene.root), fragment)


# --- the command line -------------------------------------------------------------------------------------------

def test_cli_json_and_roc(scene: Scene, tmp_path: Path) -> None:
    first, second, same = scene_pairs()
    bins = [scene.jpegs[i] for pair in zip(first, second, strict=True) for i in pair]
    path = write_bin(tmp_path / "tiny.bin", bins, same)
    roc = tmp_path / "roc.png"
    result = invoke("eval", scene.run, "--pairs", path, "--roc", roc, "--json", "-q", "--device", "cpu")
    assert_ok(result)
    summary = json.loads(result.stdout)
    assert summary["accuracy"] == pytest.approx(expected(scene, first, second, same)[0], abs=1e-9)
    assert summary["roc"] == str(roc) and roc.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(summary) >= {"accuracy_std", "threshold", "threshold_angle", "auc", "tpr_at_fpr", "folds",
                            "unreadable_pairs", "flip"}
    assert result.stderr == ""
    result = invoke("eval", scene.run, "--pairs", path, "--no-flip", "-q")
    assert_ok(result)
    lines = result.stdout.splitlines()
    assert lines[0] == "30 pairs (15 matched, 15 mismatched), flip TTA off"
    assert lines[1].startswith("accuracy ") and "over 10 folds" in lines[1]
    assert "TPR@FPR=1e-3 n/a (needs 1000 mismatched pairs)" in lines[2]


def test_cli_refusals(scene: Scene, tmp_path: Path) -> None:
    path = write_bin(tmp_path / "tiny.bin", scene.jpegs[:4], [True, False])
    assert_error(eval_cli(scene.run, "--pairs", tmp_path / "pairs.json"), "cannot tell the format")
    assert_error(eval_cli(scene.run, "--pairs", tmp_path / "absent.bin"), "does not exist")
    assert_error(eval_cli(scene.run, "--pairs", path, "--roc", tmp_path / "roc.svg"), "must end in .png")
    (tmp_path / "link.png").symlink_to(path)
    assert_error(eval_cli(scene.run, "--pairs", path, "--roc", tmp_path / "link.png"), "--roc", "is the PAIRS")
    (tmp_path / "dir.png").mkdir()
    assert_error(eval_cli(scene.run, "--pairs", path, "--roc", tmp_path / "dir.png"), "--roc", "is a folder")
    assert_error(eval_cli(scene.run, "--pairs", path), "2 evaluated pairs, fewer than the 10 folds")
    assert_error(eval_cli(tmp_path, "--pairs", path), "has no model.pt")
    (tmp_path / "folded").mkdir()
    (tmp_path / "folded" / "folds.json").write_text("{}")
    assert_error(eval_cli(tmp_path / "folded", "--pairs", path), "held-out training", "fold-1")
    same_only = write_bin(tmp_path / "same.bin", scene.jpegs[:2] * 10, [True] * 10)
    assert_error(eval_cli(scene.run, "--pairs", same_only), "only matched pairs")
    assert invoke("eval", scene.run).exit_code == 2
    assert invoke("eval", scene.run, "--pairs", path, "--batch-size", "0").exit_code == 2
    result = invoke("eval", "--help")
    assert_ok(result)
    assert "facecleaner eval" in result.stdout.split("Example:", 1)[1]
    assert "eval" in invoke("--help").stdout


def test_a_relative_pairs_file_and_root_find_their_images(scene: Scene, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Paths resolve once against a root given relative to the working directory (the pairs file's folder by
    default): every image is read, none twice joined to its root."""
    relative = [str(p.relative_to(scene.root)) for p in scene.images]
    pd.DataFrame({"path1": relative[:4], "path2": relative[4:8], "same": ["1", "0", "1", "0"]}).to_csv(
        scene.root / "rel_pairs.csv", index=False)
    monkeypatch.chdir(scene.root.parent)
    pairs = read_pairs(Path(scene.root.name) / "rel_pairs.csv", Path(scene.root.name))
    resolved = [pairs.images.resolved_path(index) for index in range(8)]
    assert sorted(resolved) == sorted(str(scene.root / given) for given in relative[:8])
    for index, path in enumerate(resolved):
        assert pairs.images.read_bytes(index) == Path(path).read_bytes()
