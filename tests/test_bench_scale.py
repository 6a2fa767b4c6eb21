"""benchmarks/bench_scale.py's generated data is what the project reads: the bulk-framed RecordIO opens with the
labels, keys and identity ranges it was made with, and the manifests hold the paths a per-row reference spells."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from facecleaner.sources import open_source
from facecleaner.sources.images import decode_and_resize

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def bench():  # noqa: ANN201 - the module under test
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec = importlib.util.spec_from_file_location("bench_scale", BENCHMARKS / "bench_scale.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_every_identity_has_a_row_and_rows_are_grouped(bench) -> None:  # noqa: ANN001
    classes = bench.class_column(1000, 300, seed=3)
    assert len(classes) == 1000
    assert np.array_equal(np.unique(classes), np.arange(300))
    assert np.all(np.diff(classes) >= 0)


def test_bulk_recordio_opens_with_its_labels_keys_and_ranges(bench, tmp_path: Path) -> None:  # noqa: ANN001
    rows, identities = 2500, 41
    rec = bench.write_recordio(tmp_path / "rec", rows, identities, seed=5)
    source = open_source(rec)
    table = source.table()
    expected = bench.class_column(rows, identities, seed=5)
    assert table["rec_index"].tolist() == list(range(1, rows + 1))
    assert table["label"].tolist() == expected.tolist()
    assert source.header_range == (rows + 1, rows + 1 + identities)
    jpeg = bench.tiny_jpegs(16)[0]
    for row in (0, 1234, rows - 1):
        assert source.read_bytes(row) == jpeg
    pixels, resized = decode_and_resize(jpeg, 16)
    assert pixels.shape == (16, 16, 3) and not resized  # a real image, already at the benchmark's size
    # Each identity record says (first key, end key) of its images, as insightface's readers expect.
    from facecleaner.sources.recordio import unpack_record

    counts = np.bincount(expected, minlength=identities)
    first_key = 1 + np.concatenate([[0], np.cumsum(counts)[:-1]])
    offsets = dict(line.split("\t") for line in (tmp_path / "rec" / "train.idx").read_text().splitlines())
    for identity in (0, 17, identities - 1):
        key = rows + 1 + identity
        header, _ = unpack_record(source._read_payload(key, int(offsets[str(key)])))
        assert header.label == (float(first_key[identity]), float(first_key[identity] + counts[identity]))


def test_manifest_paths_labels_and_images(bench, tmp_path: Path) -> None:  # noqa: ANN001
    rows, identities = 3000, 200
    manifest = bench.dataset(tmp_path, "set", rows, identities, extra_dim=4, readable=identities)
    table = open_source(manifest).table()
    classes = bench.class_column(rows, identities, seed=0)
    ordinal, seen = [], {}
    for c in classes.tolist():
        ordinal.append(seen.get(c, 0))
        seen[c] = ordinal[-1] + 1
    assert table["path"].tolist() == [f"id{c:07d}/{k:05d}.jpg" for c, k in zip(classes, ordinal, strict=True)]
    assert table["label"].tolist() == [f"id{c:07d}" for c in classes]
    features = next(open_source(manifest).extras.batches())["feature"]  # extras are streamed, not in the table
    assert [len(v) for v in features.slice(0, 3).to_pylist()] == [4, 4, 4]
    source = open_source(manifest)
    for row in (0, rows // 2, rows - 1):
        pixels, resized = decode_and_resize(source.read_bytes(row), 16)
        assert pixels.shape == (16, 16, 3) and not resized
