"""Exports of a real clean manifest (written by prune, no training): rec read back by an independent reader,
folder export with hostile labels and every link mode, exact csv/lst contents, atomicity, RecordIO inputs."""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import assert_ok, check_insightface_layout, invoke
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from facecleaner import api, fileio
from facecleaner.errors import InputError
from facecleaner.exports import export_manifest
from facecleaner.exports.names import FileNamer, label_folders, name_key, safe_component
from facecleaner.manifests.io import manifest_metadata, write_manifest
from facecleaner.manifests.schema import scores_schema
from facecleaner.sources.recordio import RecordIOWriter, open_recordio

# --- building a clean manifest without training --------------------------------------------------------------

def jpeg_bytes(seed: int, size: int = 16) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=90)
    return out.getvalue()


def png_bytes(seed: int, size: int = 16) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 4), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels, mode="RGBA").save(out, format="PNG")
    return out.getvalue()


def write_scores_manifest(path: Path, paths: list[str | None], labels: list, rec_index: list[int | None] | None = None,
                          angles: list[float] | None = None, **meta) -> Path:
    """A scores manifest as `score` writes it: one class per distinct label, everything dominant."""
    n = len(labels)
    classes = sorted(set(labels))
    class_index = [classes.index(label) for label in labels]
    angles = angles or [10.0] * n
    label_type = pa.int64() if isinstance(labels[0], int) else pa.string()
    rec_index = rec_index or [None] * n
    arrays = [pa.array(np.arange(n, dtype=np.int64)), pa.array(paths, type=pa.string()),
              pa.array(rec_index, type=pa.int64()), pa.array(labels, type=label_type),
              pa.array(class_index, type=pa.int32()), pa.array([0] * n, type=pa.int8()),
              pa.array([0] * n, type=pa.int8()), pa.array([True] * n), pa.array(angles, type=pa.float32()),
              pa.array(angles, type=pa.float32()), pa.array([0] * n, type=pa.int32()),
              pa.array([90.0] * n, type=pa.float32()), pa.array(["ok"] * n)]
    table = pa.Table.from_arrays(arrays, schema=scores_schema(label_type))
    write_manifest(path, table, manifest_metadata(
        "scores", model={"subcenters": 3, "margin": 0.5, "scale": 64.0, "backbone": "tiny", **meta.pop("model", {})},
        num_classes=len(classes), **meta))
    return path


def files_clean(tmp_path: Path, labels: list, names: list[str] | None = None, pngs: tuple[int, ...] = (),
                angles: list[float] | None = None, images: list[bytes] | None = None, **meta) -> Path:
    """Image files under tmp_path/data (row i: ``images[i]``, else a JPEG of seed i, or a PNG when i in
    ``pngs``), scored, pruned."""
    data = tmp_path / "data"
    paths = []
    for i, _ in enumerate(labels):
        name = names[i] if names else f"{i:03d}.{'png' if i in pngs else 'jpg'}"
        file = data / f"src{i % 2}" / name
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_bytes(images[i] if images else png_bytes(i) if i in pngs else jpeg_bytes(i))
        paths.append(os.path.relpath(file, data))
    scores = write_scores_manifest(tmp_path / "scores.parquet", paths, labels, angles=angles, input_root=str(data),
                                   **meta)
    api.prune(scores, tmp_path / "clean.parquet")
    return tmp_path / "clean.parquet"


def clean_rows(clean: Path) -> list[dict]:
    return pq.read_table(clean).to_pylist()


LABELS = ["bob", "alice", "bob", "carol", "alice", "carol", "bob", "alice"]


@pytest.fixture
def clean(tmp_path: Path) -> Path:
    # row 5 is too far from its center and is dropped by prune; rows 3 and 6 are PNG files.
    angles = [10.0, 20.0, 30.0, 40.0, 50.0, 100.0, 60.0, 70.0]
    return files_clean(tmp_path, LABELS, pngs=(3, 6), angles=angles, model={"image_size": 16})


