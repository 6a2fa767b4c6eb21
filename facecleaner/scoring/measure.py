"""Embed every sample with a trained model and measure its angles to the sub-centers.

One pass over the data keeps, per sample, the cosines to its own class's K sub-centers and the nearest
other class; the dominant sub-center vote needs every sample, so angles to it are taken afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from facecleaner.manifests.schema import RESERVED, STATUS_OK, scores_schema
from facecleaner.model import prepare_images
from facecleaner.model.head import SubCenterArcFace
from facecleaner.model.runtime import autocast, eval_mode, place_backbone
from facecleaner.progress import progress_bar
from facecleaner.scoring.angles import dominant_subcenters, own_class_cosines, to_degrees
from facecleaner.scoring.search import OtherClassSearch
from facecleaner.sources.base import arrow_column
from facecleaner.sources.dataset import DecodedImages, batch_loader

#: The reason recorded for a sample whose embedding (or an angle from it) is NaN or infinite, e.g. an overflow.
NON_FINITE = "non-finite embedding"


@dataclass
class Measurements:
    """Raw per-sample geometry; rows of unreadable samples hold NaN / -1."""

    readable: np.ndarray        # bool (N,)
    reasons: Sequence[str]      # "" where readable
    own_cosines: np.ndarray     # float32 (N, K)
    other_class: np.ndarray     # int32 (N,)
    other_cosine: np.ndarray    # float32 (N,)
    resized: np.ndarray         # bool (N,): the stored image had another size than the model's input

    @classmethod
    def empty(cls, count: int, subcenters: int) -> Measurements:
        """``count`` rows shaped like unreadable samples, to be filled batch by batch with :meth:`fill`."""
        return cls(np.zeros(count, dtype=bool), np.full(count, "", dtype=object),
                   np.full((count, subcenters), np.nan, dtype=np.float32), np.full(count, -1, dtype=np.int32),
                   np.full(count, np.nan, dtype=np.float32), np.zeros(count, dtype=bool))

    @classmethod
    def of_part(cls, part: Mapping[str, np.ndarray]) -> Measurements:
        """The measurements of one saved part's own rows (:meth:`BatchMeasurements.arrays`, as saved)."""
        return cls(**{name: part[name] for name in MEASURED})

    def fill(self, part: Mapping[str, np.ndarray]) -> None:
        """Put the arrays of some batches (:meth:`BatchMeasurements.arrays`, as saved) into their rows."""
        rows = part["rows"]
        for name in MEASURED:
            getattr(self, name)[rows] = part[name]


#: The per-sample arrays a batch yields and the work area keeps, besides ``rows`` and the optional embeddings.
MEASURED = ("readable", "reasons", "own_cosines", "other_class", "other_cosine", "resized")


@dataclass
class BatchMeasurements:
    """One batch's measurements, row ``i`` being sample ``rows[i]``; unreadable rows hold NaN / -1."""

    rows: np.ndarray            # int64 (B,)
    readable: np.ndarray        # bool (B,)
    reasons: np.ndarray         # str (B,), "" where readable
    own_cosines: np.ndarray     # float32 (B, K)
    other_class: np.ndarray     # int32 (B,)
    other_cosine: np.ndarray    # float32 (B,)
    resized: np.ndarray         # bool (B,)
    embeddings: np.ndarray | None  # float16 (B, D) unit embeddings, zeros where unreadable; None unless asked

    def arrays(self) -> dict[str, np.ndarray]:
        """The arrays to save, the embeddings aside (reasons as fixed-width text: loading never needs pickle)."""
        arrays = {"rows": self.rows, **{name: getattr(self, name) for name in MEASURED}}
        arrays["reasons"] = np.asarray(self.reasons, dtype=str)
        return arrays


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


def batch_rows(batch: int, batch_size: int, count: int) -> range:
    """The samples of batch ``batch`` in the one-process order (consecutive runs of ``batch_size``).

    Every run, resumed or distributed, scores exactly these batches, so each sample's numbers are the same."""
    return range(batch * batch_size, min(count, (batch + 1) * batch_size))


