"""insightface / MXNet RecordIO datasets (``train.rec`` + ``train.idx``), read and written without mxnet.

Framing (dmlc-core): every record is ``uint32 magic 0xced7230a``, ``uint32 lrecord`` (top 3 bits: continuation
flag, low 29 bits: length), then the payload padded to 4 bytes. A payload holding the magic at a 4-aligned
position is split there (the magic itself is dropped) into parts flagged 1 (first), 2 (middle), 3 (last); a
reader joins the parts with the magic in between. Payload: ``IRHeader`` (``<IfQQ``: flag, label, id, id2), then
``flag`` float32 labels when ``flag > 0``, then the encoded image.

insightface layout: key 0 is a header whose labels are ``(first identity key, end of identity keys)``; images
are keys ``1 .. label[0] - 1``; keys ``label[0] ..`` describe each identity's image range ``(first, end)`` and are
not images. When key 0 has ``flag == 0`` (or there is no key 0), every key of the ``.idx`` is an image.
"""

from __future__ import annotations

import io
import numbers
import operator
import os
import struct
import threading
from array import array
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv

from facecleaner.errors import InputError, RecordIOError
from facecleaner.fileio import commit, recover_outputs, temporary_beside

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_FRAME = struct.Struct("<II")
_IR = struct.Struct("<IfQQ")
_LENGTH_MASK = (1 << 29) - 1
#: A part's length field has 29 bits.
MAX_PART = 1 << 29
#: Labels and header ranges are float32: integers past 2**24 are no longer exact.
FLOAT32_EXACT = 1 << 24
#: The framed header record (flag 2, two float labels, no image) is always this long; the writer reserves it.
_HEADER_RECORD_SIZE = _FRAME.size + _IR.size + 8
#: Bytes read per record when collecting labels: frame + IRHeader + the first extra label.
_PEEK = _FRAME.size + _IR.size + 4
#: Labels past this do not fit int64 once truncated.
_LARGEST_LABEL = 2.0**62
#: Bytes of the .rec read at once when collecting labels, into one buffer reused for the whole pass (8 MiB was
#: faster than 4, 16 or 32 on the 2-core box: the block stays in cache while its headers are decoded).
LABEL_BLOCK = 8 << 20
#: Keys and offsets of an ``.idx`` must stay below this.
_IDX_LIMIT = 1 << 62
#: The only bytes the C parser of ``.idx`` files is trusted with; a file holding any other byte (a sign, ``_``,
#: other whitespace, ``x`` of a hex number) is read by the exact line-by-line scan, which decides.
_IDX_PLAIN_BYTES = b"0123456789\t\n\r "

#: The files of one RecordIO dataset, as insightface's arcface_torch reads them from its ``rec`` folder.
REC_FILES = ("train.rec", "train.idx", "property")

_IDX_FIX = "re-create train.idx from train.rec (mxnet's tools/rec2idx.py does that) or re-download the pair"
_REC_FIX = "the .rec is damaged or does not belong to this .idx; re-download or re-export the pair"


class IRHeader(NamedTuple):
    """mxnet's image-record header; ``label`` is a float, or a tuple of ``flag`` floats when ``flag > 0``."""

    flag: int
    label: float | tuple[float, ...]
    id: int
    id2: int


def pack_record(label: float | Sequence[float], image: bytes, id: int = 0, id2: int = 0) -> bytes:
    """Payload of one record, as ``mx.recordio.pack``: a scalar label goes in the header, a sequence after it."""
    if isinstance(label, numbers.Real):
        return _IR.pack(0, float(label), id, id2) + bytes(image)
    labels = [float(value) for value in label]
    if not labels:
        raise ValueError("a label sequence must hold at least one value")
    return _IR.pack(len(labels), 0.0, id, id2) + struct.pack(f"<{len(labels)}f", *labels) + bytes(image)


def unpack_record(payload: bytes) -> tuple[IRHeader, bytes]:
    """Split a payload into its header and image bytes, as ``mx.recordio.unpack``; ``ValueError`` if too short."""
    if len(payload) < _IR.size:
        raise ValueError(f"record payload is {len(payload)} bytes, shorter than its {_IR.size}-byte header")
    flag, label, id_, id2 = _IR.unpack_from(payload)
    if flag == 0:
        return IRHeader(flag, label, id_, id2), bytes(payload[_IR.size:])
    end = _IR.size + 4 * flag
    if end > len(payload):
        raise ValueError(f"record header announces {flag} labels but the payload is only {len(payload)} bytes")
    labels = struct.unpack_from(f"<{flag}f", payload, _IR.size)
    return IRHeader(flag, labels, id_, id2), bytes(payload[end:])


