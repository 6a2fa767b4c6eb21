"""One view of a run for the report: the scores' columns, and per row whether it was kept and, if not, why.

Without a clean manifest the decision is the one :func:`facecleaner.pruning.rules.decide` makes at the given
threshold (the paper's rule, as ``prune`` with that ``--angle``). With one, kept rows are the clean manifest's
(matched by ``sample_id``) and reasons come from its dropped companion; whether the files belong to one run is
checked where their metadata allows, and said in ``warnings`` when they do not.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from facecleaner.errors import InputError
from facecleaner.manifests.classes import first_rows
from facecleaner.manifests.companions import check_companions
from facecleaner.manifests.io import input_sibling, read_columns, table_columns
from facecleaner.manifests.schema import REASONS
from facecleaner.manifests.validate import ScoreColumns, as_type, read_scores, require_columns
from facecleaner.pruning.rules import DEFAULT_ANGLE, KEPT, decide
from facecleaner.pruning.threshold import AutoThreshold, choose_threshold

#: A dropped row whose reason is not known (the dropped companion is missing, or does not list it).
UNKNOWN = len(REASONS)
REASON_NAMES = (*REASONS, "unknown")
AUTO = "auto"
#: The measures :mod:`facecleaner.scoring.health` records; metadata lacking one is not used.
HEALTH_KEYS = ("samples", "median_angle", "memorised_share", "unseparated_share", "median_gap")


@dataclass
class RunView:
    """The scores' decision columns plus the decision: ``reason`` per row (``KEPT`` = -1, else an index into
    :data:`REASON_NAMES`), the threshold it was taken at and how that was chosen."""

    scores: Path
    meta: dict[str, Any]
    columns: ScoreColumns
    sample_id: np.ndarray
    reason: np.ndarray
    threshold: float
    threshold_choice: str  # "fixed", "auto" or "clean manifest"
    auto: AutoThreshold
    rule: str
    clean: Path | None = None
    dropped: Path | None = None
    clean_meta: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def keep(self) -> np.ndarray:
        return self.reason == KEPT

    def __len__(self) -> int:
        return len(self.reason)

    def class_counts(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(present class indices, samples per class, dropped per class), over the classes with samples."""
        size = self.columns.num_classes
        samples = np.bincount(self.columns.class_index, minlength=size)
        dropped = np.bincount(self.columns.class_index[~self.keep], minlength=size)
        present = np.flatnonzero(samples)
        return present, samples[present], dropped[present]

    def class_labels(self, classes: np.ndarray) -> list[Any]:
        """The label of each class in ``classes`` (from its first row)."""
        rows = first_rows(self.columns.class_index, self.columns.num_classes)[classes]
        return self.columns.labels.take(rows).to_pylist() if len(rows) else []


def load_run(scores: Path, clean: Path | None = None, angle: float | str = DEFAULT_ANGLE) -> RunView:
    """Read ``scores`` (ours or an edited one with the decision columns) and decide, or read the decision
    from ``clean`` and its dropped companion; InputError for what cannot be read as such."""
    scores = Path(scores)
    names, _ = table_columns(scores, "scores")
    require_columns(scores, names, ["sample_id"], "give the scores manifest written by `facecleaner score`")
    columns, meta = read_scores(scores, other_class="angle_other" in names)
    sample_id = as_type(scores, "sample_id", read_columns(scores, ["sample_id"])["sample_id"], pa.int64())
    sample_id = pc.fill_null(sample_id, -1).to_numpy()
    auto = choose_threshold(columns.angle[columns.readable], fallback=DEFAULT_ANGLE)
    if clean is None:
        threshold = auto.angle if angle == AUTO else float(angle)
        decision = decide(columns.class_index, columns.readable, columns.is_dominant, columns.angle,
                          columns.num_classes, threshold)
        return RunView(scores, meta, columns, sample_id, decision.reason, threshold,
                       AUTO if angle == AUTO else "fixed", auto, "paper")
    return _from_clean(scores, meta, columns, sample_id, auto, Path(clean), angle)


