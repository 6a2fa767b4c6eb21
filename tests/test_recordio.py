"""RecordIO without mxnet: the writer's bytes checked by a reader written here from the format description,
round trips, hand-built files (flag 0, float labels, split records), hostile files and random corruption."""

from __future__ import annotations

import io
import multiprocessing
import os
import pickle
import signal
import struct
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from facecleaner import fileio
from facecleaner.errors import InputError, RecordIOError
from facecleaner.sources.base import Source
from facecleaner.sources.recordio import (
    LABEL_BLOCK,
    RecordIOSource,
    RecordIOWriter,
    _parse_idx,
    _parse_idx_exact,
    _parse_idx_plain,
    frame_record,
    open_recordio,
    pack_record,
    unpack_record,
)

MAGIC = 0xCED7230A
MAGIC_BYTES = struct.pack("<I", MAGIC)


# --- an independent reader, straight from the format description -------------------------------------------

def read_frames(data: bytes) -> list[tuple[int, bytes]]:
    """Every record of a .rec in file order as (offset, payload), joining split parts with the magic."""
    records = []
    position = 0
    while position < len(data):
        start = position
        pieces = []
        while True:
            magic, lrecord = struct.unpack_from("<II", data, position)
            assert magic == MAGIC, f"bad magic at {position}"
            cflag, length = lrecord >> 29, lrecord & ((1 << 29) - 1)
            pieces.append(data[position + 8:position + 8 + length])
            position += 8 + (length + 3) // 4 * 4
            if cflag in (0, 3):
                break
            pieces.append(MAGIC_BYTES)
        records.append((start, b"".join(pieces)))
    return records


def parse_payload(payload: bytes) -> tuple[int, float, tuple[float, ...], int, bytes]:
    """(flag, header label, extra labels, id, image bytes)."""
    flag, label, id_, _ = struct.unpack_from("<IfQQ", payload)
    extra = struct.unpack_from(f"<{flag}f", payload, 24)
    return flag, label, extra, id_, payload[24 + 4 * flag:]


def parse_idx(text: str) -> dict[int, int]:
    pairs = [line.split("\t") for line in text.splitlines() if line]
    return {int(key): int(offset) for key, offset in pairs}


def hand_record(payload: bytes, cflag: int = 0) -> bytes:
    """One frame built by hand: magic, (cflag << 29 | length), payload, zero padding."""
    return struct.pack("<II", MAGIC, (cflag << 29) | len(payload)) + payload + b"\0" * (-len(payload) % 4)


def hand_payload(label: float, image: bytes, flag_labels: tuple[float, ...] = (), id_: int = 0) -> bytes:
    head = struct.pack("<IfQQ", len(flag_labels), 0.0 if flag_labels else label, id_, 0)
    return head + struct.pack(f"<{len(flag_labels)}f", *flag_labels) + image


def write_pair(folder: Path, records: list[tuple[int, bytes]], name: str = "train") -> Path:
    """Write framed records (key, frame bytes) in the given order plus their idx; returns the .rec path."""
    folder.mkdir(parents=True, exist_ok=True)
    rec, lines, offset = bytearray(), [], 0
    for key, frame in records:
        lines.append(f"{key}\t{offset}\n")
        rec += frame
        offset += len(frame)
    (folder / f"{name}.rec").write_bytes(bytes(rec))
    (folder / f"{name}.idx").write_text("".join(lines))
    return folder / f"{name}.rec"


def make_jpeg(seed: int, size: int = 24) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=80)
    return buffer.getvalue()


@pytest.fixture
def no_hang():
    """Fail instead of hanging: an alarm interrupts anything that runs past 10 s."""
    if not hasattr(signal, "SIGALRM"):
        yield
        return

    def interrupt(signum, frame):  # noqa: ANN001, ARG001
        raise TimeoutError("RecordIO reading hung")

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.alarm(10)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# --- the writer, checked independently ----------------------------------------------------------------------

# The magic at image offsets 4 and 8 (payload offsets 28 and 32: aligned, so split, with an empty middle part)
# and at 14 (payload offset 38: not aligned, so kept as data).
TRICKY = b"JPEG" + MAGIC_BYTES + MAGIC_BYTES + b"xy" + MAGIC_BYTES + b"end"


