"""A generated noisy face dataset with known ground truth: the data behind ``facecleaner demo`` and the tests.

Real face sets cannot ship with the project, so identities are procedural: each one is a parameter vector
(face shape, skin tone, hair colour and style, eyes, brows, nose, mouth, facial hair, an accessory) drawn
from the seed and rendered with PIL. Every image varies pose, expression, lighting, background, blur and
pixel noise, so a small CNN must learn the person rather than a pixel pattern. A fraction of each identity's
clean images shows the person in one consistent harder condition (sunglasses in side light, a hat, a mask):
clean, but likely to fall on a non-dominant sub-center — the case the 75° rule must keep. Noise is planted
the way web crawls get it: close-set (another labelled identity filed under this label) and open-set (people
outside the label set, each appearing a few times under random labels).
"""

from __future__ import annotations

import math
import shutil
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw, ImageFilter
from tqdm import tqdm

from facecleaner.errors import InputError
from facecleaner.fileio import atomic_output, publish, recover_outputs, temporary_beside
from facecleaner.progress import progress_bar

__all__ = ["NOISE_KINDS", "generate_noisy_faces", "render_identity_grid"]

#: Values of the manifest's ``noise`` column.
NOISE_KINDS = ("clean", "clean_hard", "close_set", "open_set")

# Seed-sequence streams, so that identities, outsiders, the noise plan and each image draw independently
# (image i looks the same whatever else changes, and any order of rendering gives the same bytes).
_STREAM_IDENTITY, _STREAM_OUTSIDER, _STREAM_PLAN, _STREAM_IMAGE = 0, 1, 2, 3

_SKIN_LIGHT = np.array([246.0, 214.0, 190.0])
_SKIN_DARK = np.array([88.0, 56.0, 38.0])
_HAIR = ((20, 18, 18), (58, 38, 26), (104, 70, 42), (150, 72, 36), (212, 178, 110), (150, 150, 150),
         (228, 226, 220), (92, 28, 20), (36, 30, 60))
_IRIS = ((70, 42, 24), (26, 20, 18), (60, 110, 170), (70, 130, 80), (120, 120, 130), (130, 100, 50))
_HAIR_STYLES = ("bald", "short", "long", "bangs", "side_part", "puffy", "buzz", "curly")
_FACIAL_HAIR = ("none", "none", "none", "beard", "mustache", "goatee", "stubble")
_ACCESSORIES = ("none", "none", "glasses", "earrings", "mole", "freckles", "blush")
_HARD_KINDS = ("sunglasses", "hat", "mask")

Color = tuple[int, int, int]
_RELIEF = 5  # the relief grid is _RELIEF × _RELIEF
_RELIEF_DEPTH = 0.8  # how far relief darkens or lightens the face

_SCHEMA = pa.schema([("path", pa.string()), ("label", pa.string()), ("true_identity", pa.string()),
                     ("noise", pa.string()), ("is_noise", pa.bool_())])


@dataclass(frozen=True)
class _Identity:
    """One procedural person; lengths are fractions of the face half-width ``a`` or half-height ``b``."""

    face_a: float  # face half-width as a fraction of the canvas
    aspect: float  # b / a
    jaw: float  # 0 round .. 1 square
    chin: float  # chin width when the jaw is square
    skin: Color
    hair: Color
    hair_style: str
    hairline: float
    hair_volume: float
    eye_dx: float
    eye_y: float
    eye_rx: float
    eye_ry: float
    iris: Color
    brow_thick: float
    brow_tilt: float
    brow_gap: float
    nose_len: float
    nose_w: float
    mouth_w: float
    mouth_y: float
    lip: Color
    ear: float
    facial_hair: str
    accessory: str
    accessory_color: Color
    mark_x: float
    mark_y: float
    hard_kind: str
    hard_color: Color
    hard_side: int  # the side the hard-mode light comes from (-1 or 1)
    relief: tuple[float, ...]  # a coarse grid of shading over the face: bone structure, many independent dims


def _mix(c1: np.ndarray | tuple, c2: np.ndarray | tuple, t: float) -> Color:
    a, b = np.asarray(c1, dtype=float), np.asarray(c2, dtype=float)
    return tuple(int(round(v)) for v in np.clip(a + (b - a) * t, 0, 255))  # type: ignore[return-value]


def _jitter(color: tuple, rng: np.random.Generator, amount: float) -> Color:
    return tuple(int(np.clip(v + rng.normal(0.0, amount), 0, 255)) for v in color)  # type: ignore[return-value]