def source_file(clean: Path, row: dict) -> Path:
    return clean.parent / "data" / row["path"]


# --- rec -----------------------------------------------------------------------------------------------------

def test_rec_round_trip_keeps_jpeg_bytes_and_new_labels(clean: Path, tmp_path: Path) -> None:
    rows = clean_rows(clean)
    assert len(rows) == 7 and {r["new_label"] for r in rows} == {0, 1, 2}
    summary = export_manifest(clean, "rec", tmp_path / "rec", progress=False)
    assert summary["written"] == 7 and summary["skipped"] == 0 and summary["classes"] == 3
    assert summary["reencoded"] == 2 and summary["resized"] == 0 and summary["image_size"] == [16, 16]
    assert json.loads(json.dumps(summary)) == summary
    labels, images = check_insightface_layout(tmp_path / "rec")
    assert (tmp_path / "rec" / "property").read_text() == "3,16,16\n"
    # Written sorted stably by new_label: the manifest order within each class.
    expected = sorted(rows, key=lambda r: r["new_label"])
    assert labels == [r["new_label"] for r in expected]
    source = open_recordio(tmp_path / "rec" / "train.rec")
    assert source.table()["label"].tolist() == labels
    for i, row in enumerate(expected):
        original = source_file(clean, row).read_bytes()
        assert source.read_bytes(i) == images[i]
        if original[:3] == b"\xff\xd8\xff":
            assert images[i] == original
        else:  # the PNGs: re-encoded to JPEG of the same size, alpha composited onto RGB
            assert images[i][:3] == b"\xff\xd8\xff"
            decoded = Image.open(io.BytesIO(images[i]))
            assert decoded.format == "JPEG" and decoded.mode == "RGB" and decoded.size == (16, 16)
    source.close()


def test_rec_with_original_labels(tmp_path: Path) -> None:
    clean = files_clean(tmp_path, [7, 3, 7, 3, 12])
    summary = export_manifest(clean, "rec", tmp_path / "rec", label_column="label", progress=False)
    labels, _ = check_insightface_layout(tmp_path / "rec")
    assert labels == [3, 3, 7, 7, 12] and summary["num_classes"] == 13
    assert (tmp_path / "rec" / "property").read_text() == "13,112,112\n"


def image_bytes(seed: int, width: int, height: int, fmt: str) -> bytes:
    """A smooth picture (JPEG keeps it close, so decoded pixels can be compared with a reference)."""
    y, x = np.mgrid[0:height, 0:width]
    phase = np.random.default_rng(seed).uniform(0, 6, 3)
    pixels = np.stack([127 + 100 * np.sin(x / 9 + phase[0]), 127 + 100 * np.cos(y / 11 + phase[1]),
                       127 + 100 * np.sin((x + y) / 13 + phase[2])], axis=-1).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return out.getvalue()


@pytest.mark.parametrize(("meta", "size"), [({}, 112), ({"model": {"image_size": 40}}, 40)])
def test_rec_stores_every_image_at_the_size_property_states(tmp_path: Path, meta: dict, size: int) -> None:
    # ORL's 92×112 faces, a square of the wrong size, and images of the right size as JPEG and PNG.
    shapes = [(size, size, "JPEG"), (92, 112, "JPEG"), (size, size, "PNG"), (92, 112, "PNG"), (30, 30, "JPEG")]
    originals = [image_bytes(i, w, h, fmt) for i, (w, h, fmt) in enumerate(shapes)]
    clean = files_clean(tmp_path, [0, 1, 2, 3, 4], images=originals, **meta)
    summary = export_manifest(clean, "rec", tmp_path / "rec", progress=False)
    assert summary["written"] == 5 and summary["reencoded"] == 4 and summary["resized"] == 3
    assert (tmp_path / "rec" / "property").read_text() == f"5,{size},{size}\n"
    labels, stored = check_insightface_layout(tmp_path / "rec")
    assert labels == [0, 1, 2, 3, 4]
    assert stored[0] == originals[0]  # a JPEG of the right size is copied byte for byte
    for original, data in zip(originals[1:], stored[1:], strict=True):
        image = Image.open(io.BytesIO(data))
        assert image.format == "JPEG" and image.mode == "RGB" and image.size == (size, size)
        expected = np.asarray(Image.open(io.BytesIO(original)).convert("RGB").resize((size, size),
                                                                                      Image.Resampling.BILINEAR),
                              dtype=np.float64)
        assert np.abs(np.asarray(image, dtype=np.float64) - expected).mean() < 3  # JPEG's loss only


