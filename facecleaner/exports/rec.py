"""``DEST/train.rec`` + ``train.idx`` + ``property``: insightface's RecordIO layout, for arcface_torch & co.

Rows are written sorted (stably) by label, because every identity's images must be contiguous for the
identity-range records. JPEG bytes are copied unchanged; any other format is decoded and re-encoded as JPEG
(quality 95), as insightface's readers expect JPEG. Labels: ``new_label`` (0..C-1), or the original ``label``
when it is integer (or plain decimal text) in 0..2**24-1 — RecordIO stores labels as float32.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np

from facecleaner.errors import InputError
from facecleaner.exports.resolve import ExportInput, Tally, integer_labels, skip_reason
from facecleaner.progress import progress_bar
from facecleaner.sources.images import UnreadableImage, load_rgb
from facecleaner.sources.recordio import FLOAT32_EXACT, RecordIOWriter

JPEG_QUALITY = 95
DEFAULT_IMAGE_SIZE = 112
REC_FILES = ("train.rec", "train.idx", "property")


def is_jpeg(data: bytes) -> bool:
    return data[:3] == b"\xff\xd8\xff"


def to_jpeg(data: bytes) -> bytes:
    """Decode any image pillow reads, convert to RGB (alpha over white) and encode as JPEG; ``OSError`` if not."""
    try:
        image, _ = load_rgb(data)
    except UnreadableImage as exc:
        raise OSError(str(exc)) from exc
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=JPEG_QUALITY)
    return out.getvalue()


def image_size(meta: dict[str, Any]) -> int:
    """The model's input size from the manifest metadata, else insightface's 112."""
    size = (meta.get("model") or {}).get("image_size")
    return int(size) if isinstance(size, int) and size > 0 else DEFAULT_IMAGE_SIZE


def export_rec(inp: ExportInput, dest: Path, tally: Tally, progress: bool) -> dict[str, Any]:
    """Write the RecordIO triple into the folder ``dest``; returns the format's part of the summary."""
    dest = Path(os.path.abspath(dest))
    if dest.exists() and not dest.is_dir():
        raise InputError(f"--out {dest} exists and is not a folder",
                         "give the folder to hold train.rec, train.idx and property")
    present = [name for name in REC_FILES if (dest / name).exists() or (dest / name).is_symlink()]
    if present:
        raise InputError(f"--out {dest} already holds {', '.join(present)}",
                         "give a new or empty folder; an export never overwrites a dataset")
    labels = integer_labels(inp, "rec", 0, FLOAT32_EXACT)
    order = np.argsort(labels, kind="stable")
    num_classes = int(labels.max()) + 1
    size = image_size(inp.meta)
    created = not dest.exists()
    reencoded = 0
    writer = RecordIOWriter(dest, (size, size), num_classes=num_classes)
    try:
        with progress_bar(len(inp), "export rec", progress) as bar:
            for sample in inp.samples(order):
                bar.update(1)
                try:
                    data = inp.read_bytes(sample)
                    if not is_jpeg(data):
                        data = to_jpeg(data)
                        reencoded += 1
                except OSError as exc:
                    tally.skip(skip_reason(exc), f"{inp.describe(sample)}: {exc.strerror or exc}")
                    continue
                label = int(labels[sample.row])
                writer.write(label, data)
                tally.wrote(label)
        tally.require_some(inp.manifest)
        writer.close()
    except BaseException:
        writer.abort()
        if created:
            try:
                dest.rmdir()
            except OSError:
                pass
        raise
    return {"dest": str(dest), "files": [str(dest / name) for name in REC_FILES], "reencoded": reencoded,
            "image_size": [size, size], "num_classes": num_classes}
