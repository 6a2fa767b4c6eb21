"""``DEST/train.rec`` + ``train.idx`` + ``property``: insightface's RecordIO layout, for arcface_torch & co.

Rows are written sorted (stably) by label, because every identity's images must be contiguous for the
identity-range records. Every image is stored at the size ``property`` states — the model's ``image_size``
from the manifest metadata, else insightface's 112 — because arcface_torch decodes records without resizing:
a JPEG of that size is copied byte for byte; any other image is decoded, resized to image_size × image_size
the way ``score`` and ``train`` see it (bilinear, no crop) and encoded as JPEG (quality 95), as insightface's
readers expect JPEG. Labels: ``new_label`` (0..C-1), or the original ``label`` when it is integer (or plain
decimal text) in 0..2**24-1 — RecordIO stores labels as float32.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from facecleaner.errors import InputError
from facecleaner.exports.resolve import ExportInput, Tally, integer_labels, skip_reason
from facecleaner.progress import progress_bar
from facecleaner.sources.images import UnreadableImage, decode_and_resize
from facecleaner.sources.recordio import FLOAT32_EXACT, REC_FILES, RecordIOWriter

JPEG_QUALITY = 95
DEFAULT_IMAGE_SIZE = 112

__all__ = ["DEFAULT_IMAGE_SIZE", "REC_FILES", "export_rec", "image_size", "stored_image"]


def is_jpeg(data: bytes) -> bool:
    return data[:3] == b"\xff\xd8\xff"


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """A JPEG's size from its header alone; None when the header cannot be parsed (decoding then says why)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


def stored_image(data: bytes, size: int) -> tuple[bytes, bool]:
    """The bytes to store for an encoded image and whether it was resized: ``data`` itself for a JPEG of
    ``size`` × ``size``, else a JPEG of that size; ``OSError`` when the image cannot be decoded."""
    if is_jpeg(data) and _jpeg_size(data) == (size, size):
        return data, False
    try:
        pixels, resized = decode_and_resize(data, size)
    except UnreadableImage as exc:
        raise OSError(str(exc)) from exc
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=JPEG_QUALITY)
    return out.getvalue(), resized


def image_size(meta: dict[str, Any]) -> int:
    """The model's input size from the manifest metadata, else insightface's 112."""
    size = (meta.get("model") or {}).get("image_size")
    return int(size) if isinstance(size, int) and size > 0 else DEFAULT_IMAGE_SIZE


def export_rec(inp: ExportInput, dest: Path, tally: Tally, progress: bool) -> dict[str, Any]:
    """Write the RecordIO triple into the folder ``dest``; returns the format's part of the summary.

    ``reencoded`` counts the images not copied byte for byte, ``resized`` those of them that had another size.
    """
    dest = Path(os.path.abspath(dest))
    if dest.exists() and not dest.is_dir():
        raise InputError(f"--out {dest} exists and is not a folder",
                         "give the folder to hold train.rec, train.idx and property")
    labels = integer_labels(inp, "rec", 0, FLOAT32_EXACT)
    order = np.argsort(labels, kind="stable")
    num_classes = int(labels.max()) + 1
    size = image_size(inp.meta)
    created = not dest.exists()
    counts = {"reencoded": 0, "resized": 0}
    writer = None
    try:
        writer = RecordIOWriter(dest, (size, size), num_classes=num_classes)
        with progress_bar(len(inp), "export rec", progress) as bar:
            for sample in inp.samples(order):
                bar.update(1)
                try:
                    original = inp.read_bytes(sample)
                    data, resized = stored_image(original, size)
                except OSError as exc:
                    tally.skip(skip_reason(exc), f"{inp.describe(sample)}: {exc.strerror or exc}")
                    continue
                counts["reencoded"] += data is not original
                counts["resized"] += resized
                label = int(labels[sample.row])
                writer.write(label, data)
                tally.wrote(label)
        tally.require_some(inp.manifest)
        writer.close()
    except BaseException:
        if writer is not None:
            writer.abort()
        if created:
            try:
                dest.rmdir()
            except OSError:
                pass
        raise
    return {"dest": str(dest), "files": [str(path) for path in writer.targets], **counts,
            "image_size": [size, size], "num_classes": num_classes}