def test_rec_refuses_text_labels_and_existing_files(clean: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="new_label"):
        export_manifest(clean, "rec", tmp_path / "rec", label_column="label", progress=False)
    assert not (tmp_path / "rec").exists()
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "train.rec").write_bytes(b"precious")
    with pytest.raises(InputError, match="already holds train.rec"):
        export_manifest(clean, "rec", tmp_path / "old", progress=False)
    assert [p.name for p in (tmp_path / "old").iterdir()] == ["train.rec"]
    assert (tmp_path / "old" / "train.rec").read_bytes() == b"precious"


# --- folder --------------------------------------------------------------------------------------------------

def test_folder_export_round_trips_through_rec(clean: Path, tmp_path: Path) -> None:
    rows = clean_rows(clean)
    summary = export_manifest(clean, "folder", tmp_path / "out", link="copy", progress=False)
    assert summary["written"] == 7 and summary["copied"] == 7 and summary["renamed_labels"] == 0
    for row in rows:
        exported = tmp_path / "out" / str(row["new_label"]) / Path(row["path"]).name
        assert exported.read_bytes() == source_file(clean, row).read_bytes()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["0", "1", "2"]
    # The folder is itself a dataset: scoring inputs read it back with the same images per identity.
    from facecleaner.sources import open_source

    back = open_source(tmp_path / "out")
    table = back.table()
    assert sorted(zip(table["label"].tolist(), (back.read_bytes(i) for i in range(len(table))), strict=True)) == \
        sorted((str(r["new_label"]), source_file(clean, r).read_bytes()) for r in rows)


def test_integer_folders_sort_like_their_numbers(tmp_path: Path) -> None:
    labels = [f"id{i:02d}" for i in range(12)]
    clean = files_clean(tmp_path, labels)
    export_manifest(clean, "folder", tmp_path / "out", progress=False)
    folders = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert folders == [f"{i:02d}" for i in range(12)]  # ImageFolder's class order == new_label


HOSTILE = ["../../evil", "a/b", "a_b", "C:x", "..", ".", "", "x\x00y", "a\\b", "CON", "Alice", "alice", "..\\..\\w",
           "/abs", "a_b__" + "0" * 8, "ok"]


def test_folder_with_hostile_labels_stays_inside_dest(tmp_path: Path) -> None:
    labels = [label for label in HOSTILE for _ in range(2)]
    clean = files_clean(tmp_path, labels)
    dest = tmp_path / "deep" / "out"
    before = {p for p in tmp_path.rglob("*")}
    summary = export_manifest(clean, "folder", dest, label_column="label", link="copy")
    assert summary["written"] == len(labels) and summary["classes"] == len(HOSTILE)
    assert json.loads(json.dumps(summary))["renamed_labels"] == summary["renamed_labels"]
    created = {p for p in tmp_path.rglob("*")} - before - {dest.parent}
    root = dest.resolve()
    assert created and all(p.resolve() == root or root in p.resolve().parents for p in created)
    assert not any("evil" in p.name for p in tmp_path.parent.iterdir())
    folders = [p for p in dest.iterdir()]
    assert all(p.is_dir() and not p.name.startswith(".") for p in folders) and len(folders) == len(HOSTILE)
    assert len({name_key(p.name) for p in folders}) == len(HOSTILE)  # distinct even case-insensitively
    # Each folder holds exactly the two images of one label.
    by_content = {jpeg_bytes(i): labels[i] for i in range(len(labels))}
    for folder in folders:
        owners = {by_content[f.read_bytes()] for f in folder.iterdir()}
        assert len(owners) == 1 and len(list(folder.iterdir())) == 2
    # Safe labels keep their name; a changed one gets a hash of the original, whatever else is in the set.
    names = {p.name for p in folders}
    assert {"a_b", "Alice", "ok", "a_b__" + "0" * 8} <= names
    assert "a_b__" + hashlib.sha256(b"a/b").hexdigest()[:8] in names
    assert "alice__" + hashlib.sha256(b"alice").hexdigest()[:8] in names  # "Alice" took the name first
    assert summary["renamed_labels"] == len(HOSTILE) - 4