def _draw_identity(rng: np.random.Generator) -> _Identity:
    """Draw one person: many attributes vary together so no single colour gives the identity away."""
    skin_t = rng.beta(1.3, 1.3)
    skin = np.asarray(_mix(_SKIN_LIGHT, _SKIN_DARK, skin_t), dtype=float)
    skin = skin + np.array([rng.normal(0, 7), rng.normal(0, 6), rng.normal(0, 8)])  # red/yellow undertone
    # Hair colour between two neighbouring palette shades, so that colours are continuous, not 9 classes.
    shade = rng.integers(len(_HAIR))
    hair = _jitter(_mix(_HAIR[shade], _HAIR[(shade + 1) % len(_HAIR)], rng.uniform(0, 0.5)), rng, 8)
    lip = _mix(skin, (170, 60, 70), rng.uniform(0.25, 0.55))
    return _Identity(
        face_a=rng.uniform(0.25, 0.31), aspect=rng.uniform(1.05, 1.38), jaw=rng.uniform(0, 1),
        chin=rng.uniform(0.45, 0.8), skin=_jitter(tuple(skin), rng, 0), hair=hair,
        hair_style=_HAIR_STYLES[rng.integers(len(_HAIR_STYLES))], hairline=rng.uniform(0.38, 0.7),
        hair_volume=rng.uniform(0.0, 1.0), eye_dx=rng.uniform(0.32, 0.5), eye_y=rng.uniform(-0.12, 0.05),
        eye_rx=rng.uniform(0.13, 0.22), eye_ry=rng.uniform(0.4, 0.75),
        iris=_jitter(_IRIS[rng.integers(len(_IRIS))], rng, 8), brow_thick=rng.uniform(0.04, 0.12),
        brow_tilt=rng.uniform(-0.35, 0.35), brow_gap=rng.uniform(0.1, 0.22), nose_len=rng.uniform(0.22, 0.42),
        nose_w=rng.uniform(0.1, 0.22), mouth_w=rng.uniform(0.26, 0.52), mouth_y=rng.uniform(0.5, 0.68),
        lip=lip, ear=rng.uniform(0.14, 0.26), facial_hair=_FACIAL_HAIR[rng.integers(len(_FACIAL_HAIR))],
        accessory=_ACCESSORIES[rng.integers(len(_ACCESSORIES))],
        accessory_color=_jitter(tuple(int(v) for v in rng.integers(0, 256, size=3)), rng, 0),
        mark_x=rng.uniform(0.3, 0.65) * rng.choice((-1, 1)), mark_y=rng.uniform(0.05, 0.4),
        hard_kind=_HARD_KINDS[rng.integers(len(_HARD_KINDS))],
        hard_color=_jitter((int(rng.integers(0, 256)), int(rng.integers(0, 256)), int(rng.integers(0, 256))),
                           rng, 0),
        hard_side=int(rng.choice((-1, 1))),
        relief=tuple(float(v) for v in rng.uniform(-1.0, 1.0, size=_RELIEF * _RELIEF)),
    )


def _darker(color: tuple, f: float) -> Color:
    return tuple(int(v * f) for v in color)  # type: ignore[return-value]


