"""report: summary.json's numbers against an independent computation from the manifests (numpy, pandas), the
page's images all present, the thumbnail cap, RecordIO sources, outputs that never clobber inputs, and the page
as a browser loads it (headless Chromium, skipped where it is not installed).

The data is a hand-built scores manifest with known angles over real image files: no training."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import write_scores
from helpers import assert_error, assert_ok, invoke
from PIL import Image

from facecleaner import api
from facecleaner.errors import InputError
from facecleaner.report.sheets import choose_classes, spread
from facecleaner.sources.recordio import RecordIOWriter

CLASSES, PER_CLASS = 6, 8
HOSTILE = '<img src=x onerror="alert(1)">&\'"'


def _jpeg(path: Path, colour: int, seed: int, size: int = 32) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = np.clip(rng.normal(colour, 40, (size, size, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format="JPEG", quality=90)
    return path.read_bytes()


def _geometry() -> tuple[list[int], list[float], list[bool], list[str]]:
    """Class c holds c noisy samples (~95°, mostly non-dominant) among clean ones (~35°); row 3 is unreadable."""
    rng = np.random.default_rng(7)
    classes, angles, dominant, status = [], [], [], []
    for c in range(CLASSES):
        for i in range(PER_CLASS):
            noisy = i < c
            classes.append(c)
            angles.append(float(rng.normal(95, 6) if noisy else rng.normal(35, 8)))
            dominant.append(not noisy if i != PER_CLASS - 1 else False)
            status.append("ok")
    status[3] = "unreadable: cannot decode image"
    return classes, angles, dominant, status


@pytest.fixture
def scores(tmp_path: Path, scores_file) -> Path:  # noqa: ANN001
    classes, angles, dominant, status = _geometry()
    data = tmp_path / "data"
    paths = []
    for row, c in enumerate(classes):
        paths.append(f"c{c}/{row}.jpg")
        _jpeg(data / paths[-1], 40 * c, row)
    labels = [HOSTILE if c == CLASSES - 1 else f"id{c}" for c in classes]
    return scores_file(classes, angles, dominant, status=status, labels=labels, paths=paths,
                       angle_other=[a - 5 if i % 5 == 0 else 90.0 for i, a in enumerate(angles)],
                       input_root=str(data))


def _images(index: Path) -> list[str]:
    return [html.unescape(src) for src in re.findall(r'<img src="([^"]+)"', index.read_text(encoding="utf-8"))]


def test_summary_numbers_match_an_independent_computation(scores: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    summary = api.report(scores, out, progress=False)
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summary))
    frame = pd.read_parquet(scores)
    ok = (frame["status"] == "ok").to_numpy()
    angle = frame["angle"].to_numpy(dtype=np.float64)
    kept = ok & (angle <= 75)
    counts = summary["counts"]
    assert (counts["samples"], counts["kept"], counts["dropped"], counts["unreadable"]) == \
        (len(frame), kept.sum(), (~kept).sum(), (~ok).sum())
    assert counts["by_reason"] == {"unreadable": 1, "non_dominant": 0, "angle": int((ok & (angle > 75)).sum()),
                                   "other_class": 0, "small_class": 0}
    curve = summary["figures"]["kept_share"]
    assert curve["thresholds"] == list(range(30, 121))
    expected = [np.count_nonzero(ok & (angle <= t)) / len(frame) for t in range(30, 121)]
    np.testing.assert_allclose(curve["share"], expected)
    assert curve["at"]["paper"]["share"] == pytest.approx(kept.mean())
    hist = summary["figures"]["angle_histogram"]
    edges = np.arange(0, 182, 2)
    is_dominant = frame["is_dominant"].fillna(False).to_numpy(dtype=bool)
    assert hist["dominant"] == np.histogram(angle[ok & is_dominant], edges)[0].tolist()
    assert hist["non_dominant"] == np.histogram(angle[ok & ~is_dominant], edges)[0].tolist()
    rates = pd.Series(~kept).groupby(frame["class_index"]).mean()
    drops = summary["figures"]["drop_rates"]
    assert drops["counts"] == np.histogram(rates, np.linspace(0, 1, 21))[0].tolist()
    assert drops["median"] == pytest.approx(rates.median()) and drops["none_dropped"] == int((rates == 0).sum())
    worst = rates.sort_values(ascending=False, kind="stable")
    assert [w["class_index"] for w in summary["worst_classes"][:3]] == worst.index[:3].tolist()
    assert summary["worst_classes"][0]["label"] == HOSTILE
    # --angle auto is prune's auto: the same valley from the same angles.
    auto = api.prune(scores, tmp_path / "clean.parquet", angle="auto")["auto_threshold"]
    assert summary["auto_threshold"] == auto
    health = summary["figures"]["health"]
    assert summary["health_source"] == "computed"  # these hand-built scores record no health
    assert health["measures"]["median_angle"]["value"] == pytest.approx(np.median(angle[ok]))
    assert health["measures"]["unseparated_share"]["value"] == pytest.approx(np.mean(angle[ok] > 90))
    for name in ("angles", "kept", "drop_rates", "health"):
        with Image.open(out / "figures" / f"{name}.png") as figure:
            assert figure.format == "PNG" and figure.width > 400


def test_page_images_exist_thumbnails_are_capped_and_labels_escaped(scores: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    summary = api.report(scores, out, max_thumbnails=7, progress=False)
    images = _images(out / "index.html")
    thumbs = sorted(p.name for p in (out / "thumbs").iterdir())
    assert len(thumbs) == 7 == summary["thumbnails"]["written"]
    assert all((out / src).is_file() for src in images)
    assert sorted(Path(src).name for src in images if src.startswith("thumbs/")) == thumbs
    assert len([src for src in images if src.startswith("figures/")]) == 4
    with Image.open(out / "thumbs" / thumbs[0]) as thumb:
        assert thumb.format == "JPEG" and max(thumb.size) <= 96
    page = (out / "index.html").read_text(encoding="utf-8")
    assert HOSTILE not in page and html.escape(HOSTILE) in page
    first = summary["sheets"][0]
    assert first["label"] == HOSTILE and first["chosen"] == "largest drop share"
    # the worst identity's dropped samples come first, nearest the threshold first
    shown = [t["angle"] for t in first["dropped_thumbs"]]
    assert shown == sorted(shown) and all(t["reason"] == "angle" for t in first["dropped_thumbs"])
    # the cap reached, later identities are listed without thumbnails
    assert sum(len(s["kept_thumbs"]) + len(s["dropped_thumbs"]) for s in summary["sheets"]) == 7
    assert len(summary["sheets"]) == CLASSES and not summary["sheets"][-1]["kept_thumbs"]
    assert "thumbnail cap reached" in page


def test_identities_worst_first_then_a_seeded_sample_and_thumbnails_spread_over_angles() -> None:
    present = np.arange(10, 20)
    samples = np.full(10, 10)
    dropped = np.array([0, 5, 0, 9, 1, 5, 0, 0, 2, 10])
    worst, sample = choose_classes(present, samples, dropped, 3, 4, seed=1)
    assert worst.tolist() == [19, 13, 11]  # 100%, 90%, then the first of the two at 50%
    assert len(sample) == 4 and not set(sample.tolist()) & set(worst.tolist())
    assert np.array_equal(sample, choose_classes(present, samples, dropped, 3, 4, seed=1)[1])
    assert len({tuple(choose_classes(present, samples, dropped, 3, 4, seed=s)[1]) for s in range(5)}) > 1
    assert choose_classes(present, samples, np.zeros(10, dtype=np.int64), 3, 0, seed=0)[0].tolist() == []
    angle = np.array([50.0, np.nan, 10.0, 30.0, 20.0, 40.0])
    assert spread(np.arange(6), angle, 3).tolist() == [2, 3, 1]  # lowest, middle, highest (NaN last)
    assert spread(np.arange(6), angle, 9).tolist() == [2, 4, 3, 5, 0, 1]


def test_clean_manifest_gives_kept_rows_and_reasons(scores: Path, tmp_path: Path) -> None:
    pruned = api.prune(scores, tmp_path / "clean.parquet", angle=80, drop_non_dominant=True)
    summary = api.report(scores, tmp_path / "report", clean=tmp_path / "clean.parquet", progress=False)
    assert summary["threshold"] == {"angle": 80.0, "choice": "clean manifest"}
    assert summary["rule"] == "drop_non_dominant" and summary["warnings"] == []
    assert summary["counts"]["kept"] == pruned["kept"]
    assert {k: v for k, v in summary["counts"]["by_reason"].items()} == pruned["by_reason"]
    assert summary["figures"]["kept_share"]["at"]["run"] == {"angle": 80.0, "share": pruned["kept"] / 48}
    # a clean manifest pruned from another scoring of the same data: reported, not silently mixed
    classes, angles, dominant, status = _geometry()
    one, two = (write_scores(tmp_path / f"{run}.parquet", classes, angles, dominant, status=status, run_id=run)
                for run in ("one", "two"))
    api.prune(two, tmp_path / "two_clean.parquet")
    mixed = api.report(one, tmp_path / "mixed", clean=tmp_path / "two_clean.parquet", progress=False)
    assert any("was not pruned from" in w and "scores run id" in w for w in mixed["warnings"])
    matched = api.report(two, tmp_path / "matched", clean=tmp_path / "two_clean.parquet", progress=False)
    assert not any("was not pruned from" in w for w in matched["warnings"])


def test_recordio_thumbnails_come_from_the_rec(tmp_path: Path, scores_file) -> None:  # noqa: ANN001
    classes, angles, dominant, status = _geometry()
    images = [_jpeg(tmp_path / "tmp" / f"{i}.jpg", 40 * c, i, size=24) for i, c in enumerate(classes)]
    with RecordIOWriter(tmp_path / "src", image_size=(24, 24)) as writer:
        keys = [writer.write(c, image) for c, image in zip(classes, images, strict=True)]
    rec = tmp_path / "src" / "train.rec"
    scores = scores_file(classes, angles, dominant, status=status, labels=classes, paths=[None] * len(keys),
                         rec_index=keys, input_root=str(rec.resolve()))
    summary = api.report(scores, tmp_path / "report", progress=False)
    thumbs = summary["thumbnails"]
    assert thumbs["written"] == thumbs["planned"] > 0 and thumbs["failed"] == 0
    shown = [t for s in summary["sheets"] for t in s["kept_thumbs"] + s["dropped_thumbs"]]
    assert all(t["where"] == f"record {keys[t['row']]}" for t in shown)
    with Image.open(tmp_path / "report" / shown[0]["file"]) as thumb:
        assert thumb.size == (24, 24)
    # without a known train.rec the report still stands, and says why it has no pictures
    moved = tmp_path / "moved.parquet"
    scores_file(classes, angles, dominant, status=status, labels=classes, paths=[None] * len(keys),
                rec_index=keys, name="moved.parquet")
    bare = api.report(moved, tmp_path / "bare", progress=False)
    assert bare["thumbnails"]["written"] == 0 and any("--root" in w for w in bare["warnings"])
    assert api.report(moved, tmp_path / "rooted", root=rec, progress=False)["thumbnails"]["written"] > 0


def test_out_never_clobbers_inputs_and_replaces_only_a_report(scores: Path, tmp_path: Path) -> None:
    before = scores.read_bytes()
    assert_error(invoke("report", scores, "--out", scores), "is the scores")
    assert_error(invoke("report", scores, "--out", tmp_path), "holds the scores")
    assert_error(invoke("report", scores, "--out", tmp_path / "data"), "images' folder")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    assert_error(invoke("report", scores, "--out", tmp_path / "busy"), "holding other files")
    assert scores.read_bytes() == before and (tmp_path / "busy" / "notes.txt").read_text() == "mine"
    with pytest.raises(InputError, match="--max-thumbnails"):
        api.report(scores, tmp_path / "r", max_thumbnails=-1)
    help_text = invoke("report", "--help")
    assert_ok(help_text)
    assert "facecleaner report scores.parquet" in help_text.stdout.split("Example:", 1)[1]
    result = invoke("report", scores, "--out", tmp_path / "r", "-q")
    assert_ok(result)
    assert result.stdout.splitlines()[0] == f"report: {tmp_path / 'r' / 'index.html'}"
    (tmp_path / "r" / "thumbs" / "stale.jpg").write_bytes(b"x")
    result = invoke("report", scores, "--out", tmp_path / "r", "--max-thumbnails", "3", "--json")
    assert_ok(result)
    assert json.loads(result.stdout)["thumbnails"]["written"] == 3
    assert len(list((tmp_path / "r" / "thumbs").iterdir())) == 3  # the earlier report was replaced whole
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".r.")]  # no temporaries left
    assert scores.read_bytes() == before


@pytest.mark.skipif(shutil.which("chromium") is None, reason="headless Chromium is not installed")
def test_chromium_loads_every_image(scores: Path, tmp_path: Path) -> None:
    """The page as a browser sees it: a copy of index.html (beside it, so relative links resolve) gets a
    script that, on load, records on <body> how many images there are and which failed to load (not complete,
    or no natural width); Chromium's --dump-dom prints the DOM after the load event."""
    out = tmp_path / "report"
    api.report(scores, out, progress=False)
    probe = ('<script>window.addEventListener("load",()=>{const i=[...document.images];'
             'document.body.dataset.images=i.length;document.body.dataset.broken=i.filter('
             'x=>!x.complete||x.naturalWidth===0).map(x=>x.getAttribute("src")).join(" ")||"none";});</script>')
    check = out / "check.html"
    check.write_text((out / "index.html").read_text(encoding="utf-8").replace("</body>", probe + "</body>"),
                     encoding="utf-8")
    command = ["chromium", "--headless", "--disable-gpu", "--no-sandbox", f"--user-data-dir={tmp_path / 'profile'}",
               "--virtual-time-budget=10000"]
    dom = subprocess.run([*command, "--dump-dom", check.as_uri()], capture_output=True, text=True, timeout=120,
                         check=True).stdout
    body = re.search(r"<body([^>]*)>", dom)
    assert body is not None, dom[:500]
    assert 'data-broken="none"' in body.group(1), body.group(1)
    assert f'data-images="{len(_images(out / "index.html"))}"' in body.group(1)
    shot = tmp_path / "shot.png"
    subprocess.run([*command, "--hide-scrollbars", f"--screenshot={shot}", "--window-size=1200,2000", check.as_uri()],
                   capture_output=True, timeout=120, check=True)
    with Image.open(shot) as image:
        assert image.size == (1200, 2000)
