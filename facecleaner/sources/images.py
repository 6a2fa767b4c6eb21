"""Decoding: encoded bytes in any common format → an RGB uint8 array of the model's input size.

Everything that can go wrong with one image becomes an ``UnreadableImage`` with a short reason, so a
corrupt file is recorded in the manifest instead of ending a long run.
"""

from __future__ import annotations

import io
import re
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

# A web crawl holds some absurdly large images; refuse those rather than exhausting memory.
MAX_PIXELS = 100_000_000


class UnreadableImage(Exception):
    """One sample's bytes are missing, empty or not a decodable image; ``str()`` is the reason."""


def load_rgb(data: bytes, draft_size: int | None = None) -> tuple[Image.Image, tuple[int, int]]:
    """Decode any image pillow reads to RGB (greyscale, CMYK, RGBA, palette, 16-bit handled), with its size
    as stored (before any draft reduction).

    ``draft_size`` lets a JPEG decode at a reduced scale that still covers it, much faster for large photos.
    Raises ``UnreadableImage`` with a one-line reason for empty, corrupt, truncated or oversized input.
    """
    if not data:
        raise UnreadableImage("empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            stored_size = image.size
            if image.width * image.height > MAX_PIXELS:
                raise UnreadableImage(f"image too large ({image.width}x{image.height})")
            if draft_size and image.format == "JPEG":
                image.draft("RGB", (draft_size, draft_size))
            image.load()
            return to_rgb(image), stored_size
    except UnreadableImage:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombWarning,
            Image.DecompressionBombError) as exc:
        # pillow names the in-memory buffer ("<_io.BytesIO object at 0x…>"): noise that differs run to run.
        why = re.sub(r"\s*<_io\.BytesIO object at 0x[0-9a-f]+>", "", str(exc)).splitlines()[0] if str(exc) else ""
        raise UnreadableImage(f"cannot decode image: {why or type(exc).__name__}"[:200]) from exc


def decode_image(data: bytes, size: int) -> np.ndarray:
    """Decode ``data`` to a ``size``×``size``×3 uint8 RGB array."""
    return decode_and_resize(data, size)[0]


def decode_and_resize(data: bytes, size: int) -> tuple[np.ndarray, bool]:
    """:func:`decode_image` plus whether the stored image had another size (such images are counted)."""
    rgb, stored_size = load_rgb(data, draft_size=size)
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
    return np.array(rgb, dtype=np.uint8), stored_size != (size, size)


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB view of any pillow mode; 16/32-bit greyscale is rescaled to 8 bits rather than clipped."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        low, high = float(values.min()), float(values.max())
        scaled = np.zeros_like(values) if high <= low else (values - low) * (255.0 / (high - low))
        image = Image.fromarray(scaled.round().astype(np.uint8), mode="L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")