def _render(person: _Identity, hard: bool, rng: np.random.Generator, size: int) -> np.ndarray:
    """One photo of ``person``: drawn at ``factor``× size, posed, composited, lit, downsampled, degraded."""
    factor = max(2, math.ceil(128 / size))
    big = size * factor
    bg = tuple(int(v) for v in rng.integers(30, 230, size=3))
    canvas = Image.new("RGBA", (big, big), bg + (255,))
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(0, 5))):  # background clutter
        x0, y0 = rng.uniform(-0.2, 1.0, size=2) * big
        w, h = rng.uniform(0.1, 0.5, size=2) * big
        color = _mix(bg, rng.integers(0, 256, size=3), rng.uniform(0.2, 0.7)) + (255,)
        if rng.random() < 0.5:
            draw.rectangle((x0, y0, x0 + w, y0 + h), fill=color)
        else:
            draw.ellipse((x0, y0, x0 + w, y0 + h), fill=color)

    layer = Image.new("RGBA", (big, big), (0, 0, 0, 0))
    d = ImageDraw.Draw(layer)
    cx, cy = big * 0.5, big * 0.5
    a = person.face_a * big * rng.uniform(0.97, 1.03)
    b = a * person.aspect
    yaw = rng.uniform(-1.0, 1.0)
    pitch = rng.uniform(-1.0, 1.0)
    fx = cx + yaw * a * 0.16  # features move with the head's yaw and pitch; the outline barely does
    fy = cy + pitch * b * 0.06
    skin = _jitter(person.skin, rng, 3)
    hair = _jitter(person.hair, rng, 4)
    style = person.hair_style

    # Hair behind the head.
    if style == "long":
        d.rounded_rectangle((cx - a * 1.18, cy - b * 0.9, cx + a * 1.18, cy + b * (1.1 + 0.4 * person.hair_volume)),
                            radius=a * 0.5, fill=hair)
    elif style == "puffy":
        r = 1.25 + 0.25 * person.hair_volume
        d.ellipse((cx - a * r, cy - b * 1.25, cx + a * r, cy + b * 0.35), fill=hair)
    # Shoulders and neck.
    shirt = tuple(int(v) for v in rng.integers(0, 256, size=3))
    d.ellipse((cx - big * 0.48, cy + b * 0.95, cx + big * 0.48, cy + b * 0.95 + big * 0.6), fill=shirt)
    d.rectangle((cx - a * 0.42, cy + b * 0.4, cx + a * 0.42, cy + b * 1.12), fill=_darker(skin, 0.85))
    # Ears (the one turned away shrinks).
    for side in (-1, 1):
        er = person.ear * a * (1.0 - 0.45 * max(0.0, side * -yaw))
        ex = cx + side * a * 0.97
        d.ellipse((ex - er * 0.6, cy - er * 0.9, ex + er * 0.6, cy + er * 0.9), fill=_darker(skin, 0.9))
    # Face: an ellipse, squared off at the jaw for some people.
    d.ellipse((cx - a, cy - b, cx + a, cy + b), fill=skin)
    if person.jaw > 0.5:
        cw = a * (person.chin + 0.3 * (person.jaw - 0.5))
        d.polygon([(cx - a * 0.97, cy + b * 0.2), (cx + a * 0.97, cy + b * 0.2), (cx + a * 0.86, cy + b * 0.62),
                   (cx + cw, cy + b * 0.94), (cx - cw, cy + b * 0.94), (cx - a * 0.86, cy + b * 0.62)], fill=skin)
    # Facial hair sits under the mouth.
    beard = _darker(hair if style != "bald" else (60, 50, 45), 0.9)
    if person.facial_hair == "beard":
        d.chord((cx - a * 1.01, cy - b * 1.01, cx + a * 1.01, cy + b * 1.04), 15, 165, fill=beard)
        d.ellipse((fx - a * 0.45, fy + b * 0.3, fx + a * 0.45, fy + b * 0.62), fill=beard)
    elif person.facial_hair == "goatee":
        goatee_top = fy + (person.mouth_y + 0.12) * b
        d.ellipse((fx - a * 0.2, goatee_top, fx + a * 0.2, max(goatee_top + b * 0.15, cy + b * 0.98)), fill=beard)
    # Hair on top.
    hy = cy - b * person.hairline
    top = cy - b * (1.1 + 0.12 * person.hair_volume)
    if style == "bald":
        for side in (-1, 1):
            d.ellipse((cx + side * a * 0.95 - a * 0.14, cy - b * 0.45, cx + side * a * 0.95 + a * 0.14, cy + b * 0.05),
                      fill=hair)
    elif style == "buzz":
        d.chord((cx - a * 1.02, top + b * 0.06, cx + a * 1.02, 2 * hy - top), 180, 360, fill=_mix(hair, skin, 0.35))
    else:
        d.chord((cx - a * 1.07, top, cx + a * 1.07, 2 * hy - top), 180, 360, fill=hair)
        if style == "bangs":
            edge = cy - b * 0.33 + (fy - cy)
            points = [(cx - a * 0.95, hy - b * 0.1)]
            for i in range(7):
                points.append((cx - a * 0.8 + i * a * 0.27, edge + (b * 0.06 if i % 2 else 0.0)))
            points.append((cx + a * 0.95, hy - b * 0.1))
            d.polygon(points, fill=hair)
        elif style == "side_part":
            side = 1 if person.mark_x > 0 else -1
            d.polygon([(cx - side * a * 0.1, top + b * 0.15), (cx + side * a * 1.02, hy),
                       (cx + side * a * 0.98, cy - b * 0.1), (cx + side * a * 0.3, hy + b * 0.12)], fill=hair)
        elif style == "curly":
            for i in range(9):
                ang = math.pi * (1.0 + i / 8)
                px, py = cx + math.cos(ang) * a * 1.0, hy + math.sin(ang) * (hy - top) * 0.9
                r = a * 0.2
                d.ellipse((px - r, py - r, px + r, py + r), fill=_darker(hair, 0.9))
        elif style in ("long", "puffy"):
            for side in (-1, 1):
                d.rectangle((cx + side * a * 1.0 - a * 0.12, hy, cx + side * a * 1.0 + a * 0.12, cy + b * 0.3),
                            fill=hair)

    # Eyes: openness is the expression; gaze wanders a little.
    open_ = 0.08 if rng.random() < 0.05 else rng.uniform(0.55, 1.1)
    erx = person.eye_rx * a
    ery = erx * person.eye_ry * open_
    ey = fy - b * 0.12 + person.eye_y * b
    gaze = rng.uniform(-0.3, 0.3) * erx
    brow_color = _darker(hair if style not in ("bald", "buzz") else (70, 55, 45), 0.8)
    raise_ = rng.uniform(-0.03, 0.05) * b
    for side in (-1, 1):
        ex = fx + side * person.eye_dx * a
        d.ellipse((ex - erx, ey - ery, ex + erx, ey + ery), fill=(245, 245, 240))
        ir = min(erx * 0.55, max(ery, 1.0))
        d.ellipse((ex + gaze - ir, ey - ir * 0.95, ex + gaze + ir, ey + ir * 0.95), fill=person.iris)
        pr = ir * 0.45
        d.ellipse((ex + gaze - pr, ey - pr, ex + gaze + pr, ey + pr), fill=(10, 10, 10))
        d.arc((ex - erx, ey - ery, ex + erx, ey + ery), 180, 360, fill=_darker(skin, 0.45),
              width=max(1, int(a * 0.03)))
        by = ey - erx * person.eye_ry - person.brow_gap * b - raise_
        inner, outer = ex - side * erx * 1.0, ex + side * erx * 1.25
        tilt = person.brow_tilt * erx
        d.line([(inner, by + tilt), (outer, by - tilt * 0.3)], fill=brow_color,
               width=max(1, int(person.brow_thick * b)))
    # Nose: a shaded wedge and nostrils.
    nb = ey + person.nose_len * b
    nw = person.nose_w * a
    d.polygon([(fx + yaw * a * 0.04, ey), (fx + yaw * a * 0.08 - nw, nb), (fx + yaw * a * 0.08 + nw, nb)],
              fill=_darker(skin, 0.82))
    for side in (-1, 1):
        nx = fx + yaw * a * 0.08 + side * nw * 0.5
        d.ellipse((nx - a * 0.04, nb - a * 0.03, nx + a * 0.04, nb + a * 0.02), fill=_darker(skin, 0.45))
    # Mouth: curvature and opening are the expression.
    my = fy + person.mouth_y * b
    mw = person.mouth_w * a * rng.uniform(0.9, 1.12)
    smile = rng.uniform(-0.35, 1.0) * b * 0.1
    xs = np.linspace(-mw, mw, 9)
    upper = [(fx + x, my - smile * (x / mw) ** 2 + smile * 0.3) for x in xs]
    lip_w = max(1, int(a * 0.07))
    if rng.random() < 0.3:
        gap = rng.uniform(0.04, 0.14) * b
        lower = [(fx + x, my + gap * (1 - (x / mw) ** 2) - smile * (x / mw) ** 2 + smile * 0.3) for x in xs[::-1]]
        d.polygon(upper + lower, fill=(70, 20, 25), outline=person.lip)
        d.line(upper, fill=person.lip, width=lip_w)
        d.line(lower, fill=person.lip, width=lip_w)
    else:
        d.line(upper, fill=person.lip, width=lip_w, joint="curve")
    # Facial hair over the lip, then the accessory.
    if person.facial_hair == "mustache":
        d.polygon([(fx - mw * 1.05, my - b * 0.02), (fx, my - b * 0.12), (fx + mw * 1.05, my - b * 0.02),
                   (fx, my - b * 0.05)], fill=beard)
    elif person.facial_hair == "stubble":
        srng = np.random.default_rng(int(person.mark_y * 1e6) + 1)  # the same stubble in every photo
        for _ in range(40):
            ang = srng.uniform(0.15, 0.85) * math.pi
            rad = srng.uniform(0.55, 0.98)
            px, py = cx + math.cos(ang) * a * rad, cy + math.sin(ang) * b * rad
            if py > my - b * 0.1:
                d.ellipse((px - a * 0.03, py - a * 0.03, px + a * 0.03, py + a * 0.03), fill=_mix(skin, beard, 0.6))
    if person.accessory == "mole":
        mx, mr = fx + person.mark_x * a, a * 0.06
        myy = cy + person.mark_y * b
        d.ellipse((mx - mr, myy - mr, mx + mr, myy + mr), fill=(50, 30, 25))
    elif person.accessory == "freckles":
        frng = np.random.default_rng(int(person.mark_y * 1e6))  # the same freckles in every photo
        for _ in range(14):
            px, py = fx + frng.uniform(-0.7, 0.7) * a, ey + frng.uniform(0.15, 0.45) * b
            d.ellipse((px - a * 0.025, py - a * 0.025, px + a * 0.025, py + a * 0.025), fill=_darker(skin, 0.6))
    elif person.accessory == "blush":
        for side in (-1, 1):
            px, py = fx + side * a * 0.55, ey + b * 0.3
            d.ellipse((px - a * 0.16, py - a * 0.09, px + a * 0.16, py + a * 0.09), fill=_mix(skin, (220, 60, 80), 0.4))
    elif person.accessory == "earrings":
        for side in (-1, 1):
            px, py = cx + side * a * 0.99, cy + person.ear * a * 0.9
            d.ellipse((px - a * 0.06, py - a * 0.02, px + a * 0.06, py + a * 0.14), fill=person.accessory_color)
    if person.accessory == "glasses" and not (hard and person.hard_kind == "sunglasses"):
        frame = _darker(person.accessory_color, 0.6)
        for side in (-1, 1):
            ex = fx + side * person.eye_dx * a
            r = erx * 1.35
            d.ellipse((ex - r, ey - r * 0.8, ex + r, ey + r * 0.8), outline=frame, width=max(1, int(a * 0.06)))
        d.line([(fx - person.eye_dx * a + erx * 1.35, ey), (fx + person.eye_dx * a - erx * 1.35, ey)],
               fill=frame, width=max(1, int(a * 0.05)))

    _shade_relief(layer, person, (cx - a, cy - b, cx + a, cy + b))
    if hard:
        _draw_hard(ImageDraw.Draw(layer), person, cx, cy, fx, ey, my, a, b, erx)

    # Pose: small rotation, scale and shift of the whole person over the background.
    angle = math.radians(rng.uniform(-10, 10))
    scale = rng.uniform(0.9, 1.1)
    tx, ty = rng.uniform(-0.05, 0.05, size=2) * big
    c, s = math.cos(angle), math.sin(angle)
    ox, oy = big / 2 + tx, big / 2 + ty
    inv = (c / scale, s / scale, 0.0, -s / scale, c / scale, 0.0)
    inv = (inv[0], inv[1], big / 2 - inv[0] * ox - inv[1] * oy, inv[3], inv[4], big / 2 - inv[3] * ox - inv[4] * oy)
    # Nearest is enough where the downsampling averages factor² samples per pixel anyway.
    resample = Image.Resampling.NEAREST if factor >= 4 else Image.Resampling.BILINEAR
    layer = layer.transform((big, big), Image.Transform.AFFINE, inv, resample=resample)
    canvas.alpha_composite(layer)
    small = canvas.convert("RGB").reduce(factor)
    blur = rng.uniform(0.0, 0.7)
    if blur > 0.25:
        small = small.filter(ImageFilter.GaussianBlur(blur * size / 32))
    return _photometric(np.asarray(small, dtype=np.float32), person, hard, rng)


