"""Contact sheets: for the identities losing the largest share of their samples, and a seeded random sample of
the others, the kept and the dropped images side by side, each with its angle and reason.

Images are found the way exports find them (:class:`facecleaner.exports.resolve.ExportInput`: files relative to
``--root`` or the scores' input folder, or records of the source ``train.rec``) and decoded by the readers score
uses; each is written once, as a small JPEG named by its ``sample_id``. Their number is capped: identities are
filled in order (largest drop share first) until the cap is reached.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from facecleaner.pruning.rules import KEPT
from facecleaner.report.data import REASON_NAMES, RunView

THUMB_SIZE = 96
JPEG_QUALITY = 80
KEPT_PER_CLASS = 8
DROPPED_PER_CLASS = 12
THUMBS = "thumbs"


@dataclass
class Thumb:
    """One sample on a sheet; ``file`` is its thumbnail relative to the report folder (None: not drawn, and
    ``error`` says why when drawing failed)."""

    row: int
    sample_id: int
    angle: float | None
    reason: str  # "kept" or the drop reason
    nearer: str | None = None  # the other class's label, when the sample is nearer it than its own
    angle_other: float | None = None
    where: str | None = None
    file: str | None = None
    error: str | None = None


@dataclass
class Sheet:
    """One identity: its counts, why it was chosen, and the samples shown."""

    class_index: int
    label: Any
    samples: int
    dropped: int
    chosen: str  # "largest drop share" or "random sample"
    kept_thumbs: list[Thumb] = field(default_factory=list)
    dropped_thumbs: list[Thumb] = field(default_factory=list)

    @property
    def drop_share(self) -> float:
        return self.dropped / max(self.samples, 1)

    def as_dict(self) -> dict[str, Any]:
        return {"class_index": self.class_index, "label": self.label, "samples": self.samples,
                "kept": self.samples - self.dropped, "dropped": self.dropped, "drop_share": self.drop_share,
                "chosen": self.chosen, "kept_thumbs": [asdict(t) for t in self.kept_thumbs],
                "dropped_thumbs": [asdict(t) for t in self.dropped_thumbs]}


def choose_classes(present: np.ndarray, samples: np.ndarray, dropped: np.ndarray, worst: int, sample: int,
                   seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(the ``worst`` classes losing the largest share — ties: more dropped, then class order — among those
    losing any, and ``sample`` others drawn at random with ``seed``), as class indices."""
    share = dropped / np.maximum(samples, 1)
    order = np.lexsort((present, -dropped, -share))
    losing = order[dropped[order] > 0][:worst]
    rest = np.setdiff1d(np.arange(len(present)), losing)
    picked = np.sort(np.random.default_rng(seed).choice(len(rest), size=min(sample, len(rest)), replace=False)) \
        if len(rest) else np.array([], dtype=np.int64)
    return present[losing], present[rest[picked]]


def spread(rows: np.ndarray, angle: np.ndarray, count: int) -> np.ndarray:
    """``count`` of ``rows`` evenly spread over their angles (ascending; not-a-number last), ends included."""
    if count <= 0 or not len(rows):
        return rows[:0]
    values = angle[rows]
    ordered = rows[np.lexsort((rows, np.where(np.isfinite(values), values, np.inf)))]
    if count >= len(ordered):
        return ordered
    return ordered[np.unique(np.round(np.linspace(0, len(ordered) - 1, count)).astype(np.int64))]


def plan_sheets(view: RunView, worst: int, sample: int, seed: int, max_thumbnails: int,
                nearest_other: np.ndarray | None = None) -> list[Sheet]:
    """The identities to show and, within ``max_thumbnails`` in all, which of their samples."""
    present, samples, dropped = view.class_counts()
    worst_classes, sampled = choose_classes(present, samples, dropped, worst, sample, seed)
    chosen = np.concatenate([worst_classes, sampled]).astype(np.int64)
    labels = dict(zip(chosen.tolist(), view.class_labels(chosen), strict=True))
    counts = {int(c): (int(n), int(d)) for c, n, d in zip(present, samples, dropped, strict=True)}
    class_index = view.columns.class_index
    rows = np.flatnonzero(np.isin(class_index, chosen))
    rows = rows[np.argsort(class_index[rows], kind="stable")]
    bounds = np.searchsorted(class_index[rows], chosen), np.searchsorted(class_index[rows], chosen, side="right")
    other_labels = _other_labels(view, rows, nearest_other)
    angle, keep = view.columns.angle, view.keep
    budget = max(max_thumbnails, 0)
    sheets = []
    for number, klass in enumerate(chosen.tolist()):
        members = rows[bounds[0][number]:bounds[1][number]]
        n, d = counts[klass]
        sheet = Sheet(klass, labels[klass], n, d, "largest drop share" if number < len(worst_classes)
                      else "random sample")
        gone = spread(members[~keep[members]], angle, min(DROPPED_PER_CLASS, budget))
        budget -= len(gone)
        stay = spread(members[keep[members]], angle, min(KEPT_PER_CLASS, budget))
        budget -= len(stay)
        sheet.kept_thumbs = [_thumb(view, r, other_labels) for r in stay]
        sheet.dropped_thumbs = [_thumb(view, r, other_labels) for r in gone]
        sheets.append(sheet)
    return sheets


