"""The prune job: decide from a scores table's few decision columns, then stream the rows into the clean and
dropped manifests (the rule itself is :mod:`facecleaner.pruning.rules`).

The three files (clean, dropped, classes) are built under temporary names and published together
(:func:`facecleaner.fileio.atomic_outputs`), each stamped with the run id they share and every file's row
count; a prune killed among the renames is completed by the next prune on the same outputs.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from facecleaner.errors import InputError, PruneRefused
from facecleaner.fileio import atomic_outputs, check_distinct, check_file_outputs, recover_outputs
from facecleaner.manifests.companions import companion_fields
from facecleaner.manifests.io import (
    input_sibling,
    manifest_metadata,
    new_run_id,
    open_stream,
    parquet_writer,
    sibling,
    write_table,
)
from facecleaner.manifests.schema import NEW_LABEL, REASON, REASONS
from facecleaner.progress import logger
from facecleaner.pruning.rules import DEFAULT_ANGLE

#: ``--angle auto``: the threshold read from the scores (:mod:`facecleaner.pruning.threshold`).
AUTO = "auto"
#: Metadata of the scores file that its clean and dropped manifests carry on.
INHERITED = ("model", "checkpoint_sha256", "input_fingerprint", "num_classes", "input_root")


def check_options(angle: float | str, min_images: int, max_drop_fraction: float) -> None:
    """The option ranges (the CLI enforces them as usage errors; library callers get an InputError)."""
    if angle != AUTO and not (isinstance(angle, int | float) and 0.0 < angle < 180.0):
        raise InputError(f"--angle {angle!r} is neither 'auto' nor in (0, 180) degrees",
                         "the paper's threshold is 75; 'auto' reads it from the scores")
    if min_images < 1:
        raise InputError("--min-images must be at least 1", "give a positive number")
    if not 0.0 <= max_drop_fraction <= 1.0:
        raise InputError("--max-drop-fraction must be in [0, 1]", "the default is 0.5")


def prune(scores: str | Path, out: str | Path, angle: float | str = DEFAULT_ANGLE, dropped: str | Path | None = None,
          drop_non_dominant: bool = False, min_images: int = 1, max_drop_fraction: float = 0.5,
          force: bool = False, drop_other_class: bool = False) -> dict[str, Any]:
    """Split a scores table into clean (with ``new_label``) and dropped (with ``reason``) manifests.

    ``scores`` is a manifest written by ``score`` or the user's edit of one (without our metadata: the class
    and sub-center counts then come from the data). ``angle="auto"`` reads the threshold from the scores' angles
    (the valley between their clean and noise modes, 75° when there is none); ``drop_other_class`` also drops a
    sample within the threshold that is nearer another class than its own dominant sub-center.
    """
    from facecleaner.manifests.classes import classes_table
    from facecleaner.manifests.validate import read_scores
    from facecleaner.pruning.rules import decide
    from facecleaner.pruning.threshold import choose_threshold

    check_options(angle, min_images, max_drop_fraction)
    scores, out = Path(scores), Path(out)
    outputs = {"clean": out, "dropped": Path(dropped) if dropped else sibling(out, "dropped"),
               "classes": sibling(out, "classes")}
    named_outputs = {"--out": out, "--dropped": outputs["dropped"], "--out (its classes file)": outputs["classes"]}
    check_distinct({"scores input": scores, "scores input's classes file": input_sibling(scores, "classes")},
                   named_outputs)
    check_file_outputs(named_outputs)
    recovered = [path for done in recover_outputs(outputs.values()) for path in done.get("completed", [])]
    # Decide from the few columns the rule needs, then stream the whole rows through: memory stays at the
    # decision columns plus one batch, however wide the input's extra columns are.
    columns, meta = read_scores(scores, other_class=drop_other_class)
    auto = choose_threshold(columns.angle[columns.readable], fallback=DEFAULT_ANGLE) if angle == AUTO else None
    threshold = auto.angle if auto is not None else float(angle)
    if auto is not None:
        logger.info("--angle auto: %s", auto.note)
    decision = decide(columns.class_index, columns.readable, columns.is_dominant, columns.angle,
                      columns.num_classes, threshold, drop_non_dominant, min_images, columns.angle_other)
    keep = decision.keep
    dropped_count = int((~keep).sum())
    if dropped_count > max_drop_fraction * len(keep) and not force:
        angles = columns.angle[columns.readable]
        median = float(np.nanmedian(angles)) if np.isfinite(angles).any() else math.nan
        raise PruneRefused(
            f"this rule would drop {dropped_count} of {len(keep)} samples ({dropped_count / max(len(keep), 1):.0%}, "
            f"over --max-drop-fraction {max_drop_fraction}); the median angle is {median:.0f}°, which usually means "
            "the model did not converge rather than that the data is mostly noise",
            "check the training metrics and retrain, or pass --force to drop them anyway")
    classes = classes_table(columns.class_index, columns.labels, columns.readable, columns.nearest,
                            columns.dominant, columns.subcenters, decision.kept_per_class, decision.class_new_label)
    rule = "drop_non_dominant" if drop_non_dominant else "paper"
    run_id = new_run_id()
    rows = {"clean": int(keep.sum()), "dropped": dropped_count, "classes": classes.num_rows}
    base_meta = {key: meta[key] for key in INHERITED if key in meta}
    base_meta |= {"angle_threshold": threshold, "angle_choice": AUTO if auto else "fixed", "rule": rule,
                  "drop_other_class": drop_other_class, "min_images": min_images, "scores": str(scores),
                  **({"scores_run_id": meta["run_id"]} if isinstance(meta.get("run_id"), str) else {}),
                  **({"auto_threshold": auto.as_dict()} if auto else {})}

    def metadata(role: str) -> dict[str, Any]:
        return manifest_metadata(role, **base_meta, **companion_fields(outputs, rows, run_id, role))

    # Batches and written row groups hold a byte budget, not a row count: an embedding column a user joined
    # in makes rows ten times wider, and 1M of them would not fit the memory a plain manifest needs.
    source, batch_rows = open_stream(scores)
    # An edited clean or dropped manifest given back to prune: its new_label / reason are decided afresh.
    carried = [name for name in source.schema_arrow.names if name not in (NEW_LABEL.name, REASON.name)]
    schema = pa.schema([source.schema_arrow.field(name) for name in carried], metadata=source.schema_arrow.metadata)
    reason_names = pa.array(REASONS, pa.string())
    with atomic_outputs(list(outputs.values())) as (clean_tmp, dropped_tmp, classes_tmp):
        with parquet_writer(clean_tmp, schema.append(NEW_LABEL), metadata("clean"), batch_rows) as write_clean, \
                parquet_writer(dropped_tmp, schema.append(REASON), metadata("dropped"), batch_rows) as write_dropped:
            start = 0
            for batch in source.iter_batches(batch_size=batch_rows, columns=carried):
                part = pa.Table.from_batches([batch], schema=schema)
                stop = start + len(part)
                kept = keep[start:stop]
                write_clean(part.filter(pa.array(kept)).append_column(
                    NEW_LABEL, pa.array(decision.new_label[start:stop][kept])))
                codes = pa.array(decision.reason[start:stop][~kept].astype(np.int32))
                write_dropped(part.filter(pa.array(~kept)).append_column(REASON, reason_names.take(codes)))
                start = stop
        write_table(classes_tmp, classes, metadata("classes"))
    warnings = _health_warnings(meta)
    for warning in warnings:  # after the work: an error, if any, stays the one line on stderr
        logger.warning("the scores' model: %s", warning)
    by_reason = {name: int((decision.reason == code).sum()) for code, name in enumerate(REASONS)}
    kept_classes = int((decision.class_new_label >= 0).sum())
    return {"clean": str(out), "dropped": str(outputs["dropped"]), "samples": len(keep), "kept": rows["clean"],
            "dropped_samples": dropped_count, "by_reason": by_reason,
            "classes": int(len(np.unique(columns.class_index))), "classes_kept": kept_classes, "angle": threshold,
            "auto_threshold": auto.as_dict() if auto else None, "rule": rule, "drop_other_class": drop_other_class,
            "run_id": run_id, "recovered": recovered,
            "warnings": warnings}


def _health_warnings(meta: dict[str, Any]) -> list[str]:
    """The model-health warnings score recorded (metadata may have been edited: only strings are taken)."""
    health = meta.get("health")
    found = health.get("warnings") if isinstance(health, dict) else None
    return [w for w in found if isinstance(w, str)] if isinstance(found, list) else []