def _shade_relief(layer: Image.Image, person: _Identity, box: tuple[float, float, float, float]) -> None:
    """Multiply the face's pixels by the identity's smooth relief map (cheekbones, brow ridge, eye sockets).

    The drawn attributes are few and mostly discrete; real identity lives largely in fine, continuous shape.
    The relief adds 25 such continuous dimensions per person, fixed to the face so it turns with the head.
    """
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    w, h = x1 - x0, y1 - y0
    grid = np.asarray(person.relief, dtype=np.float32).reshape(_RELIEF, _RELIEF)
    field = Image.fromarray(((grid + 1.0) * 127.5).astype(np.uint8)).resize((w, h), Image.Resampling.BICUBIC)
    mask = Image.new("L", (w, h), 0)
    ImageDraw.Draw(mask).ellipse((0, 0, w - 1, h - 1), fill=255)
    region = layer.crop((x0, y0, x1, y1))
    pixels = np.asarray(region, dtype=np.float32)
    gain = 1.0 + _RELIEF_DEPTH * (np.asarray(field, dtype=np.float32) / 127.5 - 1.0)
    gain = np.where(np.asarray(mask) > 0, gain, 1.0)
    pixels[..., :3] = np.clip(pixels[..., :3] * gain[..., None], 0, 255)
    layer.paste(Image.fromarray(pixels.astype(np.uint8), "RGBA"), (x0, y0))