def _other_labels(view: RunView, rows: np.ndarray, nearest_other: np.ndarray | None) -> dict[int, Any]:
    """For the rows nearer another class than their own dominant sub-center: that class's label."""
    other = view.columns.angle_other
    if nearest_other is None or other is None:
        return {}
    with np.errstate(invalid="ignore"):
        nearer = rows[(other[rows] < view.columns.angle[rows]) & (nearest_other[rows] >= 0)
                      & (nearest_other[rows] < view.columns.num_classes)]
    present = np.bincount(view.columns.class_index, minlength=view.columns.num_classes) > 0
    nearer = nearer[present[nearest_other[nearer]]]
    classes = np.unique(nearest_other[nearer])
    names = dict(zip(classes.tolist(), view.class_labels(classes), strict=True))
    return {int(r): names[int(nearest_other[r])] for r in nearer}


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def _thumb(view: RunView, row: int, other_labels: dict[int, Any]) -> Thumb:
    row = int(row)
    code = int(view.reason[row])
    other = view.columns.angle_other
    nearer = other_labels.get(row)
    return Thumb(row, int(view.sample_id[row]), _finite(view.columns.angle[row]),
                 "kept" if code == KEPT else REASON_NAMES[code], None if nearer is None else str(nearer),
                 _finite(other[row]) if other is not None and nearer is not None else None)


def write_thumbnails(sheets: list[Sheet], view: RunView, folder: Path, root: Path | None = None,
                     progress: bool = True) -> dict[str, Any]:
    """Write each planned sample's thumbnail once into ``folder`` (``THUMBS`` of the report); returns counts.
    A missing or undecodable image is counted and shown as a placeholder, never fatal; InputError when the
    images cannot be located at all (RecordIO rows with no known ``train.rec``)."""
    from PIL import Image

    from facecleaner.exports.resolve import ExportInput
    from facecleaner.progress import progress_bar
    from facecleaner.sources.images import UnreadableImage, load_rgb

    thumbs = {t.row: t for sheet in sheets for t in (*sheet.kept_thumbs, *sheet.dropped_thumbs)}
    summary: dict[str, Any] = {"planned": len(thumbs), "written": 0, "failed": 0, "examples": []}
    if not thumbs:
        return summary
    folder.mkdir(parents=True, exist_ok=True)
    inp = ExportInput(view.scores, "label", root, kind="scores")
    names: set[str] = set()
    try:
        with progress_bar(len(thumbs), "thumbnails", enabled=progress) as bar:
            for sample in inp.samples(np.array(sorted(thumbs), dtype=np.int64)):
                thumb = thumbs[sample.row]
                thumb.where = inp.describe(sample)
                try:
                    image, _ = load_rgb(inp.read_bytes(sample), draft_size=THUMB_SIZE)
                    image.thumbnail((THUMB_SIZE, THUMB_SIZE), Image.Resampling.LANCZOS)
                    name = f"{thumb.sample_id}.jpg"
                    if name in names:  # an edited scores file repeating a sample_id: still one file per row
                        name = f"row{thumb.row}.jpg"
                    image.save(folder / name, format="JPEG", quality=JPEG_QUALITY)
                    names.add(name)
                    thumb.file = f"{THUMBS}/{name}"
                    summary["written"] += 1
                except (OSError, UnreadableImage) as exc:
                    why = "missing" if isinstance(exc, FileNotFoundError) else \
                        getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
                    thumb.error = why.splitlines()[0][:160]
                    summary["failed"] += 1
                    if len(summary["examples"]) < 5:
                        summary["examples"].append(f"{thumb.where}: {thumb.error}")
                bar.update()
    finally:
        inp.close()
    return summary
