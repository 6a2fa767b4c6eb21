"""The end of ``score``: the work area's parts → the dominant vote, the angles and the scores manifest.

Three passes over the parts, each holding one part at a time: the vote (each sample's nearest sub-center), the
angles to the dominant sub-centers (what the threshold and the health need), then the manifest's rows, streamed
in row order with the input's extra columns read from the input alongside. Beyond one part, what stays in memory
is a few bytes per sample (readable, nearest sub-center, two angles), never the measurements of every sample.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from facecleaner.manifests.classes import classes_table
from facecleaner.manifests.io import rows_per_batch
from facecleaner.manifests.schema import STATUS_OK
from facecleaner.scoring.angles import dominant_subcenters
from facecleaner.scoring.measure import (
    NON_FINITE,
    Measurements,
    Scores,
    angles_to,
    label_column,
    nearest_subcenters,
    scores_table,
)
from facecleaner.scoring.workarea import WorkArea
from facecleaner.sources.base import Source


@dataclass
class ScoresOutput:
    """A scores manifest ready to be judged and written: the per-sample columns judging needs, its classes
    table, and its rows as a stream of Arrow tables (made again on each call of ``batches``)."""

    readable: np.ndarray        # bool (N,)
    angle: np.ndarray           # float32 (N,), NaN where unreadable
    angle_other: np.ndarray     # float32 (N,), NaN where unreadable or no other class
    non_dominant: int           # readable samples nearest a non-dominant sub-center
    classes: pa.Table
    rows: int
    batches: Callable[[], Iterator[pa.Table]]

    @classmethod
    def from_table(cls, manifest: pa.Table, subcenters: int) -> ScoresOutput:
        """The output of a scores manifest already whole in memory (held-out scoring merges its folds so)."""
        readable = pc.equal(manifest["status"], STATUS_OK).to_numpy(zero_copy_only=False)

        def column(name: str) -> np.ndarray:
            return pc.fill_null(manifest[name], np.nan).to_numpy(zero_copy_only=False).astype(np.float32)

        is_dominant = pc.fill_null(manifest["is_dominant"], True).to_numpy(zero_copy_only=False)
        classes = classes_table(manifest["class_index"].to_numpy(), manifest["label"], readable,
                                pc.fill_null(manifest["nearest_subcenter"], 0).to_numpy(),
                                manifest["dominant_subcenter"].to_numpy(), subcenters)
        return cls(readable, column("angle"), column("angle_other"), int((~is_dominant[readable]).sum()), classes,
                   manifest.num_rows, lambda: iter([manifest]))


@dataclass
class Tally:
    """The first pass: who is readable, each sample's nearest sub-center, and why the others are not."""

    readable: np.ndarray        # bool (N,)
    nearest: np.ndarray         # int8 (N,), -1 where unreadable
    reasons: dict[int, str]     # row → reason, for the unreadable rows
    resized: int

    @property
    def non_finite(self) -> int:
        return sum(reason == NON_FINITE for reason in self.reasons.values())


def tally(area: WorkArea, count: int) -> Tally:
    """Pass one over the parts (their measurements must cover ``count`` samples)."""
    readable = np.zeros(count, dtype=bool)
    nearest = np.full(count, -1, dtype=np.int8)
    reasons: dict[int, str] = {}
    resized = 0
    for part in area.parts():
        rows = part["rows"]
        measured = Measurements.of_part(part)
        readable[rows] = measured.readable
        nearest[rows] = nearest_subcenters(measured)
        bad = np.flatnonzero(~measured.readable)
        reasons.update(zip(rows[bad].tolist(), measured.reasons[bad].tolist(), strict=True))
        resized += int(measured.resized.sum())
    return Tally(readable, nearest, reasons, resized)


def merge_parts(area: WorkArea, source: Source, table: pd.DataFrame, class_index: np.ndarray, num_classes: int,
                subcenters: int, found: Tally) -> ScoresOutput:
    """Passes two and three: the vote and angles, then the manifest's rows as a stream."""
    readable, nearest = found.readable, found.nearest
    dominant, votes = dominant_subcenters(nearest[readable], class_index[readable], num_classes, subcenters)
    angle = np.full(len(readable), np.nan, dtype=np.float32)
    angle_other = np.full(len(readable), np.nan, dtype=np.float32)
    for rows, scores in _part_scores(area, class_index, dominant, votes):
        angle[rows] = scores.angle
        angle_other[rows] = scores.angle_other
    classes = classes_table(class_index, label_column(table["label"]), readable, nearest, dominant[class_index],
                            subcenters)
    non_dominant = int((readable & (nearest != dominant[class_index])).sum())
    extras = getattr(source, "extras", None)

    def batches() -> Iterator[pa.Table]:
        """Parts' rows gathered into tables of about BATCH_BYTES (row groups of a sensible size)."""
        columns = _RowStream(extras.batches()) if extras is not None else None
        pending: list[pa.Table] = []
        for rows, scores in _part_scores(area, class_index, dominant, votes):
            first, end = int(rows[0]), int(rows[-1]) + 1
            pending.append(scores_table(table.iloc[first:end], class_index[first:end], scores,
                                        columns.take(end - first) if columns is not None else None, first))
            held = sum(t.num_rows for t in pending)
            if held >= rows_per_batch(sum(t.nbytes for t in pending) / held):
                yield pa.concat_tables(pending)
                pending = []
        if pending:
            yield pa.concat_tables(pending)

    return ScoresOutput(readable, angle, angle_other, non_dominant, classes, len(readable), batches)


def _part_scores(area: WorkArea, class_index: np.ndarray, dominant: np.ndarray,
                 votes: np.ndarray) -> Iterator[tuple[np.ndarray, Scores]]:
    """Each part's rows (consecutive, ascending) and their scores under the vote."""
    for part in area.parts():
        rows = part["rows"]
        measured = Measurements.of_part(part)
        yield rows, angles_to(measured, class_index[rows], dominant, votes)


class _RowStream:
    """Consecutive rows of a stream of tables, handed out in the sizes asked for."""

    def __init__(self, tables: Iterator[pa.Table]) -> None:
        self._tables = tables
        self._held: list[pa.Table] = []
        self._rows = 0

    def take(self, count: int) -> pa.Table:
        while self._rows < count:
            table = next(self._tables)
            self._held.append(table)
            self._rows += table.num_rows
        held = pa.concat_tables(self._held)
        self._held, self._rows = [held.slice(count)], held.num_rows - count
        return held.slice(0, count)