def _draw_hard(d: ImageDraw.ImageDraw, person: _Identity, cx: float, cy: float, fx: float, ey: float, my: float,
               a: float, b: float, erx: float) -> None:
    """The identity's consistent hard condition: same person, very different pixels."""
    color = person.hard_color
    if person.hard_kind == "sunglasses":
        for side in (-1, 1):
            ex = fx + side * person.eye_dx * a
            r = max(erx * 1.45, a * 0.24)
            d.rounded_rectangle((ex - r, ey - r * 0.75, ex + r, ey + r * 0.8), radius=r * 0.4, fill=(12, 12, 16))
        d.line([(fx - a * 0.2, ey - a * 0.05), (fx + a * 0.2, ey - a * 0.05)], fill=(12, 12, 16),
               width=max(1, int(a * 0.06)))
    elif person.hard_kind == "hat":
        crown_bottom = cy - b * 0.42
        d.rounded_rectangle((cx - a * 0.95, cy - b * 1.45, cx + a * 0.95, crown_bottom), radius=a * 0.3, fill=color)
        d.ellipse((cx - a * 1.55, crown_bottom - b * 0.12, cx + a * 1.55, crown_bottom + b * 0.1),
                  fill=_darker(color, 0.8))
        d.rectangle((cx - a * 0.95, crown_bottom - b * 0.2, cx + a * 0.95, crown_bottom - b * 0.08),
                    fill=_darker(color, 0.55))
    else:  # mask
        mask = _mix(color, (235, 240, 245), 0.6)
        top = ey + b * 0.2
        d.rounded_rectangle((fx - a * 0.78, top, fx + a * 0.78, min(cy + b * 0.88, my + b * 0.35)),
                            radius=a * 0.25, fill=mask)
        for side in (-1, 1):
            d.line([(fx + side * a * 0.75, top + b * 0.05), (cx + side * a * 0.98, cy - b * 0.05)],
                   fill=_darker(mask, 0.8), width=max(1, int(a * 0.04)))


