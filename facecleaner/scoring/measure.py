"""Embed every sample with a trained model and measure its angles to the sub-centers.

One pass over the data keeps, per sample, the cosines to its own class's K sub-centers and the nearest
other class; the dominant sub-center vote needs every sample, so angles to it are taken afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from facecleaner.distributed import shard_range
from facecleaner.manifests.schema import RESERVED, STATUS_OK, scores_schema
from facecleaner.model import prepare_images
from facecleaner.model.head import SubCenterArcFace
from facecleaner.model.runtime import autocast, eval_mode
from facecleaner.progress import progress_bar
from facecleaner.scoring.angles import dominant_subcenters, own_class_cosines, to_degrees
from facecleaner.scoring.search import OtherClassSearch
from facecleaner.sources.dataset import DecodedImages, batch_loader, index_batches


@dataclass
class Measurements:
    """Raw per-sample geometry; rows of unreadable samples hold NaN / -1."""

    readable: np.ndarray        # bool (N,)
    reasons: list[str]          # "" where readable
    own_cosines: np.ndarray     # float32 (N, K)
    other_class: np.ndarray     # int32 (N,)
    other_cosine: np.ndarray    # float32 (N,)
    resized: np.ndarray         # bool (N,): the stored image had another size than the model's input


@dataclass
class Scores:
    """Everything the scores manifest holds beyond the input's own columns."""

    nearest: np.ndarray         # int8 (N,), -1 where unreadable
    dominant: np.ndarray        # int8 (C,)
    votes: np.ndarray           # int64 (C, K)
    angle: np.ndarray           # float32 (N,), NaN where unreadable
    angle_nearest: np.ndarray
    angle_other: np.ndarray
    measurements: Measurements


def measure(backbone: torch.nn.Module, head: SubCenterArcFace, dataset: DecodedImages, classes: np.ndarray,
            device: torch.device, precision: str, batch_size: int, workers: int, progress: bool = True,
            embeddings_out: np.ndarray | None = None, batches: list[list[int]] | None = None) -> Measurements:
    """Run the backbone in eval mode over all samples, in input order.

    ``batches`` (default: every sample, ``batch_size`` at a time) limits the pass to those index batches —
    one rank's share under torchrun; the other rows stay unreadable-shaped (NaN / -1) and are merged by
    :func:`merge_measurements`.
    """
    count = len(dataset)
    subs = head.subcenters
    own = np.full((count, subs), np.nan, dtype=np.float32)
    other_class = np.full(count, -1, dtype=np.int32)
    other_cos = np.full(count, np.nan, dtype=np.float32)
    readable = np.zeros(count, dtype=bool)
    resized = np.zeros(count, dtype=bool)
    reasons = [""] * count
    backbone.to(device)
    channels_last = device.type == "cuda"
    if channels_last:
        backbone.to(memory_format=torch.channels_last)
    subcenters = head.unit_subcenters().to(device)
    search_other = OtherClassSearch(subcenters)
    labels = torch.from_numpy(classes.astype(np.int64))
    if batches is None:
        batches = index_batches(np.arange(count), batch_size)
    loader = batch_loader(dataset, batches, workers, device.type == "cuda")
    with eval_mode(backbone), progress_bar(sum(map(len, batches)), "scoring", progress) as bar:
        for images, ok, indices, why, was_resized in loader:
            for index, good, reason in zip(indices.tolist(), ok.tolist(), why, strict=True):
                if not good:
                    reasons[index] = reason
            resized[indices.numpy()] = was_resized.numpy()
            bar.update(len(indices))
            if not ok.any():
                continue
            rows = indices[ok]
            with autocast(device, precision):
                embeddings = backbone(prepare_images(images[ok], device, channels_last))
            unit = torch.nn.functional.normalize(embeddings.float(), dim=1)
            y = labels[rows].to(device)
            own[rows] = own_class_cosines(unit, subcenters, y).cpu().numpy()
            best_class, best_cos = search_other(unit, y)
            other_class[rows] = best_class.cpu().numpy()
            other_cos[rows] = best_cos.cpu().numpy()
            readable[rows] = True
            if embeddings_out is not None:
                embeddings_out[rows.numpy()] = unit.cpu().numpy().astype(np.float16)
    return Measurements(readable, reasons, own, other_class, other_cos, resized)


def share_of_batches(count: int, batch_size: int, world: int, rank: int) -> list[list[int]]:
    """Rank ``rank``'s contiguous run of the single-process batches: each batch is scored exactly as one
    process would score it, so the merged result equals a one-process run."""
    batches = index_batches(np.arange(count), batch_size)
    start, end = shard_range(len(batches), world, rank)
    return batches[start:end]