def measure_batches(backbone: torch.nn.Module, head: SubCenterArcFace, dataset: DecodedImages, classes: np.ndarray,
                    device: torch.device, precision: str, batches: Sequence[Sequence[int]], workers: int,
                    embeddings: bool = False, progress: bool = True) -> Iterator[BatchMeasurements]:
    """Run the backbone in eval mode over ``batches`` (lists of sample indices), yielding each one's measurements.

    A sample whose image cannot be read, or whose embedding or angles are not finite (:data:`NON_FINITE`), is
    unreadable: it is recorded with its reason and never votes.
    """
    channels_last = place_backbone(backbone, device)
    subcenters = head.unit_subcenters(device)
    # --precision fp32 asks for exact arithmetic throughout: the search then skips its bf16 candidates on CUDA.
    search_other = OtherClassSearch(subcenters, precision="fp32" if precision == "fp32" else None)
    labels = torch.from_numpy(classes.astype(np.int64))
    dim = head.embedding_size if embeddings else None
    loader = batch_loader(dataset, batches, workers, device.type == "cuda")
    with eval_mode(backbone), progress_bar(sum(map(len, batches)), "scoring", progress) as bar:
        for images, ok, indices, why, was_resized in loader:
            batch = _unreadable_batch(indices.numpy(), why, was_resized.numpy(), head.subcenters, dim)
            good = np.flatnonzero(ok.numpy())
            if len(good):
                with autocast(device, precision):
                    embedded = backbone(prepare_images(images[torch.from_numpy(good)], device, channels_last))
                _measure(batch, good, embedded, labels, subcenters, search_other, device)
            bar.update(len(indices))
            yield batch


def _unreadable_batch(rows: np.ndarray, reasons: Sequence[str], resized: np.ndarray, subcenters: int,
                      dim: int | None) -> BatchMeasurements:
    count = len(rows)
    return BatchMeasurements(rows.astype(np.int64), np.zeros(count, dtype=bool), np.array(reasons, dtype=object),
                             np.full((count, subcenters), np.nan, dtype=np.float32), np.full(count, -1, dtype=np.int32),
                             np.full(count, np.nan, dtype=np.float32), resized.astype(bool),
                             None if dim is None else np.zeros((count, dim), dtype=np.float16))


def _measure(batch: BatchMeasurements, good: np.ndarray, embedded: torch.Tensor, labels: torch.Tensor,
             subcenters: torch.Tensor, search_other: OtherClassSearch, device: torch.device) -> None:
    """Fill the rows ``good`` of ``batch`` from their embeddings; a non-finite one makes its row unreadable."""
    unit = torch.nn.functional.normalize(embedded.float(), dim=1)
    finite = torch.isfinite(unit).all(dim=1)
    unit = torch.where(finite[:, None], unit, torch.zeros_like(unit))  # keeps NaN out of the search
    y = labels[torch.from_numpy(batch.rows[good])].to(device)
    own = own_class_cosines(unit, subcenters, y).cpu().numpy()
    best_class, best_cos = (t.cpu().numpy() for t in search_other(unit, y))
    keep = finite.cpu().numpy() & np.isfinite(own).all(axis=1) & ~np.isnan(best_cos)
    measured, failed = good[keep], good[~keep]  # positions in the batch
    batch.readable[measured] = True
    batch.reasons[failed] = NON_FINITE
    batch.own_cosines[measured] = own[keep]
    batch.other_class[measured] = best_class[keep]
    batch.other_cosine[measured] = best_cos[keep]
    if batch.embeddings is not None:
        batch.embeddings[measured] = unit.cpu().numpy()[keep].astype(np.float16)


def summarize(measurements: Measurements, classes: np.ndarray, num_classes: int) -> Scores:
    """Vote the dominant sub-center per class and turn cosines into the manifest's angles."""
    ok = measurements.readable
    nearest = nearest_subcenters(measurements)
    dominant, votes = dominant_subcenters(nearest[ok], classes[ok], num_classes, measurements.own_cosines.shape[1])
    return angles_to(measurements, classes, dominant, votes)