def test_file_names_are_sanitised_and_deduplicated(tmp_path: Path) -> None:
    # Three rows share a base name (src0/x.jpg twice, src1/x.jpg) and one has a name Windows reserves.
    names = ["x.jpg", "x.jpg", "x.jpg", "CON.jpg"]
    clean = files_clean(tmp_path, ["a", "a", "a", "a"], names=names)
    summary = export_manifest(clean, "folder", tmp_path / "out", progress=False)
    files = sorted(p.name for p in (tmp_path / "out" / "0").iterdir())
    assert files == ["_CON.jpg", "x.jpg", "x__2.jpg", "x__3.jpg"] and summary["written"] == 4
    assert summary["renamed_files"] == 3


@pytest.mark.parametrize("link", ["hardlink", "symlink", "copy"])
def test_link_modes(clean: Path, tmp_path: Path, link: str) -> None:
    rows = clean_rows(clean)
    summary = export_manifest(clean, "folder", tmp_path / "out", link=link, progress=False)
    counter = {"hardlink": "hardlinked", "symlink": "symlinked", "copy": "copied"}[link]
    assert summary[counter] == 7 and summary["hardlink_fell_back_to_copy"] == 0
    for row in rows:
        exported = tmp_path / "out" / str(row["new_label"]) / Path(row["path"]).name
        original = source_file(clean, row)
        assert exported.read_bytes() == original.read_bytes()
        assert exported.is_symlink() == (link == "symlink")
        if link == "symlink":
            assert os.readlink(exported) == str(original.resolve()) or Path(os.readlink(exported)) == original
        assert os.path.samefile(exported, original) == (link != "copy")