def _photometric(img: np.ndarray, person: _Identity, hard: bool, rng: np.random.Generator) -> np.ndarray:
    """Lighting gradient, exposure, contrast, white balance and sensor noise on the final-size image."""
    size = img.shape[0]
    grid = (np.arange(size, dtype=np.float32) - size / 2) / size
    phi = rng.uniform(0, 2 * math.pi)
    strength = rng.uniform(0.0, 0.35)
    if hard and person.hard_kind == "sunglasses":  # strong light from the identity's side
        phi, strength = (0.0 if person.hard_side > 0 else math.pi) + rng.uniform(-0.3, 0.3), rng.uniform(0.9, 1.2)
    ramp = 1.0 + strength * (math.cos(phi) * grid[None, :] + math.sin(phi) * grid[:, None]) * 2.0
    img = img * ramp[:, :, None]
    mean = img.mean()
    img = (img - mean) * rng.uniform(0.75, 1.2) + mean * rng.uniform(0.75, 1.2)
    img = img * rng.uniform(0.92, 1.08, size=3).astype(np.float32)
    img = img + rng.normal(0.0, rng.uniform(1.0, 7.0), size=img.shape).astype(np.float32)
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def _label_name(index: int, count: int) -> str:
    return f"id_{index:0{max(4, len(str(count - 1)))}d}"