def take_rows(measurements: Measurements, rows: np.ndarray) -> dict:
    """The given rows of a (full-length) Measurements, to send to rank 0."""
    m = measurements
    return {"rows": rows, "readable": m.readable[rows], "reasons": [m.reasons[i] for i in rows.tolist()],
            "own_cosines": m.own_cosines[rows], "other_class": m.other_class[rows],
            "other_cosine": m.other_cosine[rows], "resized": m.resized[rows]}


def merge_measurements(parts: list[dict], count: int, subcenters: int) -> Measurements:
    """Every rank's :func:`take_rows` put back into one Measurements, in input order."""
    merged = Measurements(np.zeros(count, dtype=bool), [""] * count,
                          np.full((count, subcenters), np.nan, dtype=np.float32),
                          np.full(count, -1, dtype=np.int32), np.full(count, np.nan, dtype=np.float32),
                          np.zeros(count, dtype=bool))
    for part in parts:
        rows = part["rows"]
        merged.readable[rows] = part["readable"]
        merged.own_cosines[rows] = part["own_cosines"]
        merged.other_class[rows] = part["other_class"]
        merged.other_cosine[rows] = part["other_cosine"]
        merged.resized[rows] = part["resized"]
        for index, reason in zip(rows.tolist(), part["reasons"], strict=True):
            merged.reasons[index] = reason
    return merged


def summarize(measurements: Measurements, classes: np.ndarray, num_classes: int) -> Scores:
    """Vote the dominant sub-center per class and turn cosines into the manifest's angles."""
    ok = measurements.readable
    own = torch.from_numpy(measurements.own_cosines)
    nearest = np.full(len(ok), -1, dtype=np.int8)
    nearest[ok] = own[ok].argmax(dim=1).numpy()
    dominant, votes = dominant_subcenters(nearest[ok], classes[ok], num_classes, own.shape[1])
    own_dominant = own.gather(1, torch.from_numpy(dominant[classes].astype(np.int64))[:, None]).squeeze(1)
    angle = to_degrees(own_dominant).numpy()
    angle_nearest = to_degrees(own.max(dim=1).values).numpy()
    angle_other = to_degrees(torch.from_numpy(measurements.other_cosine)).numpy()
    for column in (angle, angle_nearest, angle_other):
        column[~ok] = np.nan
    angle_other[measurements.other_class < 0] = np.nan
    return Scores(nearest, dominant, votes, angle, angle_nearest, angle_other, measurements)


def scores_table(source_table: pd.DataFrame, classes: np.ndarray, scores: Scores) -> pa.Table:
    """The scores manifest as an Arrow table: the input's columns, the geometry, and a status per row."""
    m = scores.measurements
    ok = m.readable
    label = pa.array(source_table["label"], from_pandas=True)
    label_type = pa.int64() if pa.types.is_integer(label.type) else pa.string()
    extras_frame = source_table.drop(columns=["path", "rec_index", "label"])
    # An input that is itself one of our manifests carries columns named like ours: keep them, renamed.
    extras_frame = extras_frame.rename(columns={c: f"input_{c}" for c in extras_frame.columns if c in RESERVED})
    extras = pa.Table.from_pandas(extras_frame, preserve_index=False)
    other = np.where(m.other_class >= 0, m.other_class, 0)
    status = np.where(ok, STATUS_OK, np.array([f"unreadable: {r}" for r in m.reasons], dtype=object))
    columns = {
        "sample_id": pa.array(np.arange(len(ok), dtype=np.int64)),
        "path": pa.array(source_table["path"], type=pa.string(), from_pandas=True),
        "rec_index": pa.array(source_table["rec_index"], type=pa.int64(), from_pandas=True),
        "label": label.cast(label_type),
        "class_index": pa.array(classes.astype(np.int32)),
        "nearest_subcenter": pa.array(scores.nearest, mask=~ok),
        "dominant_subcenter": pa.array(scores.dominant[classes]),
        "is_dominant": pa.array(scores.nearest == scores.dominant[classes], mask=~ok),
        "angle": pa.array(scores.angle, mask=~ok),
        "angle_nearest": pa.array(scores.angle_nearest, mask=~ok),
        "nearest_other_class": pa.array(other.astype(np.int32), mask=~ok | (m.other_class < 0)),
        "angle_other": pa.array(scores.angle_other, mask=~ok | (m.other_class < 0)),
        "status": pa.array(status, type=pa.string()),
    }
    schema = scores_schema(label_type, extras.schema)
    arrays = list(columns.values()) + list(extras.columns)
    return pa.Table.from_arrays(arrays, schema=schema)