def _from_clean(scores: Path, meta: dict[str, Any], columns: ScoreColumns, sample_id: np.ndarray,
                auto: AutoThreshold, clean: Path, angle: float | str) -> RunView:
    names, clean_meta = table_columns(clean, "clean")
    require_columns(clean, names, ["sample_id"],
                    "give the clean manifest `facecleaner prune` wrote from these scores (it keeps sample_id)")
    if len(np.unique(sample_id)) != len(sample_id):
        raise InputError(f"{scores} repeats sample_id values, so a clean manifest's rows cannot be matched to it",
                         "give the scores manifest as `facecleaner score` wrote it")
    order = np.argsort(sample_id, kind="stable")
    kept_ids = pc.fill_null(as_type(clean, "sample_id", read_columns(clean, ["sample_id"])["sample_id"], pa.int64()),
                            -1).to_numpy()
    kept_rows = _rows_of(kept_ids, sample_id, order, clean, scores)
    reason = np.full(len(sample_id), UNKNOWN, dtype=np.int8)
    reason[kept_rows] = KEPT
    warnings: list[str] = []
    companion = check_companions(clean).warning()
    if companion:
        warnings.append(companion)
    dropped = _dropped_path(clean, clean_meta)
    if dropped is not None and dropped.is_file():
        dropped_names, _ = table_columns(dropped, "dropped")
        require_columns(dropped, dropped_names, ["sample_id", "reason"],
                        "give the dropped manifest prune wrote beside the clean one, or remove it")
        table = read_columns(dropped, ["sample_id", "reason"])
        ids = pc.fill_null(as_type(dropped, "sample_id", table["sample_id"], pa.int64()), -1).to_numpy()
        rows = _rows_of(ids, sample_id, order, dropped, scores)
        codes = {name: code for code, name in enumerate(REASONS)}
        given = table["reason"].to_pylist()
        overlap = rows[reason[rows] == KEPT]
        if len(overlap):
            warnings.append(f"{len(overlap)} samples are in both {clean} and {dropped} (sample_id "
                            f"{int(sample_id[overlap[0]])} first): they are shown as kept")
        free = reason[rows] != KEPT
        reason[rows[free]] = [codes.get(r, UNKNOWN) for r, f in zip(given, free, strict=True) if f]
    else:
        warnings.append(f"{clean} has no dropped manifest beside it ({dropped or 'none recorded'}): the dropped "
                        "samples' reasons are unknown")
    unknown = int((reason == UNKNOWN).sum())
    if unknown and dropped is not None and dropped.is_file():
        warnings.append(f"{unknown} samples of {scores} are in neither {clean} nor {dropped}: shown as dropped, "
                        "reason unknown")
    warnings.extend(_run_mismatch(scores, meta, clean, clean_meta))
    recorded = clean_meta.get("angle_threshold")
    if isinstance(recorded, int | float) and not isinstance(recorded, bool) and math.isfinite(recorded):
        threshold, choice = float(recorded), "clean manifest"
    else:
        threshold, choice = (auto.angle, AUTO) if angle == AUTO else (float(angle), "fixed")
    rule = clean_meta.get("rule") if isinstance(clean_meta.get("rule"), str) else "unknown"
    if clean_meta.get("drop_other_class") is True:
        rule += " + drop_other_class"
    return RunView(scores, meta, columns, sample_id, reason, threshold, choice, auto, rule, clean,
                   dropped if dropped is not None and dropped.is_file() else None, clean_meta, warnings)


def _rows_of(ids: np.ndarray, sample_id: np.ndarray, order: np.ndarray, manifest: Path, scores: Path) -> np.ndarray:
    """The scores rows holding ``ids``; InputError at the first id the scores do not hold."""
    sorted_ids = sample_id[order]
    position = np.minimum(np.searchsorted(sorted_ids, ids), max(len(sorted_ids) - 1, 0))
    found = (sorted_ids[position] == ids) if len(sorted_ids) else np.zeros(len(ids), dtype=bool)
    if not found.all():
        missing = int(ids[np.flatnonzero(~found)[0]])
        raise InputError(f"{manifest} holds sample_id {missing}, which {scores} does not: they come from different "
                         "datasets", "give the scores file the manifest was pruned from")
    return order[position]


def _dropped_path(clean: Path, clean_meta: dict[str, Any]) -> Path | None:
    """The dropped companion the clean manifest's metadata names, else the one beside it by name."""
    companions = clean_meta.get("companions")
    entry = companions.get("dropped") if isinstance(companions, dict) else None
    if isinstance(entry, dict) and isinstance(entry.get("path"), str):
        return Path(os.path.realpath(clean)).parent / entry["path"]
    return input_sibling(clean, "dropped")


def _run_mismatch(scores: Path, meta: dict[str, Any], clean: Path, clean_meta: dict[str, Any]) -> list[str]:
    """Whether ``clean`` was pruned from ``scores``, by the scores' run id when prune recorded it, else by the
    checkpoint and input fingerprint both carry. Files without our metadata cannot be checked."""
    if not meta or not clean_meta:
        return []
    mixed = f"{clean} was not pruned from {scores} (its {{}} differs): the figures mix two runs; report on the " \
            "scores file the clean manifest came from"
    if isinstance(clean_meta.get("scores_run_id"), str) and isinstance(meta.get("run_id"), str):
        return [] if clean_meta["scores_run_id"] == meta["run_id"] else [mixed.format("scores run id")]
    for key, name in (("checkpoint_sha256", "model checkpoint"), ("input_fingerprint", "input fingerprint")):
        if key in meta and key in clean_meta and meta[key] != clean_meta[key]:
            return [mixed.format(name)]
    return []


def model_health(view: RunView) -> tuple[dict[str, Any], str]:
    """The model-health measures: the scores' recorded ``health`` when the file is as score wrote it, else
    computed by :func:`facecleaner.scoring.health.assess` from its columns; with where they came from."""
    from facecleaner.scoring.health import assess

    recorded = view.meta.get("health")
    if isinstance(recorded, dict) and all(k in recorded for k in HEALTH_KEYS) and view.meta.get("rows") == len(view):
        return recorded, "metadata"
    readable = view.columns.readable
    other = view.columns.angle_other
    health = assess(view.columns.angle[readable], None if other is None else other[readable],
                    view.auto.noise_share if view.auto.noise_mode else None, view.auto.angle)
    return health.as_dict(), "computed"