def _plan(identities: int, images_per_identity: int, close_set_noise: float, open_set_noise: float,
          hard_mode_fraction: float, rng: np.random.Generator) -> tuple[list[int], list[str], list[bool]]:
    """Per image (label-major order): the person shown (≥ ``identities``: an outsider), its kind, hard or not.

    Noise is spread evenly over labels (each label gets ⌊T/n⌋ or ⌈T/n⌉ noisy images) so every class keeps a
    clean majority at the default rates, and sits at random positions inside each label.
    """
    total = identities * images_per_identity
    n_close = int(round(close_set_noise * total))
    n_open = int(round(open_set_noise * total))
    n_noise = n_close + n_open
    per_label = np.full(identities, n_noise // identities)
    per_label[rng.permutation(identities)[: n_noise % identities]] += 1
    if per_label.max() > images_per_identity - 1:
        raise InputError(f"noise rates {close_set_noise} + {open_set_noise} leave no clean image in some identities",
                         "lower --close-set-noise/--open-set-noise or raise --images-per-identity")
    kinds_pool = np.array(["close_set"] * n_close + ["open_set"] * n_open)[rng.permutation(n_noise)]
    n_outsiders = max(1, math.ceil(n_open / 4))  # each outsider appears about four times
    outsider_of = rng.permutation(np.arange(n_open) % n_outsiders)
    shown: list[int] = []
    kinds: list[str] = []
    hardness: list[bool] = []
    used = opened = 0
    for label in range(identities):
        k = int(per_label[label])
        slot_kinds = list(kinds_pool[used:used + k])
        used += k
        clean = images_per_identity - k
        n_hard = int(round(hard_mode_fraction * clean))
        slot_kinds += ["clean_hard"] * n_hard + ["clean"] * (clean - n_hard)
        for kind in (slot_kinds[i] for i in rng.permutation(images_per_identity)):
            if kind == "close_set":
                other = int(rng.integers(identities - 1))
                shown.append(other + (other >= label))
            elif kind == "open_set":
                shown.append(identities + int(outsider_of[opened]))
                opened += 1
            else:
                shown.append(label)
            kinds.append(kind)
            # A noisy image is an ordinary photo of its person, in their hard condition as often as clean ones.
            noisy = kind in ("close_set", "open_set")
            hardness.append(kind == "clean_hard" or (noisy and bool(rng.random() < hard_mode_fraction)))
    return shown, kinds, hardness


def _check(identities: int, images_per_identity: int, image_size: int, close_set_noise: float,
           open_set_noise: float, hard_mode_fraction: float) -> None:
    if identities < 2:
        raise InputError(f"identities={identities} is too few", "close-set noise needs at least 2 identities")
    if images_per_identity < 2:
        raise InputError(f"images_per_identity={images_per_identity} is too few", "give at least 2")
    if not 16 <= image_size <= 256:
        raise InputError(f"image_size={image_size} is out of range", "give an image size from 16 to 256")
    for name, value in (("close_set_noise", close_set_noise), ("open_set_noise", open_set_noise),
                        ("hard_mode_fraction", hard_mode_fraction)):
        if not 0.0 <= value <= 1.0:
            raise InputError(f"{name}={value} is not a fraction", f"give {name} between 0 and 1")
    if close_set_noise + open_set_noise >= 1.0:
        raise InputError("close_set_noise + open_set_noise must be below 1", "lower the noise rates")


def _save_png(pixels: np.ndarray, path: Path) -> None:
    Image.fromarray(pixels).save(path, format="PNG")


def _drain(pending: list[Future], bar: tqdm) -> None:
    """Wait for the queued writes (raising the first error) so that memory and the bar stay bounded."""
    for future in pending:
        future.result()
    bar.update(len(pending))
    pending.clear()


def _is_generated(manifest: Path) -> bool:
    """Whether ``manifest`` is one this module wrote (so the images beside it are ours to replace)."""
    try:
        names = pq.read_schema(manifest).names
    except (OSError, pa.ArrowInvalid):
        return False
    return names == list(_SCHEMA.names)


def generate_noisy_faces(out_dir: Path, *, identities: int = 60, images_per_identity: int = 40,
                         image_size: int = 32, close_set_noise: float = 0.1, open_set_noise: float = 0.1,
                         hard_mode_fraction: float = 0.15, seed: int = 0, progress: bool = False) -> Path:
    """Write ``out_dir/images/<label>/<n>.png`` and ``out_dir/manifest.parquet``; return the manifest's path.

    The manifest (sorted by path) has ``path`` (relative to ``out_dir``), ``label`` (the noisy label, also the
    folder), ``true_identity`` (who is shown: a label, or ``outsider_NNN``), ``noise`` (one of
    :data:`NOISE_KINDS`) and ``is_noise``. The same arguments give the same bytes. Images go to a temporary
    folder that replaces ``images/`` only when complete; the manifest is written last, so a folder holding a
    manifest always holds its whole set. An existing ``images/`` is replaced only if a previous manifest sits
    beside it (a set this function made); otherwise the call refuses rather than delete someone's files.
    """
    _check(identities, images_per_identity, image_size, close_set_noise, open_set_noise, hard_mode_fraction)
    out_dir = Path(out_dir)
    images_dir, manifest = out_dir / "images", out_dir / "manifest.parquet"
    if images_dir.exists() and not _is_generated(manifest):
        raise InputError(f"{images_dir} already exists and is not a set generated by facecleaner",
                         "give an empty or new --out folder")
    out_dir.mkdir(parents=True, exist_ok=True)

    people = [_draw_identity(np.random.default_rng([seed, _STREAM_IDENTITY, i])) for i in range(identities)]
    shown, kinds, hardness = _plan(identities, images_per_identity, close_set_noise, open_set_noise,
                                   hard_mode_fraction, np.random.default_rng([seed, _STREAM_PLAN]))
    n_outsiders = max(shown) + 1 - identities if max(shown) >= identities else 0
    people += [_draw_identity(np.random.default_rng([seed, _STREAM_OUTSIDER, j])) for j in range(n_outsiders)]
    labels = [_label_name(i, identities) for i in range(identities)]

    recover_outputs([images_dir, manifest])
    tmp = temporary_beside(images_dir, directory=True)
    rows: dict[str, list] = {"path": [], "label": [], "true_identity": [], "noise": [], "is_noise": []}
    width = max(6, len(str(len(shown) - 1)))
    try:
        # Writing a small file costs more than drawing it; threads overlap the writes (the GIL is released there)
        # with the drawing, and the bytes stay the same whatever the order.
        with ThreadPoolExecutor(max_workers=4) as pool, progress_bar(len(shown), "generating faces",
                                                                     progress) as bar:
            pending: list[Future] = []
            for index, (who, kind, hard) in enumerate(zip(shown, kinds, hardness, strict=True)):
                label = labels[index // images_per_identity]
                folder = tmp / label
                if index % images_per_identity == 0:
                    folder.mkdir(parents=True)
                pixels = _render(people[who], hard, np.random.default_rng([seed, _STREAM_IMAGE, index]), image_size)
                name = f"{index:0{width}d}.png"
                pending.append(pool.submit(_save_png, pixels, folder / name))
                rows["path"].append(f"images/{label}/{name}")
                rows["label"].append(label)
                rows["true_identity"].append(labels[who] if who < identities else f"outsider_{who - identities:03d}")
                rows["noise"].append(kind)
                rows["is_noise"].append(kind in ("close_set", "open_set"))
                if len(pending) >= 256:
                    _drain(pending, bar)
            _drain(pending, bar)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

    if manifest.exists():
        manifest.unlink()  # from here until the new manifest lands, the folder is visibly incomplete
    if images_dir.exists():
        shutil.rmtree(images_dir)
    publish(tmp, images_dir)
    table = pa.table(rows, schema=_SCHEMA)
    table = table.sort_by("path")  # label-major file numbering already sorts; make it explicit
    with atomic_output(manifest) as manifest_tmp:
        pq.write_table(table, manifest_tmp)
    return manifest


def render_identity_grid(out_png: Path, *, identities: int = 8, images: int = 8, image_size: int = 32,
                         seed: int = 0, zoom: int = 3) -> Path:
    """A contact sheet for eyeballing the generator: one row per identity, last two columns its hard mode."""
    people = [_draw_identity(np.random.default_rng([seed, _STREAM_IDENTITY, i])) for i in range(identities)]
    tile = image_size * zoom
    sheet = Image.new("RGB", (tile * images, tile * identities), (255, 255, 255))
    for row, person in enumerate(people):
        for col in range(images):
            rng = np.random.default_rng([seed, _STREAM_IMAGE, row * images + col])
            pixels = _render(person, col >= images - 2, rng, image_size)
            img = Image.fromarray(pixels).resize((tile, tile), Image.Resampling.NEAREST)
            sheet.paste(img, (col * tile, row * tile))
    sheet.save(out_png)
    return Path(out_png)
