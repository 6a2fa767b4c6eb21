"""Sources: image decoding, identity folders, manifests, dispatch on what DATA is, and the label maps."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from facecleaner.errors import InputError
from facecleaner.sources import UnreadableImage, decode_image, open_source
from facecleaner.sources.dataset import MEMORY_CACHE_BYTES, DecodedImages
from facecleaner.sources.files import FileSource, open_identity_folders, open_manifest
from facecleaner.sources.labels import encode_labels, lookup_labels
from facecleaner.sources.recordio import RecordIOSource, RecordIOWriter

SIZE = 16


def encode(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:  # noqa: ANN003
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def noise_rgb(width: int = 32, height: int = 32, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), mode="RGB")


def png_file(path: Path, colour: tuple[int, int, int] = (200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (SIZE, SIZE), colour).save(path, format="PNG")
    return path


def assert_decoded(pixels: np.ndarray, size: int = SIZE) -> None:
    assert isinstance(pixels, np.ndarray)
    assert pixels.shape == (size, size, 3)
    assert pixels.dtype == np.uint8


# --- decode_image -----------------------------------------------------------------------------------------

def test_decode_rgb_png_keeps_pixels() -> None:
    image = noise_rgb(SIZE, SIZE)
    pixels = decode_image(encode(image), SIZE)
    assert_decoded(pixels)
    np.testing.assert_array_equal(pixels, np.asarray(image))


def test_decode_greyscale_becomes_three_equal_channels() -> None:
    grey = noise_rgb(SIZE, SIZE).convert("L")
    pixels = decode_image(encode(grey), SIZE)
    assert_decoded(pixels)
    np.testing.assert_array_equal(pixels[..., 0], np.asarray(grey))
    np.testing.assert_array_equal(pixels[..., 0], pixels[..., 1])
    np.testing.assert_array_equal(pixels[..., 1], pixels[..., 2])


def test_decode_cmyk_jpeg() -> None:
    data = encode(Image.new("RGB", (24, 24), (200, 40, 40)).convert("CMYK"), "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    pixels = decode_image(data, SIZE)
    assert_decoded(pixels)
    red, green, blue = (int(v) for v in pixels.reshape(-1, 3).mean(axis=0))
    assert red > 150 and green < 100 and blue < 100


def test_decode_rgba_png_composites_on_white() -> None:
    rgba = Image.new("RGBA", (SIZE, SIZE), (255, 0, 0, 0))  # fully transparent red
    rgba.paste((0, 0, 255, 255), (0, 0, SIZE // 2, SIZE))  # opaque blue left half
    pixels = decode_image(encode(rgba), SIZE)
    assert_decoded(pixels)
    assert pixels[0, -1].tolist() == [255, 255, 255]
    assert pixels[0, 0].tolist() == [0, 0, 255]


def test_decode_16_bit_greyscale_is_rescaled_not_clipped() -> None:
    values = (np.arange(SIZE * SIZE, dtype=np.uint16).reshape(SIZE, SIZE) * 200).astype(np.uint16)
    data = encode(Image.fromarray(values))
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    pixels = decode_image(data, SIZE)
    assert_decoded(pixels)
    assert pixels.min() == 0 and pixels.max() == 255
    assert len(np.unique(pixels)) > 100  # a gradient, not a clipped white image


def test_decode_palette_png() -> None:
    palette = noise_rgb(SIZE, SIZE).convert("P")
    assert palette.mode == "P"
    pixels = decode_image(encode(palette), SIZE)
    assert_decoded(pixels)
    np.testing.assert_array_equal(pixels, np.asarray(palette.convert("RGB")))


def test_decode_resizes_to_requested_size() -> None:
    image = Image.new("RGB", (200, 150), (10, 120, 230))
    pixels = decode_image(encode(image), SIZE)
    assert_decoded(pixels)
    assert (pixels == np.array([10, 120, 230], dtype=np.uint8)).all()
    assert_decoded(decode_image(encode(image, "JPEG"), 24), 24)


@pytest.mark.parametrize("data", [b"", b"\x00garbage, not an image" * 8], ids=["zero-bytes", "garbage"])
def test_decode_unreadable_bytes(data: bytes) -> None:
    with pytest.raises(UnreadableImage) as info:
        decode_image(data, SIZE)
    assert str(info.value) and "0x" not in str(info.value)  # no memory address: the same reason every run


def test_decode_truncated_jpeg() -> None:
    data = encode(noise_rgb(64, 64), "JPEG")
    with pytest.raises(UnreadableImage, match="truncated"):
        decode_image(data[: len(data) // 2], SIZE)


# --- identity folders ---------------------------------------------------------------------------------------

def test_identity_folders_sorted_identities_and_files(tmp_path: Path) -> None:
    for name in ("zoe", "adam", "Mia"):
        for file in ("b.png", "a.png", "c.JPG"):
            png_file(tmp_path / name / file)
    (tmp_path / "adam" / "notes.txt").write_text("not an image")
    (tmp_path / "loose.png").write_bytes(encode(noise_rgb()))  # a file at the root is no identity
    table = open_identity_folders(tmp_path).table()
    assert table["label"].tolist() == ["Mia"] * 3 + ["adam"] * 3 + ["zoe"] * 3
    assert table["path"].tolist()[:3] == ["Mia/a.png", "Mia/b.png", "Mia/c.JPG"]


def test_identity_folder_files_sorted_non_images_ignored_nested(tmp_path: Path) -> None:
    person = tmp_path / "Zoë Saldaña"  # spaces and non-ASCII in the identity
    for relative in ("b.png", "a photo.png", "ö.jpg", "sub dir/z.png", "sub dir/deeper/y.png", "a_sub/x.png"):
        png_file(person / relative)
    for junk in ("notes.txt", "Thumbs.db", ".DS_Store", "sub dir/readme.md"):
        (person / junk).write_text("x")
    source = open_identity_folders(tmp_path)
    table = source.table()
    assert table["path"].tolist() == [
        "Zoë Saldaña/a photo.png", "Zoë Saldaña/b.png", "Zoë Saldaña/ö.jpg",
        "Zoë Saldaña/a_sub/x.png", "Zoë Saldaña/sub dir/z.png", "Zoë Saldaña/sub dir/deeper/y.png",
    ]
    assert set(table["label"]) == {"Zoë Saldaña"}
    assert table["rec_index"].isna().all()
    for index in range(len(table)):
        assert_decoded(decode_image(source.read_bytes(index), SIZE))


def test_identity_folders_empty_root(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no images found"):
        open_identity_folders(tmp_path)


# --- manifests ------------------------------------------------------------------------------------------------

def test_manifest_relative_paths_resolve_against_its_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "data set"
    png_file(data / "imgs" / "é 1.png")
    png_file(data / "imgs" / "2.png")
    absolute = png_file(tmp_path / "elsewhere" / "3.png")
    manifest = data / "list.csv"
    pd.DataFrame({"path": ["imgs/é 1.png", "imgs/2.png", str(absolute)], "label": ["a", "b", "a"],
                  "note": ["x", "y", "z"]}).to_csv(manifest, index=False)
    monkeypatch.chdir(tmp_path / "elsewhere")
    source = open_source(os.path.relpath(manifest))
    assert source.table()["path"].tolist() == ["imgs/é 1.png", "imgs/2.png", str(absolute)]
    assert "note" not in source.table()  # extra columns are streamed when the scores are written
    monkeypatch.chdir(tmp_path)
    assert pa.concat_tables(source.extras.batches())["note"].to_pylist() == ["x", "y", "z"]
    for index in range(3):
        assert_decoded(decode_image(source.read_bytes(index), SIZE))


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_manifest_missing_label_names_the_row(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"m.{suffix}"
    if suffix == "csv":
        path.write_text("path,label\na.png,alice\nb.png,\nc.png,bob\n")
    else:
        pq.write_table(pa.table({"path": ["a.png", "b.png", "c.png"], "label": ["alice", None, "bob"]}), path)
    with pytest.raises(InputError, match="line 3" if suffix == "csv" else "row 2"):  # 1-based, header = line 1
        open_manifest(path)


def test_manifest_nan_float_label_names_the_row(tmp_path: Path) -> None:
    path = tmp_path / "m.parquet"
    pq.write_table(pa.table({"path": ["a.png", "b.png", "c.png"], "label": [1.0, 2.0, float("nan")]}), path)
    with pytest.raises(InputError, match="row 3"):
        open_source(path)


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_manifest_fractional_labels(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"m.{suffix}"
    frame = pd.DataFrame({"path": ["a.png", "b.png"], "label": [2.0, 1.5]})
    frame.to_csv(path, index=False) if suffix == "csv" else frame.to_parquet(path)
    where = "line 3" if suffix == "csv" else "row 2"
    with pytest.raises(InputError, match=rf"fractional label on {where} \(1\.5\)"):
        open_source(path)


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_manifest_whole_float_labels_are_integers(tmp_path: Path, suffix: str) -> None:
    """An integer label column that once held a NaN is float (3.0): its labels are the integers."""
    path = tmp_path / f"m.{suffix}"
    frame = pd.DataFrame({"path": ["a.png", "b.png", "c.png"], "label": [3.0, -1.0, 3.0]})
    frame.to_csv(path, index=False) if suffix == "csv" else frame.to_parquet(path)
    label = open_source(path).table()["label"]
    assert pd.api.types.is_integer_dtype(label.dtype)
    assert label.tolist() == [3, -1, 3]


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_manifest_label_types(tmp_path: Path, suffix: str) -> None:
    for labels, integer in (([3, 1, 2], True), (["x", "y", "x"], False)):
        path = tmp_path / f"m.{suffix}"
        frame = pd.DataFrame({"path": ["a.png", "b.png", "c.png"], "label": labels})
        frame.to_csv(path, index=False) if suffix == "csv" else frame.to_parquet(path)
        label = open_source(path).table()["label"]
        assert pd.api.types.is_integer_dtype(label.dtype) is integer
        assert label.tolist() == labels


# --- open_source dispatch ---------------------------------------------------------------------------------------

def write_recordio(folder: Path) -> Path:
    with RecordIOWriter(folder, image_size=(SIZE, SIZE)) as writer:
        for label in (0, 0, 1):
            writer.write(label, encode(noise_rgb(SIZE, SIZE, seed=label)))
    return folder / "train.rec"


def test_open_source_dispatch(tmp_path: Path) -> None:
    png_file(tmp_path / "folders" / "alice" / "1.png")
    folder = open_source(tmp_path / "folders")
    assert isinstance(folder, FileSource) and folder.table()["label"].tolist() == ["alice"]

    (tmp_path / "m.csv").write_text("path,label\nfolders/alice/1.png,7\n")
    assert isinstance(open_source(tmp_path / "m.csv"), FileSource)
    pq.write_table(pa.table({"path": ["folders/alice/1.png"], "label": ["alice"]}), tmp_path / "M.PARQUET")
    assert isinstance(open_source(tmp_path / "M.PARQUET"), FileSource)

    rec = write_recordio(tmp_path / "rec")
    for data in (tmp_path / "rec", rec):
        source = open_source(data)
        assert isinstance(source, RecordIOSource)
        assert source.table()["label"].tolist() == [0, 0, 1]
        assert source.table()["path"].isna().all()
        assert_decoded(decode_image(source.read_bytes(2), SIZE))

    (tmp_path / "data.txt").write_text("a.png,1\n")
    with pytest.raises(InputError, match="cannot tell"):
        open_source(tmp_path / "data.txt")
    with pytest.raises(InputError, match="does not exist"):
        open_source(tmp_path / "nothing here")


@pytest.mark.parametrize("content", ["", "path,label\n"], ids=["zero-bytes", "header-only"])
def test_open_source_empty_csv(tmp_path: Path, content: str) -> None:
    (tmp_path / "m.csv").write_text(content)
    with pytest.raises(InputError, match="m.csv"):
        open_source(tmp_path / "m.csv")


# --- labels ------------------------------------------------------------------------------------------------------

def test_encode_labels_sorts_integers_numerically() -> None:
    codes, classes = encode_labels(pd.Series(pd.array([10, 2, 1, 10, 2], dtype="Int64")))
    assert classes == [1, 2, 10]
    assert all(type(c) is int for c in classes)
    assert codes.tolist() == [2, 1, 0, 2, 1]
    assert codes.dtype == np.int32


def test_encode_labels_sorts_strings_lexicographically() -> None:
    codes, classes = encode_labels(pd.Series(pd.array(["b", "a", "10", "9", "B", "é"], dtype="string")))
    assert classes == ["10", "9", "B", "a", "b", "é"]
    assert all(type(c) is str for c in classes)
    assert codes.tolist() == [4, 3, 0, 1, 2, 5]


def test_encode_labels_does_not_depend_on_row_order() -> None:
    _, forward = encode_labels(pd.Series(["c", "a", "b"]))
    _, backward = encode_labels(pd.Series(["b", "a", "c"]))
    assert forward == backward


def test_encode_labels_missing_label() -> None:
    with pytest.raises(InputError, match="row 1"):
        encode_labels(pd.Series(pd.array(["a", None, "b"], dtype="string")))


def test_lookup_labels_unknown_is_minus_one() -> None:
    assert lookup_labels(pd.Series(pd.array([10, 3, 1, 2], dtype="Int64")), [1, 2, 10]).tolist() == [2, -1, 0, 1]
    assert lookup_labels(pd.Series(pd.array(["b", "zed", "a"], dtype="string")), ["a", "b"]).tolist() == [1, -1, 0]
    # integer labels under a model trained on string labels compare by their text
    assert lookup_labels(pd.Series(pd.array([1, 5], dtype="Int64")), ["1", "a"]).tolist() == [0, -1]
    assert lookup_labels(pd.Series(["a"]), []).tolist() == [-1]


def test_lookup_string_labels_under_integer_model() -> None:
    assert lookup_labels(pd.Series(pd.array(["alice", "bob"], dtype="string")), [1, 2]).tolist() == [-1, -1]


# --- DecodedImages' memory cache -------------------------------------------------------------------------

def test_memory_cache_decodes_each_readable_image_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a").mkdir()
    noise_rgb(SIZE, SIZE, seed=1).save(tmp_path / "a" / "1.png")
    noise_rgb(40, 24, seed=2).save(tmp_path / "a" / "2.png")  # another size: resized, and flagged so
    (tmp_path / "a" / "3.png").write_bytes(b"")  # unreadable: never cached, its reason kept
    source = open_identity_folders(tmp_path)
    reads: list[int] = []
    real_read = source.read_bytes
    monkeypatch.setattr(source, "read_bytes", lambda index: reads.append(index) or real_read(index))
    uncached = [DecodedImages(source, SIZE)[i] for i in range(3)]
    reads.clear()
    cached = DecodedImages(source, SIZE, cache=True)
    first = [cached[i] for i in range(3)]
    second = [cached[i] for i in range(3)]
    assert reads == [0, 1, 2, 2]
    for a, b, c in zip(uncached, first, second, strict=True):
        assert torch.equal(a[0], b[0]) and torch.equal(a[0], c[0])
        assert a[1:] == b[1:] == c[1:]
    assert [item[4] for item in second] == [False, True, False]
    assert second[2][1] is False and second[2][3] == "empty file"


def test_memory_cache_limit() -> None:
    per_image = 112 * 112 * 3
    assert DecodedImages.fits_memory_cache(MEMORY_CACHE_BYTES // per_image, 112)
    assert not DecodedImages.fits_memory_cache(MEMORY_CACHE_BYTES // per_image + 1, 112)
    assert DecodedImages.fits_memory_cache(MEMORY_CACHE_BYTES // per_image // 4, 112, processes=4)
    assert not DecodedImages.fits_memory_cache(MEMORY_CACHE_BYTES // per_image // 4 + 1, 112, processes=4)


def test_memory_cache_hands_out_copies(tmp_path: Path) -> None:
    png_file(tmp_path / "a" / "1.png")
    cached = DecodedImages(open_identity_folders(tmp_path), SIZE, cache=True)
    original = cached[0][0].clone()
    cached[0][0].zero_()
    cached[0][0].zero_()
    assert torch.equal(cached[0][0], original)


def _private_bytes() -> int:
    """This process's private resident memory (pages no other process shares), from smaps_rollup."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/smaps_rollup").read_text().splitlines()[1:])
    return sum(int(fields[name].split()[0]) * 1024 for name in ("Private_Clean", "Private_Dirty"))