def test_writer_output_read_by_independent_reader(tmp_path: Path) -> None:
    images = [make_jpeg(i) for i in range(6)] + [TRICKY]
    labels = [0, 0, 0, 1, 1, 2, 2]
    with RecordIOWriter(tmp_path, image_size=(112, 96)) as writer:
        keys = [writer.write(label, image) for label, image in zip(labels, images, strict=True)]
    assert keys == list(range(1, 8))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["property", "train.idx", "train.rec"]

    data = (tmp_path / "train.rec").read_bytes()
    records = read_frames(data)
    idx = parse_idx((tmp_path / "train.idx").read_text())
    assert idx[0] == 0, "key 0 (the header) comes first in the file"
    assert sorted(idx) == list(range(0, 7 + 3 + 1))
    by_offset = dict(records)
    assert set(by_offset) == set(idx.values()), "every idx offset starts a record and vice versa"
    payload = {key: by_offset[offset] for key, offset in idx.items()}

    flag, _, ranges, id_, rest = parse_payload(payload[0])
    assert (flag, ranges, id_, rest) == (2, (8.0, 11.0), 0, b"")
    for key, (label, image) in enumerate(zip(labels, images, strict=True), 1):
        flag, label_value, _, id_, image_bytes = parse_payload(payload[key])
        assert (flag, label_value, id_, image_bytes) == (0, float(label), key, image)
    identity = [parse_payload(payload[key]) for key in (8, 9, 10)]
    assert [(f, r, rest) for f, _, r, _, rest in identity] == [
        (2, (1.0, 4.0), b""), (2, (4.0, 6.0), b""), (2, (6.0, 8.0), b"")]
    assert (tmp_path / "property").read_text().strip() == "3,112,96"

    # The tricky image really was split at its two aligned magic words: parts flagged 1, 2, 3.
    start = idx[7]
    flags = []
    position = start
    while True:
        _, lrecord = struct.unpack_from("<II", data, position)
        flags.append(lrecord >> 29)
        length = lrecord & ((1 << 29) - 1)
        position += 8 + (length + 3) // 4 * 4
        if flags[-1] in (0, 3):
            break
    assert flags == [1, 2, 3]


def test_round_trip_jpegs(tmp_path: Path) -> None:
    labels = [0, 0, 1, 1, 1, 2, 3, 3, 5, 5, 5, 5]
    images = [make_jpeg(100 + i) for i in range(len(labels))]
    with RecordIOWriter(tmp_path) as writer:
        for label, image in zip(labels, images, strict=True):
            writer.write(label, image)
    source = open_recordio(tmp_path / "train.rec")
    assert isinstance(source, Source)
    table = source.table()
    assert list(table.columns) == ["path", "rec_index", "label"]
    assert str(table["path"].dtype) == "string" and table["path"].isna().all()
    assert str(table["rec_index"].dtype) == "Int64" and str(table["label"].dtype) == "Int64"
    assert table["rec_index"].tolist() == list(range(1, len(labels) + 1))
    assert table["label"].tolist() == labels
    assert [source.read_bytes(i) for i in range(len(labels))] == images
    assert source.header_range == (len(labels) + 1, len(labels) + 1 + 5)
    assert (tmp_path / "property").read_text().strip() == "6,112,112"
    decoded = Image.open(io.BytesIO(source.read_bytes(3)))
    assert decoded.size == (24, 24)


def test_pack_unpack_and_frame_helpers() -> None:
    payload = pack_record(7, b"img", id=3, id2=4)
    assert payload == struct.pack("<IfQQ", 0, 7.0, 3, 4) + b"img"
    assert unpack_record(payload) == ((0, 7.0, 3, 4), b"img")
    multi = pack_record([2.0, 9.5], b"xy")
    header, image = unpack_record(multi)
    assert (header.flag, header.label, image) == (2, (2.0, 9.5), b"xy")
    with pytest.raises(ValueError):
        unpack_record(b"short")
    with pytest.raises(ValueError):
        unpack_record(struct.pack("<IfQQ", 1000, 0.0, 0, 0) + b"abc")
    plain = pack_record(1, b"abcde")
    assert frame_record(plain) == hand_record(plain)
    split = pack_record(1, TRICKY)
    expected = (hand_record(split[:28], 1) + hand_record(b"", 2)
                + hand_record(split[36:], 3))
    assert frame_record(split) == expected


# --- hand-built files ---------------------------------------------------------------------------------------

def test_flag_zero_dataset_with_float_labels(tmp_path: Path) -> None:
    images = [make_jpeg(200 + i) for i in range(4)]
    labels = [3.0, 0.0, 12.75, 3.0]  # cast like the trainers do: 12.75 → 12
    frames = [(key, hand_record(hand_payload(label, image, id_=key)))
              for key, (label, image) in enumerate(zip(labels, images, strict=True))]
    # idx lines out of key order: rows still come out in key order.
    rec = write_pair(tmp_path, [frames[2], frames[0], frames[3], frames[1]])
    source = open_recordio(rec)
    assert source.header_range is None
    table = source.table()
    assert table["rec_index"].tolist() == [0, 1, 2, 3]
    assert table["label"].tolist() == [3, 0, 12, 3]
    assert [source.read_bytes(i) for i in range(4)] == images