def frame_record(payload: bytes) -> bytes:
    """The bytes one record occupies in a ``.rec``, split at aligned magic words exactly as dmlc-core does."""
    if len(payload) >= MAX_PART:
        raise ValueError(f"a RecordIO record holds less than {MAX_PART} bytes, got {len(payload)}")
    cuts = []
    found = payload.find(_MAGIC_BYTES)
    while found != -1:
        if found % 4 == 0:
            cuts.append(found)
            found = payload.find(_MAGIC_BYTES, found + 4)
        else:
            found = payload.find(_MAGIC_BYTES, found + 1)
    pieces = []
    start = 0
    for number, cut in enumerate(cuts):
        pieces.append(_FRAME.pack(MAGIC, ((1 if number == 0 else 2) << 29) | (cut - start)))
        pieces.append(payload[start:cut])
        start = cut + 4
    tail = len(payload) - start
    pieces.append(_FRAME.pack(MAGIC, ((3 if cuts else 0) << 29) | tail))
    pieces.append(payload[start:])
    pieces.append(b"\0" * (-tail % 4))
    return b"".join(pieces)


class RecordIOSource:
    """The images of a RecordIO pair; row ``i`` is image key ``rec_index[i]`` (keys ascending).

    The file handle is opened lazily in each process, so the object pickles into DataLoader workers; the
    label table is built on first use with one pass over the record headers and is not pickled.
    """

    def __init__(self, rec_path: Path, idx_path: Path, keys: np.ndarray, offsets: np.ndarray,
                 header_range: tuple[int, int] | None) -> None:
        self.rec_path = rec_path
        self.idx_path = idx_path
        self.keys = keys
        self.offsets = offsets
        #: Key 0's labels ``(first identity key, end of identity keys)``; None when key 0 is an image or absent.
        self.header_range = header_range
        self.description = f"RecordIO {rec_path} ({len(keys)} images)"
        self._file = None
        self._pid: int | None = None
        self._lock = threading.Lock()
        self._table: pd.DataFrame | None = None

    def __len__(self) -> int:
        return len(self.keys)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.update(_file=None, _pid=None, _lock=None, _table=None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def close(self) -> None:
        """Close this process's handle (reading again reopens it)."""
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file = None
        self._pid = None

    def table(self) -> pd.DataFrame:
        """``path`` (null), ``rec_index`` (the key) and ``label`` (Int64).

        An image whose label cannot be read (the file ends inside its header, a garbled header) has no
        identity to train or score it under, just as a manifest row without a label: ``RecordIOError`` naming
        the first such key. An image whose bytes alone are cut or damaged keeps its row (``read_bytes`` fails).
        """
        if self._table is None:
            labels, failures = self._read_labels()
            if failures:
                raise RecordIOError(f"{len(failures)} of the {len(self.keys)} images of {self.rec_path} have no "
                                    f"readable label (identity); first: {failures[0]}",
                                    "the .rec is damaged or cut short; re-download or re-export the pair")
            count = len(self.keys)
            self._table = pd.DataFrame({
                "path": pd.array(pa.nulls(count, pa.string()), dtype="string"),
                "rec_index": pd.array(self.keys, dtype="Int64"),
                "label": _labels_to_int(labels),
            })
        return self._table

    def read_bytes(self, index: int) -> bytes:
        """The encoded image of row ``index``; ``OSError`` naming the key and offset when the record is bad."""
        key, offset = int(self.keys[index]), int(self.offsets[index])
        payload = self._read_payload(key, offset)
        try:
            _, image = unpack_record(payload)
        except ValueError as exc:
            raise OSError(f"{self.rec_path}: record key {key} at offset {offset}: {exc}") from None
        if not image:
            raise OSError(f"{self.rec_path}: record key {key} at offset {offset} holds no image bytes")
        return image

    # -- reading --------------------------------------------------------------------------------------------

    def _handle(self) -> io.RawIOBase:
        """This process's own handle on the .rec, opened on first use."""
        if self._file is None or self._pid != os.getpid():
            self._file = open(self.rec_path, "rb", buffering=0)  # noqa: SIM115 - held for the object's life
            self._pid = os.getpid()
        return self._file

    def _read_at(self, size: int, offset: int) -> bytes:
        """Up to ``size`` bytes at ``offset`` from this process's own handle (pread: no shared file position)."""
        file = self._handle()
        if hasattr(os, "pread"):
            return os.pread(file.fileno(), size, offset)
        with self._lock:
            file.seek(offset)
            return file.read(size)

    def _read_into(self, buffer: memoryview, offset: int) -> int:
        """Fill ``buffer`` from ``offset`` (less at the end of the file) without allocating; returns the count."""
        file = self._handle()
        if hasattr(os, "preadv"):
            return os.preadv(file.fileno(), [buffer], offset)
        with self._lock:
            file.seek(offset)
            return file.readinto(buffer)

    def _read_payload(self, key: int, offset: int, limit: int | None = None) -> bytes:
        """Reassemble one record's payload from its parts, or only its first ``limit`` bytes (then a cut
        further on does not matter); every failure is an ``OSError`` naming key/offset."""
        where = f"{self.rec_path}: record key {key} at offset {offset}"
        parts = []
        collected = 0
        position = offset
        first = True
        while True:
            head = self._read_at(_FRAME.size, position)
            if len(head) < _FRAME.size:
                raise OSError(f"{where}: file ends at byte {position + len(head)} inside the record (truncated)")
            magic, lrecord = _FRAME.unpack(head)
            if magic != MAGIC:
                raise OSError(f"{where}: bad magic 0x{magic:08x} at byte {position} (expected 0x{MAGIC:08x})")
            cflag, length = lrecord >> 29, lrecord & _LENGTH_MASK
            if cflag not in ((0, 1) if first else (2, 3)):
                raise OSError(f"{where}: unexpected continuation flag {cflag} at byte {position}")
            wanted = length if limit is None else min(length, limit - collected)
            data = self._read_at(wanted, position + _FRAME.size)
            if len(data) < wanted:
                raise OSError(f"{where}: part at byte {position} needs {length} bytes, the file ends after "
                              f"{len(data)} (truncated)")
            parts.append(data)
            if cflag in (0, 3):
                return b"".join(parts)
            parts.append(_MAGIC_BYTES)
            collected += wanted + len(_MAGIC_BYTES)
            if limit is not None and collected >= limit:
                return b"".join(parts)[:limit]
            position += _FRAME.size + length + (-length % 4)
            first = False

    def _read_labels(self, block_size: int = LABEL_BLOCK) -> tuple[np.ndarray, list[str]]:
        """Every image's label as float64; and, in file order, why the label of each image that has none could
        not be read.

        One pass in file order with reads of at most ``block_size`` bytes (a gap longer than that is skipped,
        not read): the plain records whose first bytes lie in a block are decoded together; any other (split,
        cut short, damaged) is read alone by :meth:`_label_of`, so results and messages do not depend on the
        blocks.
        """
        if block_size < _PEEK:
            raise ValueError(f"block_size must be at least {_PEEK} bytes, got {block_size}")
        order = _stable_order(self.offsets)
        keys, offsets = self.keys[order], self.offsets[order]
        labels = np.full(len(offsets), np.nan)  # in file order, like ``keys`` and ``offsets``
        failed: list[tuple[int, str]] = []  # (position in file order, why)
        buffer = memoryview(bytearray(min(block_size, int(offsets[-1] - offsets[0]) + _PEEK)))
        first = 0
        while first < len(offsets):
            start = int(offsets[first])
            stop = int(np.searchsorted(offsets, start + block_size - _PEEK, side="right"))
            block = buffer[:self._read_into(buffer[:int(offsets[stop - 1]) + _PEEK - start], start)]
            labels[first:stop], plain = _decode_labels(block, offsets[first:stop] - start)
            for position in (first + np.flatnonzero(~plain)).tolist():
                try:
                    labels[position] = self._label_of(int(keys[position]), int(offsets[position]))
                except OSError as exc:
                    failed.append((position, str(exc).removeprefix(f"{self.rec_path}: ")))
            first = stop
        unusable = ~(np.isfinite(labels) & (np.abs(labels) < _LARGEST_LABEL))
        unusable[[position for position, _ in failed]] = False  # already explained
        failed.extend((position, f"record key {int(keys[position])} at offset "
                                 f"{int(offsets[position])} gives the label {labels[position]}")
                      for position in np.flatnonzero(unusable).tolist())
        failed.sort()
        by_row = np.empty_like(labels)
        by_row[order] = labels
        return by_row, [why for _, why in failed]

    def _label_of(self, key: int, offset: int) -> float:
        """The first label of one record read alone; ``OSError`` naming the key when it has none."""
        try:
            return _peek_label(self._read_at(_PEEK, offset))
        except (LookupError, ValueError):  # split, short or damaged: walk its parts for the header alone
            return self._label_from_parts(key, offset)

    def _label_from_parts(self, key: int, offset: int) -> float:
        """The first label of a record read part by part, up to its header; ``OSError`` naming the key."""
        head = self._read_payload(key, offset, _IR.size)
        if len(head) < _IR.size:
            raise OSError(f"{self.rec_path}: record key {key} at offset {offset}: the record is {len(head)} "
                          f"bytes, shorter than its {_IR.size}-byte header")
        flag, label, _, _ = _IR.unpack_from(head)
        if flag == 0:
            return label
        head = self._read_payload(key, offset, _IR.size + 4)
        if len(head) < _IR.size + 4:
            raise OSError(f"{self.rec_path}: record key {key} at offset {offset}: the header announces {flag} "
                          "labels but the record ends before the first")
        return struct.unpack_from("<f", head, _IR.size)[0]


def _peek_label(head: bytes) -> float:
    """A record's label from its first bytes; ``LookupError`` when its parts must be walked, ``ValueError``
    when the bytes are not a record's start."""
    if len(head) < _FRAME.size:
        raise ValueError("truncated")
    magic, lrecord = _FRAME.unpack_from(head)
    if magic != MAGIC:
        raise ValueError("bad magic")
    if lrecord >> 29 != 0 or len(head) < _FRAME.size + _IR.size:
        raise LookupError
    length = lrecord & _LENGTH_MASK
    flag, label, _, _ = _IR.unpack_from(head, _FRAME.size)
    if flag == 0:
        if length < _IR.size:
            raise ValueError("short")
        return label
    if length < _IR.size + 4 * flag or len(head) < _PEEK:
        raise LookupError
    return struct.unpack_from("<f", head, _FRAME.size + _IR.size)[0]


def _decode_labels(block: memoryview, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The labels of the records starting at bytes ``starts`` of ``block``, decoded together, and which records
    are plain: their first bytes lie in the block, one whole part (continuation flag 0), a length that holds the
    header and its first label. Exactly :func:`_peek_label`'s accepted cases; the others get NaN here."""
    labels = np.full(len(starts), np.nan)
    plain = np.zeros(len(starts), dtype=bool)
    phases = np.where(starts + _PEEK <= len(block), starts % 4, -1)  # -1: its first bytes run past the block
    for phase in range(4):  # 32-bit words start at each record; a valid file has every record at phase 0
        chosen = np.flatnonzero(phases == phase)
        if not chosen.size:
            continue
        words = np.frombuffer(block, dtype="<u4", offset=phase, count=(len(block) - phase) // 4)
        at = (starts[chosen] - phase) // 4  # word 0 magic, 1 lrecord, 2 flag, 3 label, 8 the first extra label
        lrecord, flag = words[at + 1], words[at + 2].astype(np.int64)
        ok = (words[at] == MAGIC) & (lrecord >> 29 == 0) & ((lrecord & _LENGTH_MASK) >= _IR.size + 4 * flag)
        floats = words.view("<f4")
        with np.errstate(invalid="ignore"):  # damaged bytes may hold a signalling NaN: it reads as NaN, as in struct
            labels[chosen] = np.where(ok, np.where(flag == 0, floats[at + 3], floats[at + 8]), np.nan)
        plain[chosen] = ok
    return labels, plain


def _stable_order(values: np.ndarray) -> np.ndarray | slice:
    """What indexes ``values`` into ascending order, stably; a whole slice (no copy) when they already are."""
    return np.argsort(values, kind="stable") if (values[1:] < values[:-1]).any() else slice(None)


def _labels_to_int(values: np.ndarray) -> pd.arrays.IntegerArray:
    """Finite float labels to Int64 the way trainers cast them (3.0 → 3, truncating)."""
    return pd.array(np.trunc(values).astype(np.int64), dtype="Int64")


def open_recordio(rec_path: str | Path) -> RecordIOSource:
    """Open ``rec_path`` with its ``.idx``; checks the index, the offsets and key 0 now, other records on read."""
    rec_path = Path(rec_path)
    idx_path = rec_path.with_suffix(".idx")
    try:
        rec_size = rec_path.stat().st_size
    except OSError as exc:
        raise RecordIOError(f"cannot read RecordIO file {rec_path}: {exc.strerror or exc}",
                            "give the path of an existing train.rec") from None
    if rec_size == 0:
        raise RecordIOError(f"RecordIO file {rec_path} is empty", _REC_FIX)
    keys, offsets = _parse_idx(idx_path)
    order = _stable_order(keys)
    keys, offsets = keys[order], offsets[order]
    duplicated = np.flatnonzero(keys[1:] == keys[:-1])
    if duplicated.size:
        raise RecordIOError(f"{idx_path} lists key {int(keys[duplicated[0]])} more than once", _IDX_FIX)
    source = RecordIOSource(rec_path, idx_path, keys, offsets, None)
    if keys[0] != 0:
        _check_image_offsets(source, keys, offsets, rec_size)
        return source
    try:
        header, _ = unpack_record(source._read_payload(0, int(offsets[0])))
    except (OSError, ValueError) as exc:
        raise RecordIOError(f"cannot read the header record (key 0) of {rec_path}: {exc}", _REC_FIX) from None
    finally:
        source.close()
    if header.flag == 0:
        _check_image_offsets(source, keys, offsets, rec_size)
        return source
    end = header.label[0]
    if not (np.isfinite(end) and end >= 1 and end == int(end)):
        raise RecordIOError(f"the header record (key 0) of {rec_path} gives {end!r} as the end of the image "
                            "keys, not a positive integer", _REC_FIX)
    end = int(end)
    if end == 1:
        raise RecordIOError(f"the header record (key 0) of {rec_path} says the dataset holds no images",
                            "give a RecordIO dataset with at least one image")
    # Keys are sorted and unique: those in 1..end-1 are one slice, all of them when it is that long.
    first_row, end_row = np.searchsorted(keys, [1, min(end, int(keys[-1]) + 1)]).tolist()
    image_keys, image_offsets = keys[first_row:end_row], offsets[first_row:end_row]
    # The identity records after the images may be cut off: never checked.
    _check_image_offsets(source, image_keys, image_offsets, rec_size)
    if len(image_keys) < end - 1:
        gaps = np.flatnonzero(image_keys != np.arange(1, len(image_keys) + 1))
        first = int(gaps[0]) + 1 if gaps.size else len(image_keys) + 1
        raise RecordIOError(f"{idx_path} has no key {first} although the header record (key 0) says images "
                            f"are keys 1..{end - 1}", _IDX_FIX)
    second = int(header.label[1]) if header.flag > 1 and np.isfinite(header.label[1]) else end
    return RecordIOSource(rec_path, idx_path, image_keys, image_offsets, (end, second))


def _check_image_offsets(source: RecordIOSource, keys: np.ndarray, offsets: np.ndarray, rec_size: int) -> None:
    """RecordIOError when an image record starts past the end of the .rec: its label is lost with it.

    One that starts inside the file but is cut short keeps its row (reading its image fails, naming its key).
    """
    bad = np.flatnonzero(offsets > rec_size - _FRAME.size)
    if bad.size:
        row = int(bad[0])
        raise RecordIOError(f"{source.idx_path} gives image key {int(keys[row])} offset {int(offsets[row])}, past "
                            f"the end of {source.rec_path} ({rec_size} bytes; {bad.size} such keys)", _REC_FIX)


def _parse_idx(idx_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``key<TAB>offset`` lines → int64 arrays, in file order; any problem is a ``RecordIOError`` with the line.

    Arrow's C CSV reader parses the usual file; whatever it cannot take as is (odd bytes, a bad line) goes to
    the exact scan, which accepts the same files as before and names the first bad line.
    """
    try:
        raw = idx_path.read_bytes()
    except FileNotFoundError:
        raise RecordIOError(f"RecordIO index {idx_path} is missing", _IDX_FIX) from None
    except OSError as exc:
        raise RecordIOError(f"cannot read RecordIO index {idx_path}: {exc.strerror or exc}", _IDX_FIX) from None
    parsed = _parse_idx_plain(raw)
    return parsed if parsed is not None else _parse_idx_exact(idx_path, raw)


def _parse_idx_plain(raw: bytes) -> tuple[np.ndarray, np.ndarray] | None:
    """Keys and offsets of an ``.idx`` made of digits, one tab (or, in a file without tabs, one space) between
    the two fields, blank lines and LF or CRLF line ends, with values below 2**62; None for anything else.

    Arrow alone would also take a hex number or a lone CR as a line end, which the exact scan refuses: such
    bytes never reach it.
    """
    if raw.translate(None, _IDX_PLAIN_BYTES) or (b"\r" in raw and raw.count(b"\r") != raw.count(b"\r\n")):
        return None
    names = ["key", "offset"]
    try:  # one thread: as fast on a loaded 2-core box, and ranks opening the set together share the cores
        table = pa_csv.read_csv(
            pa.py_buffer(raw), read_options=pa_csv.ReadOptions(column_names=names, use_threads=False),
            parse_options=pa_csv.ParseOptions(delimiter="\t" if b"\t" in raw else " ", quote_char=False),
            convert_options=pa_csv.ConvertOptions(column_types=dict.fromkeys(names, pa.int64()), null_values=[]))
    except pa.ArrowInvalid:  # a line without two fields, an empty field, a value past int64, no line at all
        return None
    keys, offsets = (table.column(name).combine_chunks().to_numpy().copy() for name in names)
    if not len(keys) or keys.max() >= _IDX_LIMIT or offsets.max() >= _IDX_LIMIT:
        return None
    return keys, offsets


def _parse_idx_exact(idx_path: Path, raw: bytes) -> tuple[np.ndarray, np.ndarray]:
    """The line-by-line scan: ``int()`` of the two whitespace-separated fields of each non-blank line."""
    keys = array("q")
    offsets = array("q")
    for number, line in enumerate(raw.split(b"\n"), 1):
        fields = line.split()
        if not fields:
            continue
        try:
            if len(fields) != 2:
                raise ValueError
            key, offset = int(fields[0]), int(fields[1])
            if not (0 <= key < _IDX_LIMIT and 0 <= offset < _IDX_LIMIT):
                raise ValueError
        except ValueError:
            shown = line.strip()[:60].decode("ascii", "backslashreplace")
            raise RecordIOError(f"{idx_path} line {number} is not 'key<TAB>offset' with non-negative integers: "
                                f"{shown!r}", _IDX_FIX) from None
        keys.append(key)
        offsets.append(offset)
    if not keys:
        raise RecordIOError(f"RecordIO index {idx_path} lists no records", _IDX_FIX)
    return np.frombuffer(keys, dtype=np.int64).copy(), np.frombuffer(offsets, dtype=np.int64).copy()


class RecordIOWriter:
    """Write ``train.rec``/``train.idx``/``property`` in insightface's layout, atomically, into a folder that
    does not hold them yet.

    Images get keys 1..N in write order; the images of one identity must be written together. On a clean
    close, key 0 (written into space reserved at the start of the ``.rec``) gets ``(N+1, N+1+C)`` and keys
    N+1.. get each identity's ``(first key, last key + 1)``, in order of first appearance — what
    arcface_torch's ``MXFaceDataset`` and mxnet's ``MXIndexedRecordIO`` read. ``property`` holds
    ``num_classes,height,width``; ``num_classes`` defaults to the largest label + 1.

    The three files are written under owner-tagged temporary names in ``dest_dir`` and published together by
    a journaled commit that a crash rolls back; a new writer first recovers what a killed one left there
    (:func:`facecleaner.fileio.recover_outputs`), so the same export run again simply succeeds. An exception
    inside ``with`` deletes the temporaries.
    """

    def __init__(self, dest_dir: str | Path, image_size: tuple[int, int] = (112, 112),
                 num_classes: int | None = None) -> None:
        self.dest_dir = Path(dest_dir)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.num_classes = num_classes
        self.targets = [self.dest_dir / name for name in REC_FILES]
        self.dest_dir.mkdir(parents=True, exist_ok=True)
        recover_outputs(self.targets)
        present = [path.name for path in self.targets if path.exists() or path.is_symlink()]
        if present:
            raise InputError(f"{self.dest_dir} already holds {', '.join(present)}",
                             "give a new or empty folder; an export never overwrites a dataset")
        self._temps: list[Path] = []
        self._rec = None
        try:
            self._temps.extend(temporary_beside(path) for path in self.targets)
            self._rec = open(self._temps[0], "wb")  # noqa: SIM115 - held until close() or abort()
            self._rec.write(b"\0" * _HEADER_RECORD_SIZE)
        except BaseException:
            self.abort()
            raise
        self._position = _HEADER_RECORD_SIZE
        self._offsets = array("q")
        self._ranges: dict[int, list[int]] = {}
        self._last_label: int | None = None
        self._done = False

    def __enter__(self) -> RecordIOWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:  # noqa: ANN001 - context-manager protocol
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def __len__(self) -> int:
        return len(self._offsets)

    def write(self, label: int, image_bytes: bytes) -> int:
        """Append one image with an integer class label (0 ≤ label < 2**24); returns its record key."""
        if self._done:
            raise ValueError("this RecordIOWriter is already closed")
        label = operator.index(label)
        if not 0 <= label < FLOAT32_EXACT:
            raise ValueError(f"label {label} is outside 0..{FLOAT32_EXACT - 1} (RecordIO stores labels as float32)")
        if label != self._last_label and label in self._ranges:
            raise ValueError(f"the images of label {label} must be written together (keys "
                             f"{self._ranges[label][0]}..{self._ranges[label][1] - 1} already hold it)")
        key = len(self._offsets) + 1
        if key + len(self._ranges) + 1 >= FLOAT32_EXACT:
            raise RecordIOError(f"more than {FLOAT32_EXACT - 2} records do not fit one RecordIO file (its key "
                                f"ranges are float32)", "export the dataset in several parts")
        framed = frame_record(pack_record(float(label), image_bytes, id=key))
        self._rec.write(framed)
        self._offsets.append(self._position)
        self._position += len(framed)
        if label == self._last_label:
            self._ranges[label][1] = key + 1
        else:
            self._ranges[label] = [key, key + 1]
            self._last_label = label
        return key

    def close(self) -> None:
        """Write the header and identity records, the index and ``property``; then publish all three."""
        if self._done:
            return
        try:
            self._finish()
        except BaseException:
            self.abort()
            raise
        self._done = True

    def abort(self) -> None:
        """Delete the temporary files; nothing is left in ``dest_dir``."""
        self._done = True
        if self._rec is not None:
            self._rec.close()
        for path in self._temps:
            path.unlink(missing_ok=True)

    def _finish(self) -> None:
        count = len(self._offsets)
        if count == 0:
            raise ValueError(f"no images were written to {self.dest_dir}")
        top = max(self._ranges) + 1
        num_classes = top if self.num_classes is None else int(self.num_classes)
        if num_classes < top:
            raise ValueError(f"num_classes={num_classes} but label {top - 1} was written")
        first_identity = count + 1
        lines = ["0\t0\n"]
        lines.extend(f"{key}\t{offset}\n" for key, offset in enumerate(self._offsets, 1))
        for key, (first, end) in enumerate(self._ranges.values(), first_identity):
            framed = frame_record(pack_record((first, end), b"", id=key))
            self._rec.write(framed)
            lines.append(f"{key}\t{self._position}\n")
            self._position += len(framed)
        header = frame_record(pack_record((first_identity, first_identity + len(self._ranges)), b""))
        if len(header) != _HEADER_RECORD_SIZE:
            raise AssertionError("the header record does not fit its reserved space")
        self._rec.seek(0)
        self._rec.write(header)
        self._rec.close()
        _, idx_temp, prop_temp = self._temps
        idx_temp.write_bytes("".join(lines).encode("ascii"))
        prop_temp.write_bytes(f"{num_classes},{self.image_size[0]},{self.image_size[1]}\n".encode("ascii"))
        commit(list(zip(self._temps, self.targets, strict=True)), rollback=True)  # syncs each file first