def _growth_in_a_fork(read) -> int:  # noqa: ANN001 - any callable of a row
    """Private memory a forked child (a DataLoader worker) gains by calling ``read`` on every row."""
    import multiprocessing

    def child(queue, rows: int) -> None:  # noqa: ANN001
        before = _private_bytes()
        for index in range(rows):
            read(index)
        queue.put(_private_bytes() - before)

    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    worker = context.Process(target=child, args=(queue, ROWS_IN_FORK))
    worker.start()
    grown = queue.get(timeout=120)
    worker.join()
    return grown


ROWS_IN_FORK = 300_000


@pytest.mark.skipif(not Path("/proc/self/smaps_rollup").exists(), reason="needs Linux's smaps_rollup")
def test_a_forked_worker_reads_every_path_without_copying_them(tmp_path: Path) -> None:
    """A worker forked from the process holding a large manifest reads every sample's path without gaining a
    private copy of the paths; the same paths in a Python list (the control) are copied into it as they are read."""
    paths = pa.array([f"identity{i // 40:06d}/image{i:08d}.jpg" for i in range(ROWS_IN_FORK)])
    pq.write_table(pa.table({"path": paths, "label": pa.array(np.arange(ROWS_IN_FORK) // 40)}), tmp_path / "m.parquet")
    source = open_manifest(tmp_path / "m.parquet")
    listed = [source.resolved_path(i) for i in range(ROWS_IN_FORK)]
    control = _growth_in_a_fork(lambda index: listed[index])
    grown = _growth_in_a_fork(source.resolved_path)
    assert control > 20 << 20, control  # the measurement sees a copy where there is one
    assert grown < 8 << 20, grown


def test_a_fingerprint_recorded_by_an_older_facecleaner_still_matches(tmp_path: Path) -> None:
    """Runs record the input's fingerprint; one recorded before it was hashed from Arrow buffers (pandas' hash of
    each column as text, computed here as that version did) is still recognised, and a changed input is not."""
    import hashlib

    from facecleaner.sources.base import matches_fingerprint, table_fingerprint

    pq.write_table(pa.table({"path": ["a/1.png", "b/2.png", None], "label": [7, 8, 7]}), tmp_path / "m.parquet")
    table = open_manifest(tmp_path / "m.parquet").table()
    digest = hashlib.sha256()
    for column in ("path", "rec_index", "label"):
        digest.update(pd.util.hash_pandas_object(table[column].astype("string"), index=False).to_numpy().tobytes())
    older = digest.hexdigest()[:16]
    assert older != table_fingerprint(table)
    assert matches_fingerprint(table, older) and matches_fingerprint(table, table_fingerprint(table))
    changed = table.assign(label=pd.array([7, 8, 8], dtype="Int64"))
    assert not matches_fingerprint(changed, older) and not matches_fingerprint(changed, table_fingerprint(table))


def test_a_csv_row_with_too_many_fields_is_refused_when_opened(tmp_path: Path) -> None:
    """Only path and label are kept from a CSV manifest, but the whole file is read when it is opened, so a
    malformed row is refused then, naming its line, not when the scores are written hours later."""
    path = tmp_path / "m.csv"
    path.write_text("path,label,x\na.jpg,1,2\nb.jpg,2,3,4\n")
    with pytest.raises(InputError, match="Expected 3 fields in line 3, saw 4"):
        open_manifest(path)