def test_header_with_identity_records_and_multi_label_images(tmp_path: Path) -> None:
    images = [b"one", b"two!", b"three"]
    frames = [(0, hand_record(hand_payload(0, b"", (4.0, 6.0))))]
    frames.append((1, hand_record(hand_payload(0, images[0], (7.0, 1.0), id_=1))))  # label = first label
    frames.append((2, hand_record(hand_payload(7.0, images[1], id_=2))))
    frames.append((3, hand_record(hand_payload(9.0, images[2], id_=3))))
    frames.append((4, hand_record(hand_payload(0, b"", (1.0, 3.0)))))  # identity ranges: not images
    frames.append((5, hand_record(hand_payload(0, b"", (3.0, 4.0)))))
    source = open_recordio(write_pair(tmp_path, frames))
    assert source.header_range == (4, 6)
    assert source.table()["rec_index"].tolist() == [1, 2, 3]
    assert source.table()["label"].tolist() == [7, 7, 9]
    assert [source.read_bytes(i) for i in range(3)] == images


def test_continuation_parts_are_reassembled(tmp_path: Path) -> None:
    image = b"ab" + MAGIC_BYTES + b"cd" + b"MIDDLEPART__" + b"tail!"
    payload = hand_payload(5.0, image, id_=1)  # image starts at payload offset 24
    cut1, cut2 = 24 + 2 + 4 + 2, 24 + 2 + 4 + 2 + 12  # arbitrary cuts (the reader must not care)
    parts = hand_record(payload[:cut1], 1) + hand_record(payload[cut1:cut2], 2) + hand_record(payload[cut2:], 3)
    joined_image = image[:8] + MAGIC_BYTES + image[8:20] + MAGIC_BYTES + image[20:]
    frames = [(0, hand_record(hand_payload(2.0, b"first", id_=0))), (1, parts),
              (2, hand_record(hand_payload(6.0, b"last", id_=2)))]
    source = open_recordio(write_pair(tmp_path, frames))
    assert source.table()["label"].tolist() == [2, 5, 6]
    assert source.read_bytes(1) == joined_image
    assert source.read_bytes(2) == b"last"


def test_split_early_so_the_label_is_in_a_later_part(tmp_path: Path) -> None:
    # The magic sits in the id field (payload offset 8): the label pass must read and join the whole record.
    payload = hand_payload(0, b"image-bytes", (11.0, 2.0), id_=MAGIC)
    assert payload[8:12] == MAGIC_BYTES
    frames = [(1, hand_record(payload[:8], 1) + hand_record(payload[12:], 3)),
              (2, hand_record(hand_payload(4.0, b"x", id_=2)))]
    source = open_recordio(write_pair(tmp_path, frames))
    assert source.header_range is None  # no key 0: every key is an image
    assert source.table()["label"].tolist() == [11, 4]
    assert source.read_bytes(0) == b"image-bytes"
    assert source.read_bytes(1) == b"x"
    assert frame_record(payload) == frames[0][1]


# --- hostile input ------------------------------------------------------------------------------------------

