"""Verification pair lists in three formats, read into one :class:`Pairs` structure.

- an insightface ``.bin`` (``lfw.bin``, ``cfp_fp.bin``, ``agedb_30.bin``): ``pickle.dump((bins, issame_list))``
  where ``bins`` holds 2·P encoded images (pair ``i`` is ``bins[2i]``, ``bins[2i+1]``) and ``issame_list`` P
  bools. It is read by :class:`DataOnlyUnpickler`, which builds lists, tuples, bytes and bools and never looks up
  a class or function, so a hostile file cannot run code; Python 2 pickles (images as ``str``) are read with
  ``encoding="bytes"``.
- a CSV with columns ``path1,path2,same`` and an optional ``fold`` (paths relative to ``root``).
- an LFW ``pairs.txt``: an optional header (``10 300``: 10 sets of 300 matched then 300 mismatched pairs),
  then ``name n1 n2`` (a matched pair) or ``name1 n1 name2 n2`` (a mismatched one), the images being
  ``root/name/name_%04d.jpg``.

Each distinct image is listed once (a CSV or pairs.txt names most images in several pairs), so it is decoded
and embedded once.
"""

from __future__ import annotations

import io
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from facecleaner.errors import InputError
from facecleaner.fileio import row_position
from facecleaner.sources.base import Source

#: The pair-list formats, by file suffix.
FORMATS = {".bin": "bin", ".csv": "csv", ".txt": "pairs.txt"}
TRUE_WORDS = frozenset({"1", "true", "yes", "same"})
FALSE_WORDS = frozenset({"0", "false", "no", "different"})
BIN_LAYOUT = ("an insightface .bin holds pickle.dump((bins, issame_list)): bins a list of 2·P encoded images, "
              "issame_list a list of P bools (a numpy array must be written as a list: .tolist())")


@dataclass
class Pairs:
    """P pairs over N distinct images: pair ``i`` compares image ``first[i]`` with image ``second[i]``."""

    images: Source             # the N distinct images (read_bytes / table)
    first: np.ndarray          # int64 (P,)
    second: np.ndarray         # int64 (P,)
    same: np.ndarray           # bool (P,)
    folds: np.ndarray | None   # int64 (P,): the fold each pair belongs to, when the file says; else None
    format: str                # "bin", "csv" or "pairs.txt"
    description: str


class EncodedImages:
    """A :class:`~facecleaner.sources.base.Source` over encoded images held in memory (a ``.bin``'s);
    ``rec_index`` is the image's position in the file, which is how errors name one."""

    def __init__(self, images: list[bytes], name: str) -> None:
        self._images = images
        self.rec_path = name
        self.description = f"the {len(images)} images of {name}"
        self._table: pd.DataFrame | None = None

    def table(self) -> pd.DataFrame:
        if self._table is None:
            count = len(self._images)
            self._table = pd.DataFrame({"path": pd.array([None] * count, dtype="string"),
                                        "rec_index": pd.array(np.arange(count), dtype="Int64"),
                                        "label": pd.array([None] * count, dtype="string")})
        return self._table

    def read_bytes(self, index: int) -> bytes:
        return self._images[index]


def read_pairs(path: str | Path, root: str | Path | None = None) -> Pairs:
    """Read a pair list, choosing the reader by suffix (``.bin``, ``.csv``, ``.txt``); ``root`` is where the
    image paths of a CSV or pairs.txt start [default: the pair file's folder]."""
    path = Path(path)
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise InputError(f"cannot tell the format of the pairs file {path} from its suffix",
                         "give an insightface .bin, a .csv with columns path1,path2,same[,fold], or an LFW "
                         "pairs.txt")
    if not path.is_file():
        raise InputError(f"pairs file {path} does not exist", "check the path")
    if kind == "bin":
        return read_bin(path)
    base = Path(root) if root is not None else path.parent
    if root is not None and not base.is_dir():
        raise InputError(f"--root {base} is not a folder", "give the folder the pairs' image paths start from")
    return read_csv(path, base) if kind == "csv" else read_pairs_txt(path, base)


# --- insightface .bin ----------------------------------------------------------------------------------------

class DataOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain data only: lists, tuples, bytes, bools (and other literals) are built by opcodes that need
    no lookup; every global — any class or function, ``os.system`` included — is refused, so nothing named by
    the file is ever imported or called. The one exception is ``_codecs.encode``, through which Python 3 writes
    ``bytes`` at pickle protocols 0–2; it is replaced by a function that only turns text into latin-1 bytes.
    numpy arrays (which need ``numpy`` globals) are refused too: write ``issame_list`` as a list."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("_codecs", "encode"):
            return _latin1_bytes
        raise pickle.UnpicklingError(f"it refers to {module}.{name}, and only plain lists, bytes and bools are read")

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("it holds a persistent reference, and only plain lists, bytes and bools are read")


def _latin1_bytes(text: Any, encoding: Any = "latin1") -> bytes:
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("it calls _codecs.encode with something other than text and 'latin1'")
    return text.encode("latin1")


def load_bin(data: bytes) -> tuple[list[bytes], list[bool]]:
    """``(bins, issame_list)`` from a ``.bin``'s bytes; raises ``ValueError`` (with the reason) for anything else."""
    try:
        loaded = DataOnlyUnpickler(io.BytesIO(data), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError,
            MemoryError, OverflowError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot unpickle it: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") \
            from exc
    if not isinstance(loaded, (tuple, list)) or len(loaded) != 2:
        raise ValueError(f"it holds a {type(loaded).__name__}, not a pair (bins, issame_list)")
    bins, issame = loaded
    if not isinstance(bins, (list, tuple)) or not isinstance(issame, (list, tuple)):
        raise ValueError(f"bins is a {type(bins).__name__} and issame_list a {type(issame).__name__}, not lists")
    bad = next((i for i, b in enumerate(bins) if not isinstance(b, (bytes, bytearray))), None)
    if bad is not None:
        raise ValueError(f"bins[{bad}] is a {type(bins[bad]).__name__}, not encoded image bytes")
    bad = next((i for i, s in enumerate(issame) if not isinstance(s, bool)), None)
    if bad is not None:
        raise ValueError(f"issame_list[{bad}] is a {type(issame[bad]).__name__}, not a bool")
    if len(bins) != 2 * len(issame):
        raise ValueError(f"it has {len(bins)} images for {len(issame)} pairs (two images per pair)")
    return [bytes(b) for b in bins], list(issame)


def read_bin(path: Path) -> Pairs:
    try:
        bins, issame = load_bin(path.read_bytes())
    except ValueError as exc:
        raise InputError(f"{path} is not an insightface verification .bin: {exc}", BIN_LAYOUT) from exc
    if not issame:
        raise InputError(f"{path} holds no pairs", BIN_LAYOUT)
    count = len(issame)
    return Pairs(EncodedImages(bins, str(path)), np.arange(count, dtype=np.int64) * 2,
                 np.arange(count, dtype=np.int64) * 2 + 1, np.array(issame, dtype=bool), None, "bin",
                 f"{path} ({count} pairs)")


# --- CSV and pairs.txt: image files ----------------------------------------------------------------------------

class _ImageIndex:
    """Distinct image files in order of first mention, as a Source."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.index: dict[str, int] = {}
        self.given: list[str] = []

    def add(self, given: str) -> int:
        resolved = os.path.normpath(os.path.join(self.root, given))
        if resolved not in self.index:
            self.index[resolved] = len(self.given)
            self.given.append(given)
        return self.index[resolved]

    def source(self, description: str) -> Source:
        from facecleaner.sources.files import FileSource

        count = len(self.given)
        table = pd.DataFrame({"path": pd.array(self.given, dtype="string"),
                              "rec_index": pd.array([None] * count, dtype="Int64"),
                              "label": pd.array([None] * count, dtype="string")})
        return FileSource(table, self.given, description, self.root)  # joined to the root when read


def read_csv(path: Path, root: Path) -> Pairs:
    """``path1,path2,same[,fold]``: ``same`` is 1/0, true/false, yes/no or same/different."""
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise InputError(f"cannot read pairs file {path}: {exc}".splitlines()[0],
                         "give a CSV with columns path1,path2,same[,fold]") from exc
    frame = frame.fillna("")  # a short row's missing fields
    frame.columns = [str(c).strip() for c in frame.columns]
    missing = [c for c in ("path1", "path2", "same") if c not in frame.columns]
    if missing:
        raise InputError(f"pairs file {path} has no column {', '.join(repr(c) for c in missing)} "
                         f"(columns: {', '.join(map(str, frame.columns))})",
                         "a CSV pair list needs columns path1,path2,same and optionally fold")
    if frame.empty:
        raise InputError(f"pairs file {path} has no pairs", "give at least one row")
    images = _ImageIndex(root)
    first, second, same, folds = [], [], [], []
    has_folds = "fold" in frame.columns
    columns = ["path1", "path2", "same", *(["fold"] if has_folds else [])]
    for row, record in enumerate(zip(*(frame[c].tolist() for c in columns), strict=True)):
        values = dict(zip(columns, record, strict=True))
        for column in ("path1", "path2"):
            if not values[column].strip():
                raise InputError(f"pairs file {path} has an empty {column} on {row_position(path, row)}",
                                 "give both images of every pair")
        word = values["same"].strip().lower()
        if word not in TRUE_WORDS | FALSE_WORDS:
            raise InputError(f"pairs file {path} has same={values['same']!r} on {row_position(path, row)}",
                             "write same as 1 or 0 (true/false, yes/no, same/different)")
        if has_folds:
            try:
                folds.append(int(values["fold"]))
            except ValueError:
                raise InputError(f"pairs file {path} has fold={values['fold']!r} on {row_position(path, row)}",
                                 "write each pair's fold as an integer, or leave the fold column out") from None
        first.append(images.add(values["path1"].strip()))
        second.append(images.add(values["path2"].strip()))
        same.append(word in TRUE_WORDS)
    return Pairs(images.source(f"images of {path}"), np.array(first, dtype=np.int64),
                 np.array(second, dtype=np.int64), np.array(same, dtype=bool),
                 np.array(folds, dtype=np.int64) if has_folds else None, "csv", f"{path} ({len(same)} pairs)")


def read_pairs_txt(path: Path, root: Path) -> Pairs:
    """LFW's pairs.txt; with a ``sets per_set`` header, pair ``i`` is in fold ``i // (2·per_set)``."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise InputError(f"pairs file {path} is not UTF-8 text", "give LFW's pairs.txt or a file in its format") \
            from exc
    rows = [(number, line.split()) for number, line in enumerate(lines, start=1) if line.strip()]
    header: list[int] = []
    if rows and 1 <= len(rows[0][1]) <= 2 and all(_is_count(v) for v in rows[0][1]):
        header = [int(v) for v in rows[0][1]]
        rows = rows[1:]
    if not rows:
        raise InputError(f"pairs file {path} has no pairs", "give LFW's pairs.txt or a file in its format")
    images = _ImageIndex(root)
    first, second, same = [], [], []
    for number, fields in rows:
        if len(fields) == 3 and _is_count(fields[1]) and _is_count(fields[2]):
            a, b, matched = (fields[0], int(fields[1])), (fields[0], int(fields[2])), True
        elif len(fields) == 4 and _is_count(fields[1]) and _is_count(fields[3]):
            a, b, matched = (fields[0], int(fields[1])), (fields[2], int(fields[3])), False
        else:
            raise InputError(f"pairs file {path} line {number} is neither 'name n1 n2' nor 'name1 n1 name2 n2': "
                             f"{' '.join(fields)[:80]!r}", "give LFW's pairs.txt or a file in its format")
        first.append(images.add(_lfw_path(*a)))
        second.append(images.add(_lfw_path(*b)))
        same.append(matched)
    folds = None
    if len(header) == 2:
        sets, per_set = header
        if sets * 2 * per_set != len(same):
            raise InputError(f"pairs file {path} announces {sets} sets of {per_set} matched and {per_set} mismatched "
                             f"pairs ({sets * 2 * per_set}) but holds {len(same)}",
                             "fix the header line, or remove it to split the pairs into 10 folds in order")
        folds = np.arange(len(same), dtype=np.int64) // (2 * per_set)
    return Pairs(images.source(f"images of {path}"), np.array(first, dtype=np.int64),
                 np.array(second, dtype=np.int64), np.array(same, dtype=bool), folds, "pairs.txt",
                 f"{path} ({len(same)} pairs)")


def _is_count(text: str) -> bool:
    return text.isascii() and text.isdigit() and int(text) > 0


def _lfw_path(name: str, number: int) -> str:
    return f"{name}/{name}_{number:04d}.jpg"