def test_hardlink_falls_back_to_copy_across_filesystems(clean: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    def cross_device(src, dst, **kwargs):  # noqa: ANN001, ANN003, ANN202
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", cross_device)
    summary = export_manifest(clean, "folder", tmp_path / "out", progress=False)
    assert summary["hardlink_fell_back_to_copy"] == 7 and summary["hardlinked"] == 0 and summary["written"] == 7


def test_existing_non_empty_dest_is_refused_untouched(clean: Path, tmp_path: Path) -> None:
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")
    siblings = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(InputError, match="not empty"):
        export_manifest(clean, "folder", dest, progress=False)
    assert [p.name for p in dest.iterdir()] == ["keep.txt"] and (dest / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == siblings
    empty = tmp_path / "empty"
    empty.mkdir()
    assert export_manifest(clean, "folder", empty, progress=False)["written"] == 7


def test_missing_files_are_counted_and_all_missing_is_an_error(clean: Path, tmp_path: Path) -> None:
    rows = clean_rows(clean)
    source_file(clean, rows[0]).unlink()
    for fmt, dest in (("folder", tmp_path / "out"), ("rec", tmp_path / "rec"), ("csv", tmp_path / "l.csv")):
        summary = export_manifest(clean, fmt, dest, progress=False)
        assert summary["written"] == 6 and summary["skipped_by_reason"] == {"missing": 1}, fmt
    for row in rows[1:]:
        source_file(clean, row).unlink()
    siblings = sorted(p.name for p in tmp_path.iterdir())
    for fmt, dest in (("folder", tmp_path / "out2"), ("rec", tmp_path / "rec2"), ("lst", tmp_path / "l.lst")):
        with pytest.raises(InputError, match="none of the 7 images"):
            export_manifest(clean, fmt, dest, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == siblings  # no DEST, no temporary left behind


# --- csv / lst -----------------------------------------------------------------------------------------------

def test_csv_and_lst_contents_are_exact(tmp_path: Path) -> None:
    clean = files_clean(tmp_path, ["b,x", "a", "b,x", 'q"'])
    rows = clean_rows(clean)
    paths = [str((tmp_path / "data" / r["path"]).absolute()) for r in rows]
    export_manifest(clean, "csv", tmp_path / "new.csv", progress=False)
    quoted = {"b,x": '"b,x"', "a": "a", 'q"': '"q"""'}
    assert (tmp_path / "new.csv").read_text() == "path,label\n" + "".join(
        f"{p},{r['new_label']}\n" for p, r in zip(paths, rows, strict=True))
    export_manifest(clean, "csv", tmp_path / "orig.csv", label_column="label", progress=False)
    assert (tmp_path / "orig.csv").read_text() == "path,label\n" + "".join(
        f"{p},{quoted[r['label']]}\n" for p, r in zip(paths, rows, strict=True))
    summary = export_manifest(clean, "lst", tmp_path / "train.lst", progress=False)
    assert (tmp_path / "train.lst").read_text() == "".join(
        f"{i}\t{r['new_label']}\t{p}\n" for i, (p, r) in enumerate(zip(paths, rows, strict=True)))
    assert summary["written"] == 4 and summary["files"] == [str((tmp_path / "train.lst").absolute())]
    with pytest.raises(InputError, match="integer class numbers"):
        export_manifest(clean, "lst", tmp_path / "bad.lst", label_column="label", progress=False)
    assert not (tmp_path / "bad.lst").exists()


@pytest.mark.parametrize("fmt", ["csv", "lst"])
def test_lists_refuse_an_existing_file_as_rec_does(clean: Path, tmp_path: Path, fmt: str) -> None:
    dest = tmp_path / f"out.{fmt}"
    dest.write_text("precious")
    dangling = tmp_path / f"dangling.{fmt}"
    dangling.symlink_to(tmp_path / "nowhere")
    siblings = sorted(p.name for p in tmp_path.iterdir())
    for existing in (dest, dangling):
        with pytest.raises(InputError, match=rf"--out {existing} already exists.*never overwrites"):
            export_manifest(clean, fmt, existing, progress=False)
    assert dest.read_text() == "precious" and not (tmp_path / "nowhere").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == siblings


def test_inputs_are_checked(clean: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="scores manifest, not a clean manifest"):
        export_manifest(tmp_path / "scores.parquet", "csv", tmp_path / "x.csv", progress=False)
    with pytest.raises(InputError, match="--format"):
        export_manifest(clean, "tar", tmp_path / "x", progress=False)
    with pytest.raises(InputError, match="--link"):
        export_manifest(clean, "folder", tmp_path / "x", link="move", progress=False)
    with pytest.raises(InputError, match="--label-column"):
        export_manifest(clean, "csv", tmp_path / "x.csv", label_column="no_such_column", progress=False)
    with pytest.raises(InputError, match="is the manifest"):
        export_manifest(clean, "csv", clean, progress=False)
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.csv").exists()


# --- RecordIO-sourced manifests ------------------------------------------------------------------------------

@pytest.fixture
def rec_clean(tmp_path: Path) -> tuple[Path, list[bytes], list[int]]:
    labels = [4, 4, 2, 2, 2, 9, 9]
    images = [jpeg_bytes(i) for i in range(len(labels))]
    images[3] = png_bytes(3)
    with RecordIOWriter(tmp_path / "src") as writer:
        keys = [writer.write(label, image) for label, image in zip(labels, images, strict=True)]
    rec = tmp_path / "src" / "train.rec"
    scores = write_scores_manifest(tmp_path / "scores.parquet", [None] * len(labels), labels, rec_index=keys,
                                   input_root=str(rec.resolve()), model={"image_size": 16})
    api.prune(scores, tmp_path / "clean.parquet")
    return tmp_path / "clean.parquet", images, keys


def test_recordio_clean_to_rec(rec_clean, tmp_path: Path) -> None:  # noqa: ANN001
    clean, images, _ = rec_clean
    rows = clean_rows(clean)
    summary = export_manifest(clean, "rec", tmp_path / "out", progress=False)
    assert summary["written"] == 7 and summary["reencoded"] == 1
    labels, exported = check_insightface_layout(tmp_path / "out")
    expected = sorted(range(len(rows)), key=lambda i: rows[i]["new_label"])
    assert labels == [rows[i]["new_label"] for i in expected]
    for position, i in enumerate(expected):
        if i == 3:
            assert Image.open(io.BytesIO(exported[position])).format == "JPEG"
        else:
            assert exported[position] == images[i]
    back = export_manifest(clean, "rec", tmp_path / "orig", label_column="label", progress=False)
    assert back["num_classes"] == 10 and check_insightface_layout(tmp_path / "orig")[0] == [2, 2, 2, 4, 4, 9, 9]


def test_recordio_clean_to_folder_and_not_to_lists(rec_clean, tmp_path: Path) -> None:  # noqa: ANN001
    clean, images, keys = rec_clean
    rows = clean_rows(clean)
    summary = export_manifest(clean, "folder", tmp_path / "out", progress=False)
    assert summary["from_records"] == 7
    for row in rows:
        i = keys.index(row["rec_index"])
        suffix = ".png" if i == 3 else ".jpg"
        assert (tmp_path / "out" / str(row["new_label"]) / f"{row['rec_index']}{suffix}").read_bytes() == images[i]
    for fmt in ("csv", "lst"):
        with pytest.raises(InputError, match="--format folder"):
            export_manifest(clean, fmt, tmp_path / f"x.{fmt}", progress=False)
        assert not (tmp_path / f"x.{fmt}").exists()


@pytest.mark.parametrize("fmt", ["rec", "folder"])
def test_a_cut_off_source_record_is_skipped_and_counted(rec_clean, tmp_path: Path, fmt: str) -> None:  # noqa: ANN001
    clean, images, keys = rec_clean
    rec = tmp_path / "src" / "train.rec"
    offsets = {int(k): int(o) for k, o in (line.split("\t") for line in rec.with_suffix(".idx").read_text().split("\n")
                                           if line)}
    rec.write_bytes(rec.read_bytes()[:offsets[keys[-1]] + 40])  # the last image's header survives, not its bytes
    summary = export_manifest(clean, fmt, tmp_path / "out", progress=False)
    assert summary["written"] == len(keys) - 1 and summary["skipped_by_reason"] == {"unreadable": 1}
    assert summary["skipped_examples"][0].startswith(f"record {keys[-1]}: ")
    assert f"record key {keys[-1]} at offset {offsets[keys[-1]]}" in summary["skipped_examples"][0]
    assert "truncated" in summary["skipped_examples"][0]


def test_recordio_source_gone_is_an_input_error(rec_clean, tmp_path: Path) -> None:  # noqa: ANN001
    clean, _, _ = rec_clean
    (tmp_path / "src" / "train.rec").rename(tmp_path / "moved.rec")
    with pytest.raises(InputError, match="train.rec"):
        export_manifest(clean, "folder", tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


# --- crashes: a killed export is cleaned up by the next one, which then succeeds ---------------------------

KILLED_EXPORT = textwrap.dedent("""
    import os, signal, sys
    from facecleaner.exports import export_manifest, resolve

    manifest, fmt, out, kill_after = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    wrote = resolve.Tally.wrote

    def wrote_then_die(self, label):
        wrote(self, label)
        if self.written == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)

    resolve.Tally.wrote = wrote_then_die
    export_manifest(manifest, fmt, out, link="copy", progress=False)
""")


def run_export(clean: Path, fmt: str, out: Path, kill_after: int = 0, fault: str | None = None) -> int:
    env = {**os.environ, "FACECLEANER_FAULT": fault or ""}
    return subprocess.run([sys.executable, "-c", KILLED_EXPORT, str(clean), fmt, str(out), str(kill_after)],
                          env=env).returncode


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones included) by relative path, with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(("fmt", "out", "leftover"), [
    ("rec", "rec", "rec/.train.rec.{tag}.*.tmp"),
    ("folder", "out", ".out.{tag}.*.tmp"),
    ("csv", "list.csv", ".list.csv.{tag}.*.tmp"),
    ("lst", "list.lst", ".list.lst.{tag}.*.tmp"),
])
def test_an_export_killed_mid_write_leaves_its_temporaries_to_the_next_run(clean: Path, tmp_path: Path, fmt: str,
                                                                          out: str, leftover: str) -> None:
    export_manifest(clean, fmt, tmp_path / "reference" / out, link="copy", progress=False)
    work = tmp_path / "work"
    work.mkdir()
    assert run_export(clean, fmt, work / out, kill_after=3) == -signal.SIGKILL
    tag = f"{fileio.owner_tag().rpartition('-')[0]}-*"
    assert len(list(work.glob(leftover.format(tag=tag)))) == 1  # owner-tagged: host and the dead PID
    assert not (work / out).is_file() and not (work / out / "property").exists()
    summary = export_manifest(clean, fmt, work / out, link="copy", progress=False)  # the same command again
    assert summary["written"] == 7
    assert tree(work) == tree(tmp_path / "reference")  # the complete export and nothing else


@pytest.mark.parametrize("fault", ["between renames", "journal written"])
def test_a_rec_export_killed_while_publishing_is_rolled_back_by_the_next_run(clean: Path, tmp_path: Path,
                                                                            fault: str) -> None:
    export_manifest(clean, "rec", tmp_path / "reference" / "rec", progress=False)
    work = tmp_path / "work"
    assert run_export(clean, "rec", work / "rec", fault=fault) == 137
    published = sorted(p.name for p in (work / "rec").iterdir() if not p.name.startswith("."))
    assert published == (["train.rec"] if fault == "between renames" else [])
    result = invoke("export", clean, "--format", "rec", "--out", work / "rec", "--json")
    assert_ok(result)
    assert json.loads(result.stdout)["written"] == 7
    assert f"undid the unfinished publication of {work / 'rec' / 'train.rec'}" in result.stderr
    assert tree(work) == tree(tmp_path / "reference")
    labels = open_recordio(work / "rec" / "train.rec").table()["label"].tolist()
    assert labels == sorted(r["new_label"] for r in clean_rows(clean))


# --- names ---------------------------------------------------------------------------------------------------

@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(max_size=30), min_size=1, max_size=12, unique=True))
def test_label_folders_are_safe_components_and_distinct(labels: list[str]) -> None:
    folders = label_folders(labels)
    assert len({name_key(name) for name in folders.values()}) == len(labels)
    for name in folders.values():
        assert name not in ("", ".", "..") and not any(c in name for c in "/\\\0:") and not name.startswith(".")
        assert os.path.basename(name) == name and not os.path.isabs(name)
        assert name == safe_component(name)
    for label in labels:
        if safe_component(label) == label:
            assert folders[label] == label or name_key(label) in {name_key(o) for o in labels if o < label}


def test_long_names_are_cut_keeping_the_extension() -> None:
    namer = FileNamer()
    name = namer.pick("0", "é" * 300 + ".jpeg")
    assert name.endswith(".jpeg") and len(name.encode()) <= 200
    assert len(safe_component("x" * 1000).encode()) <= 200