@pytest.fixture
def valid(tmp_path: Path) -> Path:
    with RecordIOWriter(tmp_path / "ds") as writer:
        for i in range(5):
            writer.write(i // 2, make_jpeg(300 + i, 16))
    return tmp_path / "ds" / "train.rec"


def idx_of(rec: Path) -> dict[int, int]:
    return parse_idx(rec.with_suffix(".idx").read_text())


@pytest.mark.usefixtures("no_hang")
def test_cut_identity_records_leave_every_image_readable(valid: Path) -> None:
    offsets = idx_of(valid)
    images = [open_recordio(valid).read_bytes(i) for i in range(5)]
    valid.write_bytes(valid.read_bytes()[:offsets[7]])  # keys 7 and 8 (identity ranges) cut off, 6 kept
    source = open_recordio(valid)
    assert source.table()["label"].tolist() == [0, 0, 1, 1, 2]
    assert [source.read_bytes(i) for i in range(5)] == images
    valid.write_bytes(valid.read_bytes()[:offsets[6]])  # every identity record gone: the images remain
    source = open_recordio(valid)
    assert source.table()["rec_index"].tolist() == [1, 2, 3, 4, 5]
    assert [source.read_bytes(i) for i in range(5)] == images


@pytest.mark.usefixtures("no_hang")
def test_truncated_inside_last_image(valid: Path) -> None:
    offsets = idx_of(valid)
    images = [open_recordio(valid).read_bytes(i) for i in range(4)]
    valid.write_bytes(valid.read_bytes()[:offsets[5] + 40])  # key 5's header survives, its image does not
    source = open_recordio(valid)
    assert source.table()["label"].tolist() == [0, 0, 1, 1, 2]
    assert [source.read_bytes(i) for i in range(4)] == images
    with pytest.raises(OSError, match=rf"record key 5 at offset {offsets[5]}: part at byte {offsets[5]} needs "
                                      rf"\d+ bytes, the file ends after 32 \(truncated\)"):
        source.read_bytes(4)


@pytest.mark.usefixtures("no_hang")
def test_split_record_cut_after_its_header_keeps_its_label(tmp_path: Path) -> None:
    # The magic in the id field splits the header across two parts; the file ends inside the image's part.
    payload = hand_payload(0, b"image-bytes" * 4, (11.0, 2.0), id_=MAGIC)
    frames = [(1, hand_record(hand_payload(4.0, b"x", id_=1))),
              (2, hand_record(payload[:8], 1) + hand_record(payload[12:], 3))]
    rec = write_pair(tmp_path, frames)
    rec.write_bytes(rec.read_bytes()[:-20])
    source = open_recordio(rec)
    assert source.table()["label"].tolist() == [4, 11]
    with pytest.raises(OSError, match=r"record key 2 at offset \d+: part at byte \d+ needs \d+ bytes.*truncated"):
        source.read_bytes(1)


@pytest.mark.usefixtures("no_hang")
@pytest.mark.parametrize("kept", [8, 20, 31])
def test_truncated_inside_last_image_header(valid: Path, kept: int) -> None:
    # The cut leaves key 5 without a whole header: its identity is lost, so the set is refused before any
    # work, naming the key (like a manifest row without a label); reading the other images still works.
    offsets = idx_of(valid)
    valid.write_bytes(valid.read_bytes()[:offsets[5] + kept])
    source = open_recordio(valid)
    with pytest.raises(RecordIOError, match=rf"1 of the 5 images of {valid} have no readable label.*record key 5 "
                                            rf"at offset {offsets[5]}: .*truncated") as info:
        source.table()
    assert "\n" not in str(info.value)
    assert source.read_bytes(3)


@pytest.mark.usefixtures("no_hang")
def test_truncated_inside_last_record_of_flag_zero_set(tmp_path: Path) -> None:
    frames = [(key, hand_record(hand_payload(float(key), make_jpeg(key, 16), id_=key))) for key in range(4)]
    rec = write_pair(tmp_path, frames)
    offsets = idx_of(rec)
    rec.write_bytes(rec.read_bytes()[:offsets[3] + 40])  # key 3's header survives, its image does not
    source = open_recordio(rec)
    assert source.table()["label"].tolist() == [0, 1, 2, 3]
    assert source.read_bytes(2) == frames[2][1][8 + 24:8 + 24 + len(make_jpeg(2, 16))]
    with pytest.raises(OSError, match=rf"key 3 at offset {offsets[3]}.*truncated"):
        source.read_bytes(3)


@pytest.mark.usefixtures("no_hang")
def test_truncated_before_records_start(valid: Path) -> None:
    offsets = idx_of(valid)
    valid.write_bytes(valid.read_bytes()[:offsets[4] - 3])
    with pytest.raises(RecordIOError, match=r"key \d+ offset \d+, past the end") as info:
        open_recordio(valid)
    assert str(valid) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.usefixtures("no_hang")
def test_garbled_magic(valid: Path) -> None:
    offsets = idx_of(valid)
    data = bytearray(valid.read_bytes())
    data[offsets[2]] ^= 0xFF
    valid.write_bytes(bytes(data))
    source = open_recordio(valid)
    with pytest.raises(RecordIOError, match=rf"1 of the 5 images .* no readable label.*key 2 at offset "
                                            rf"{offsets[2]}: bad magic"):
        source.table()
    with pytest.raises(OSError, match=rf"key 2 at offset {offsets[2]}: bad magic"):
        source.read_bytes(1)
    assert source.read_bytes(2)

    data[0] ^= 0xFF  # now the header record too
    valid.write_bytes(bytes(data))
    with pytest.raises(RecordIOError, match=r"header record \(key 0\).*bad magic"):
        open_recordio(valid)


@pytest.mark.usefixtures("no_hang")
def test_huge_length_field_is_truncation_not_allocation(valid: Path) -> None:
    offsets = idx_of(valid)
    data = bytearray(valid.read_bytes())
    struct.pack_into("<I", data, offsets[3] + 4, (1 << 29) - 1)
    valid.write_bytes(bytes(data))
    with pytest.raises(OSError, match=r"key 3 .*truncated"):
        open_recordio(valid).read_bytes(2)


@pytest.mark.usefixtures("no_hang")
def test_continuation_out_of_order(tmp_path: Path) -> None:
    frames = [(1, hand_record(hand_payload(1.0, b"abc"), 2)), (2, hand_record(hand_payload(1.0, b"ok")))]
    source = open_recordio(write_pair(tmp_path, frames))
    assert source.read_bytes(1) == b"ok"
    with pytest.raises(OSError, match="continuation flag 2"):
        source.read_bytes(0)


@pytest.mark.usefixtures("no_hang")
@pytest.mark.parametrize(("idx_text", "message"), [
    ("0\t0\n1\t40\n2\t999999\n", r"key 2 offset 999999, past the end"),
    ("0\t0\n1\tforty\n", r"line 2 is not 'key<TAB>offset'"),
    ("0\t0\n\n1\t40\t7\n", r"line 3 is not"),
    ("0\t0\n-1\t40\n", r"line 2 is not"),
    ("0\t0\n1\t40\n1\t40\n", r"key 1 more than once"),
    ("", r"lists no records"),
    ("\xff\xfe\n", r"line 1 is not"),
    ("0\t0\n1\t40\n", r"no key 2 although the header record \(key 0\) says images are keys 1\.\.5"),
])
def test_bad_idx(valid: Path, idx_text: str, message: str) -> None:
    valid.with_suffix(".idx").write_bytes(idx_text.encode("latin-1"))
    with pytest.raises(RecordIOError, match=message) as info:
        open_recordio(valid)
    assert str(valid.with_suffix(".idx")) in str(info.value) or str(valid) in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("dropped", [1, 3, 5])
def test_idx_without_an_image_key_names_the_first_missing(valid: Path, dropped: int) -> None:
    # Keys 0 (header), 1..5 (images) and 6..8 (identities): the identity keys after a gap do not hide it.
    idx = valid.with_suffix(".idx")
    idx.write_text("".join(line for line in idx.read_text().splitlines(keepends=True)
                           if int(line.split()[0]) not in (dropped, 7)))
    with pytest.raises(RecordIOError, match=rf"has no key {dropped} although the header record \(key 0\) says "
                                            r"images are keys 1\.\.5"):
        open_recordio(valid)


def test_missing_idx_and_empty_files(valid: Path) -> None:
    valid.with_suffix(".idx").unlink()
    with pytest.raises(RecordIOError, match=r"train\.idx is missing"):
        open_recordio(valid)
    valid.write_bytes(b"")
    valid.with_suffix(".idx").write_text("0\t0\n")
    with pytest.raises(RecordIOError, match="is empty"):
        open_recordio(valid)
    with pytest.raises(RecordIOError, match="cannot read RecordIO file"):
        open_recordio(valid.with_name("absent.rec"))


def test_header_record_announcing_too_many_labels(valid: Path) -> None:
    data = bytearray(valid.read_bytes())
    struct.pack_into("<I", data, 8, 9)  # key 0's IRHeader flag: 9 labels in a 32-byte payload
    valid.write_bytes(bytes(data))
    with pytest.raises(RecordIOError, match=r"header record \(key 0\).*announces 9 labels"):
        open_recordio(valid)


def test_header_claiming_no_images(tmp_path: Path) -> None:
    rec = write_pair(tmp_path, [(0, hand_record(hand_payload(0, b"", (1.0, 1.0))))])
    with pytest.raises(RecordIOError, match="holds no images"):
        open_recordio(rec)
    rec = write_pair(tmp_path, [(0, hand_record(hand_payload(0, b"", (float("nan"), 1.0))))])
    with pytest.raises(RecordIOError, match="nan as the end of the image keys"):
        open_recordio(rec)


# --- random corruption ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, bytes]:
    folder = tmp_path_factory.mktemp("pristine")
    rng = np.random.default_rng(7)
    with RecordIOWriter(folder) as writer:
        for i in range(8):
            writer.write(i // 3, rng.bytes(int(rng.integers(1, 40))) if i != 4 else TRICKY)
    return (folder / "train.rec").read_bytes(), (folder / "train.idx").read_bytes()


# Anywhere in either file, or aimed at a record's first bytes (frame header, IRHeader, first label).
corruption = st.one_of(
    st.tuples(st.just("flip"), st.sampled_from(["rec", "idx"]), st.floats(0, 1, exclude_max=True),
              st.integers(1, 255)),
    st.tuples(st.just("truncate"), st.sampled_from(["rec", "idx"]), st.floats(0, 1), st.just(0)),
    st.tuples(st.just("aimed"), st.integers(0, 11), st.integers(0, 39), st.integers(1, 255)),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(changes=st.lists(corruption, min_size=1, max_size=4))
def test_random_corruption_fails_cleanly(pristine: tuple[bytes, bytes], changes: list, no_hang: None) -> None:
    files = {"rec": bytearray(pristine[0]), "idx": bytearray(pristine[1])}
    starts = sorted(parse_idx(pristine[1].decode()).values())
    for kind, target, where, value in changes:
        if kind == "aimed":
            data = files["rec"]
            position = starts[target % len(starts)] + where
            if position < len(data):
                data[position] ^= value
            continue
        data = files[target]
        position = int(where * len(data))
        if kind == "flip" and data:
            data[min(position, len(data) - 1)] ^= value
        elif kind == "truncate":
            del data[position:]
    with tempfile.TemporaryDirectory() as folder:
        rec = Path(folder) / "train.rec"
        rec.write_bytes(bytes(files["rec"]))
        rec.with_suffix(".idx").write_bytes(bytes(files["idx"]))
        try:
            source = open_recordio(rec)
        except RecordIOError as exc:
            assert "\n" not in str(exc)
            return
        try:
            table = source.table()
            assert len(table) == len(source) and table["label"].notna().all()
        except RecordIOError as exc:  # an image whose label cannot be read; its bytes are still tried below
            assert "no readable label" in str(exc) and "\n" not in str(exc)
        for row in range(len(source)):
            try:
                assert isinstance(source.read_bytes(row), bytes)
            except OSError:
                pass
        source.close()


# --- processes ----------------------------------------------------------------------------------------------

def _read_in_child(source, row, queue):  # noqa: ANN001, ANN202
    queue.put((source.read_bytes(row), source._pid == os.getpid()))


def test_pickle_and_fork_reopen_the_handle(valid: Path) -> None:
    source = open_recordio(valid)
    before = source.table().copy()
    first = source.read_bytes(0)
    assert source._file is not None
    clone = pickle.loads(pickle.dumps(source))
    assert clone._file is None
    assert clone.read_bytes(0) == first
    pd.testing.assert_frame_equal(clone.table(), before)
    if "fork" in multiprocessing.get_all_start_methods():  # the child inherits the open handle, unpickled
        context = multiprocessing.get_context("fork")
        queue = context.Queue()
        child = context.Process(target=_read_in_child, args=(source, 4, queue))
        child.start()
        data, reopened = queue.get(timeout=20)
        child.join(20)
        assert data == source.read_bytes(4) and reopened


# --- the writer's contract ----------------------------------------------------------------------------------

def test_writer_leaves_nothing_on_error(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), RecordIOWriter(tmp_path) as writer:
        writer.write(0, b"abc")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="no images"), RecordIOWriter(tmp_path):
        pass
    assert list(tmp_path.iterdir()) == []


def test_writer_temporaries_are_owner_tagged_and_a_dataset_is_never_overwritten(tmp_path: Path) -> None:
    with RecordIOWriter(tmp_path) as writer:
        writer.write(0, b"abc")
        temps = sorted(p.name for p in tmp_path.iterdir())
        tag = fileio.owner_tag()
        assert [name.split(f".{tag}.")[0] for name in temps] == [".property", ".train.idx", ".train.rec"]
        assert all(name.endswith(".tmp") for name in temps)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert sorted(before) == ["property", "train.idx", "train.rec"]
    with pytest.raises(InputError, match=rf"{tmp_path} already holds train.rec, train.idx, property"):
        RecordIOWriter(tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_writer_rejects_bad_labels(tmp_path: Path) -> None:
    with RecordIOWriter(tmp_path, num_classes=10) as writer:
        writer.write(1, b"a")
        writer.write(2, b"b")
        with pytest.raises(ValueError, match="written together"):
            writer.write(1, b"c")
        with pytest.raises(ValueError, match="outside"):
            writer.write(-1, b"c")
        with pytest.raises(TypeError):
            writer.write(1.5, b"c")  # type: ignore[arg-type]
    assert (tmp_path / "property").read_text().strip() == "10,112,112"
    assert open_recordio(tmp_path / "train.rec").table()["label"].tolist() == [1, 2]


# --- block reads of labels and the C parser of .idx, against the per-record path and the line scan ---------

def per_record_labels(source: RecordIOSource) -> tuple[np.ndarray, list[str]]:
    """The labels as they were read before block reads (the reference): one read per record, in file order."""
    labels = np.full(len(source), np.nan)
    failures = []
    for row in np.argsort(source.offsets, kind="stable").tolist():
        key, offset = int(source.keys[row]), int(source.offsets[row])
        try:
            labels[row] = source._label_of(key, offset)
        except OSError as exc:
            failures.append(str(exc).removeprefix(f"{source.rec_path}: "))
            continue
        if not (np.isfinite(labels[row]) and abs(labels[row]) < 2.0**62):
            failures.append(f"record key {key} at offset {offset} gives the label {labels[row]}")
    return labels, failures


def source_over(rec: Path, data: bytes, entries: list[tuple[int, int]]) -> RecordIOSource:
    """A source over ``data`` with the given (key, offset) pairs as its images, keys ascending."""
    rec.write_bytes(data)
    keys, offsets = np.array(sorted(entries), dtype=np.int64).T
    return RecordIOSource(rec, rec.with_suffix(".idx"), keys.copy(), offsets.copy(), None)


def mixed_rec(seed: int) -> tuple[bytes, list[tuple[int, int]]]:
    """A .rec holding every kind of record the label pass meets, and (key, offset) of each, keys shuffled so
    that key order is not file order: plain records with one or several labels, records split before or after
    their label, NaN / infinite / huge labels, records behind 1-3 junk bytes (unaligned), headers announcing
    more labels than the record holds, offsets into junk or into the middle of a record, two keys at one
    record, and gaps of junk."""
    rng = np.random.default_rng(seed)
    data = bytearray()
    offsets = []
    for _ in range(80):
        kind = int(rng.integers(0, 10))
        image = rng.bytes(int(rng.integers(0, 30)))
        label = float(rng.integers(0, 1000))
        if kind in (1, 6):
            data += rng.bytes(int(rng.integers(1, 4)) if kind == 1 else int(rng.integers(50, 300)))
        if kind == 2:
            frame = hand_record(hand_payload(0, image, tuple(rng.integers(0, 99, int(rng.integers(1, 4))) * 1.0)))
        elif kind == 3:  # the magic at an aligned place of the image: the label is in the first part
            frame = frame_record(pack_record(label, rng.bytes(4 * int(rng.integers(0, 4))) + MAGIC_BYTES + image))
        elif kind == 4:  # the magic in the id field: the label is in the second part
            frame = frame_record(pack_record([label, 2.0], image, id=MAGIC))
        elif kind == 5 and rng.random() < 0.3:  # a signalling NaN (float32 bits 0x7f800001)
            frame = hand_record(struct.pack("<IIQQ", 0, 0x7F800001, 0, 0) + image)
        elif kind == 5:
            frame = hand_record(hand_payload(float(rng.choice([np.nan, np.inf, -np.inf, 2.0**62, -1e30])), image))
        elif kind == 7:  # the header announces 9 labels, the record holds fewer
            frame = hand_record(struct.pack("<IfQQ", 9, 0.0, 0, 0) + rng.bytes(int(rng.integers(0, 36))))
        else:
            frame = hand_record(hand_payload(label, image))
        offsets.append(len(data))
        data += frame
        if kind == 8:
            offsets.append(int(rng.integers(0, len(data))))  # into the middle of anything
        if kind == 9:
            offsets.append(offsets[int(rng.integers(0, len(offsets)))])  # a second key for a record
    keys = rng.permutation(len(offsets)) * 3 + 1
    return bytes(data), list(zip(keys.tolist(), offsets, strict=True))


@pytest.mark.usefixtures("no_hang")
@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("seed", range(8))
def test_block_label_reader_matches_per_record_reads(tmp_path: Path, seed: int) -> None:
    data, entries = mixed_rec(seed)
    last = max(offset for _, offset in entries)
    rng = np.random.default_rng(100 + seed)
    for cut in [len(data), last + 8 + 24 + 2, last + 30, last + 5, *rng.integers(last, len(data), 2).tolist()]:
        source = source_over(tmp_path / "train.rec", data[:cut], entries)
        expected_labels, expected_failures = per_record_labels(source)
        assert expected_failures and np.isfinite(expected_labels).sum() > 40, "the file must mix good and bad"
        for block_size in (36, 37, 38, 41, 64, 99, 256, 1000, LABEL_BLOCK):
            labels, failures = source._read_labels(block_size=block_size)
            np.testing.assert_array_equal(labels, expected_labels)
            assert failures == expected_failures
        source.close()


def test_block_label_reader_on_a_written_set_reads_only_split_records_alone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Records of many sizes (so every block size cuts some of them), multi-label headers, one split record.
    rng = np.random.default_rng(11)
    frames, expected = [], []
    for key in range(1, 300):
        label, image = float(rng.integers(0, 50_000)), rng.bytes(int(rng.integers(0, 70)))
        if key == 150:
            image = b"abcd" + MAGIC_BYTES + image
        if key % 7 == 0:
            payload = pack_record([label, -1.0, 3.5], image, id=key)
        else:
            payload = pack_record(label, image, id=key)
        frames.append((key, frame_record(payload)))
        expected.append(label)
    source = open_recordio(write_pair(tmp_path, frames))
    independent = {key: parse_payload(payload) for key, (_, payload) in
                   zip(range(1, 300), read_frames((tmp_path / "train.rec").read_bytes()), strict=True)}
    assert [(extra or (label,))[0] for _, label, extra, _, _ in independent.values()] == expected
    read_alone = []
    original = RecordIOSource._label_of

    def counting(self: RecordIOSource, key: int, offset: int) -> float:
        read_alone.append(key)
        return original(self, key, offset)

    monkeypatch.setattr(RecordIOSource, "_label_of", counting)
    for block_size in (36, 40, 53, 128, 1024, LABEL_BLOCK):
        read_alone.clear()
        labels, failures = source._read_labels(block_size=block_size)
        assert labels.tolist() == expected and failures == []
        assert read_alone == [150]
    assert source.table()["label"].tolist() == [int(label) for label in expected]
    with pytest.raises(ValueError, match="at least 36 bytes"):
        source._read_labels(block_size=35)


def test_block_label_reader_skips_long_gaps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gap = b"\0" * 5000
    frames = [hand_record(hand_payload(float(key), b"img")) for key in range(4)]
    data = gap.join(frames)
    source = source_over(tmp_path / "train.rec", data, [(key, key * (len(frames[0]) + len(gap))) for key in range(4)])
    spans = []
    original = RecordIOSource._read_into

    def recording(self: RecordIOSource, buffer: memoryview, offset: int) -> int:
        spans.append((offset, len(buffer)))
        return original(self, buffer, offset)

    monkeypatch.setattr(RecordIOSource, "_read_into", recording)
    labels, failures = source._read_labels(block_size=1000)
    assert labels.tolist() == [0.0, 1.0, 2.0, 3.0] and failures == []
    assert spans == [(int(offset), 36) for offset in source.offsets]
    spans.clear()
    source._read_labels(block_size=len(data))
    assert spans == [(0, len(data) - len(frames[0]) + 36)]


IDX_SAMPLES = [
    b"0\t0\n1\t40\n", b"0 0\n1 40\n", b"0\t0\r\n1\t40\r\n\r\n", b"\n\n0\t0\n\n\n1\t40", b"  0 \t 0 \n1\t40\n",
    b"00012\t007\n", b"4611686018427387903\t4611686018427387903\n",
    # read by the line scan: accepted there, refused by Arrow or read differently by it
    b"0\t0\n \n1\t40\n", b"0  0\n", b" 0 0\n", b"+0\t0\n", b"1_0\t0\n", b"0\t0\t\n", b"-0\t0\n", b"0\t0\x0b\n",
    b"0 0\n1\t40\n",
    # refused, naming the line
    b"0\t0\n0x1\t0\n", b"0\t0\r1\t40\n", b"0\t\n", b"\t0\n", b"0\t1 2\n", b"0\t0\n\n\n5\n",
    b"4611686018427387904\t0\n", b"0\t9223372036854775808\n", b"0\t99999999999999999999999\n", b"\xff\n", b"",
    b"\n\r\n", b"0\t-1\n", b"1e3\t0\n", b"0\t0\n1\t4\x000\n",
]


def parse_outcome(idx: Path, parse) -> tuple[list[int], list[int]] | str:  # noqa: ANN001 - a parser
    """(keys, offsets) or the RecordIOError message of one parser."""
    try:
        keys, offsets = parse(idx)
    except RecordIOError as exc:
        return str(exc)
    assert keys.dtype == offsets.dtype == np.int64
    return keys.tolist(), offsets.tolist()


def assert_same_idx_outcome(idx: Path, raw: bytes) -> None:
    idx.write_bytes(raw)
    assert parse_outcome(idx, _parse_idx) == parse_outcome(idx, lambda path: _parse_idx_exact(path, raw))


@pytest.mark.parametrize("raw", IDX_SAMPLES)
def test_idx_parser_matches_the_line_scan(tmp_path: Path, raw: bytes) -> None:
    assert_same_idx_outcome(tmp_path / "train.idx", raw)


def test_idx_c_parser_takes_plain_files_and_leaves_the_rest() -> None:
    for raw in IDX_SAMPLES[:7]:
        keys, offsets = _parse_idx_plain(raw)
        scanned_keys, scanned_offsets = _parse_idx_exact(Path("train.idx"), raw)
        assert keys.tolist() == scanned_keys.tolist() and offsets.tolist() == scanned_offsets.tolist()
        assert keys.flags.writeable and offsets.flags.writeable
    for raw in IDX_SAMPLES[7:]:
        assert _parse_idx_plain(raw) is None


@pytest.mark.parametrize(("raw", "message"), [
    (b"0\t0\n\n\n5\t\n", r"line 4 is not 'key<TAB>offset' with non-negative integers: '5'"),
    (b"0 0\r\n1 0x28\r\n", r"line 2 is not .*: '1 0x28'"),
    (b"0\t0\n1\t40\n2\t4611686018427387904\n", r"line 3 is not .*: '2\\t4611686018427387904'"),
    (b"0\t0\r1\t40\n", r"line 1 is not .*: '0\\t0\\r1\\t40'"),
])
def test_bad_idx_line_is_named(tmp_path: Path, raw: bytes, message: str) -> None:
    (tmp_path / "train.idx").write_bytes(raw)
    with pytest.raises(RecordIOError, match=message):
        _parse_idx(tmp_path / "train.idx")


idx_line = st.tuples(
    st.sampled_from(["", "", "+", "-", "0x", " "]),
    st.from_regex(r"[0-9]{1,20}", fullmatch=True),
    st.sampled_from(["\t", "\t", " ", "  ", "\t ", ""]),
    st.sampled_from(["", "", "_1", "x", "\t"]),
    st.from_regex(r"[0-9]{0,20}", fullmatch=True),
    st.sampled_from(["\n", "\n", "\r\n", "\r", "\n\n", " \n"]),
).map("".join)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(idx_line, max_size=6))
def test_idx_parser_matches_the_line_scan_on_generated_files(tmp_path: Path, lines: list[str]) -> None:
    assert_same_idx_outcome(tmp_path / "train.idx", "".join(lines).encode("ascii"))