def nearest_subcenters(measurements: Measurements) -> np.ndarray:
    """Each sample's nearest sub-center of its own class (int8), -1 where unreadable."""
    nearest = np.full(len(measurements.readable), -1, dtype=np.int8)
    ok = measurements.readable
    nearest[ok] = measurements.own_cosines[ok].argmax(axis=1)
    return nearest


def angles_to(measurements: Measurements, classes: np.ndarray, dominant: np.ndarray, votes: np.ndarray) -> Scores:
    """The angles of some samples (``classes`` holds theirs) once the vote gave each class's ``dominant``."""
    ok = measurements.readable
    own = measurements.own_cosines
    angle = to_degrees(np.take_along_axis(own, dominant[classes].astype(np.int64)[:, None], axis=1)[:, 0])
    angle_nearest = to_degrees(own.max(axis=1))
    angle_other = to_degrees(measurements.other_cosine)
    for column in (angle, angle_nearest, angle_other):
        column[~ok] = np.nan
    angle_other[measurements.other_class < 0] = np.nan
    return Scores(nearest_subcenters(measurements), dominant, votes, angle, angle_nearest, angle_other, measurements)


def label_column(labels: pd.Series) -> pa.Array:
    """A source's labels as the manifests store them: int64 when they are integers, else string."""
    return arrow_column(labels, lambda type_: pa.int64() if pa.types.is_integer(type_) else pa.string())


def scores_table(source_table: pd.DataFrame, classes: np.ndarray, scores: Scores, extras: pa.Table | None = None,
                 first_row: int = 0) -> pa.Table:
    """Rows ``first_row ..`` of the scores manifest as an Arrow table: the input's columns (``extras``, or else the
    table's columns besides path, rec_index and label), the geometry, and a status per row."""
    m = scores.measurements
    ok = m.readable
    label = label_column(source_table["label"])
    if extras is None:
        extras = pa.Table.from_pandas(source_table.drop(columns=["path", "rec_index", "label"]), preserve_index=False)
    # An input that is itself one of our manifests carries columns named like ours: keep them, renamed.
    extras = extras.rename_columns([f"input_{c}" if c in RESERVED else c for c in extras.column_names])
    other = np.where(m.other_class >= 0, m.other_class, 0)
    # Statuses from the few distinct texts, not one Python string per row.
    reasons, codes = np.unique(np.asarray(m.reasons, dtype=str)[~ok], return_inverse=True)
    status_code = np.zeros(len(ok), dtype=np.int32)
    status_code[~ok] = codes.reshape(-1) + 1
    texts = pa.array([STATUS_OK, *(f"unreadable: {r}" for r in reasons.tolist())], type=pa.string())
    columns = {
        "sample_id": pa.array(np.arange(first_row, first_row + len(ok), dtype=np.int64)),
        "path": arrow_column(source_table["path"], lambda _: pa.string()),
        "rec_index": arrow_column(source_table["rec_index"], lambda _: pa.int64()),
        "label": label,
        "class_index": pa.array(classes.astype(np.int32)),
        "nearest_subcenter": pa.array(scores.nearest, mask=~ok),
        "dominant_subcenter": pa.array(scores.dominant[classes]),
        "is_dominant": pa.array(scores.nearest == scores.dominant[classes], mask=~ok),
        "angle": pa.array(scores.angle, mask=~ok),
        "angle_nearest": pa.array(scores.angle_nearest, mask=~ok),
        "nearest_other_class": pa.array(other.astype(np.int32), mask=~ok | (m.other_class < 0)),
        "angle_other": pa.array(scores.angle_other, mask=~ok | (m.other_class < 0)),
        "status": texts.take(pa.array(status_code)),
    }
    schema = scores_schema(label.type, extras.schema)
    arrays = list(columns.values()) + list(extras.columns)
    return pa.Table.from_arrays(arrays, schema=schema)
