"""The prune job: decide from a scores manifest's few decision columns, then stream the rows into the
clean and dropped manifests (the rule itself is :mod:`facecleaner.pruning.rules`)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from facecleaner.errors import InputError, PruneRefused
from facecleaner.manifests.io import (
    ROW_GROUP_ROWS,
    manifest_metadata,
    manifest_writer,
    read_manifest,
    sibling,
    write_manifest,
)
from facecleaner.manifests.schema import NEW_LABEL, REASON, REASONS, STATUS_OK

DEFAULT_ANGLE = 75.0
#: What prune reads whole; every other column is streamed through batch by batch.
DECISION_COLUMNS = ("class_index", "label", "status", "is_dominant", "angle", "nearest_subcenter",
                    "dominant_subcenter")


def prune(scores: str | Path, out: str | Path, angle: float = DEFAULT_ANGLE, dropped: str | Path | None = None,
          drop_non_dominant: bool = False, min_images: int = 1, max_drop_fraction: float = 0.5,
          force: bool = False) -> dict[str, Any]:
    """Split a scores manifest into clean (with ``new_label``) and dropped (with ``reason``) manifests."""
    from facecleaner.manifests.classes import classes_table
    from facecleaner.pruning.rules import decide

    if not 0.0 < angle < 180.0:
        raise InputError(f"--angle {angle} is outside (0, 180) degrees", "the paper's threshold is 75")
    if min_images < 1:
        raise InputError("--min-images must be at least 1", "give a positive number")
    if not 0.0 <= max_drop_fraction <= 1.0:
        raise InputError("--max-drop-fraction must be in [0, 1]", "the default is 0.5")
    # Decide from the few columns the rule needs, then stream the whole rows through: memory stays at the
    # decision columns plus one batch, however wide the input's extra columns are.
    columns, meta = read_manifest(Path(scores), "scores", columns=list(DECISION_COLUMNS))
    class_index = columns["class_index"].to_numpy()
    readable = pc.equal(columns["status"], STATUS_OK).to_numpy(zero_copy_only=False)
    is_dominant = pc.fill_null(columns["is_dominant"], False).to_numpy(zero_copy_only=False)
    angles = columns["angle"].to_numpy(zero_copy_only=False)
    num_classes = int(meta.get("num_classes", int(class_index.max()) + 1 if len(class_index) else 0))
    decision = decide(class_index, readable, is_dominant, angles, num_classes, angle, drop_non_dominant, min_images)
    keep = decision.keep
    dropped_count = int((~keep).sum())
    if dropped_count > max_drop_fraction * len(keep) and not force:
        median = float(np.nanmedian(angles)) if readable.any() else math.nan
        raise PruneRefused(
            f"this rule would drop {dropped_count} of {len(keep)} samples ({dropped_count / max(len(keep), 1):.0%}, "
            f"over --max-drop-fraction {max_drop_fraction}); the median angle is {median:.0f}°, which usually means "
            "the model did not converge rather than that the data is mostly noise",
            "check the training metrics and retrain, or pass --force to drop them anyway")
    rule = "drop_non_dominant" if drop_non_dominant else "paper"
    out = Path(out)
    dropped_path = Path(dropped) if dropped else out.with_name(f"{out.stem}.dropped.parquet")
    base_meta = {key: meta[key] for key in ("model", "checkpoint_sha256", "input_fingerprint", "num_classes",
                                            "input_root")
                 if key in meta}
    base_meta |= {"angle_threshold": angle, "rule": rule, "min_images": min_images, "scores": str(scores)}
    source = pq.ParquetFile(scores)
    reason_names = pa.array(REASONS, pa.string())
    with manifest_writer(out, source.schema_arrow.append(NEW_LABEL), manifest_metadata("clean", **base_meta)) \
            as write_clean, manifest_writer(dropped_path, source.schema_arrow.append(REASON),
                                            manifest_metadata("dropped", **base_meta)) as write_dropped:
        start = 0
        for batch in source.iter_batches(batch_size=ROW_GROUP_ROWS):
            rows = pa.Table.from_batches([batch])
            stop = start + len(rows)
            kept = keep[start:stop]
            write_clean(rows.filter(pa.array(kept)).append_column(NEW_LABEL,
                                                                  pa.array(decision.new_label[start:stop][kept])))
            codes = pa.array(decision.reason[start:stop][~kept].astype(np.int32))
            write_dropped(rows.filter(pa.array(~kept)).append_column(REASON, reason_names.take(codes)))
            start = stop
    nearest = pc.fill_null(columns["nearest_subcenter"], 0).to_numpy(zero_copy_only=False)
    subcenters = int(meta.get("model", {}).get("subcenters", int(nearest.max()) + 1 if len(nearest) else 1))
    classes = classes_table(class_index, columns["label"], readable, nearest,
                            columns["dominant_subcenter"].to_numpy(), subcenters, decision.kept_per_class,
                            decision.class_new_label)
    write_manifest(sibling(out, "classes"), classes, manifest_metadata("classes", **base_meta))
    by_reason = {name: int((decision.reason == code).sum()) for code, name in enumerate(REASONS)}
    kept_classes = int((decision.class_new_label >= 0).sum())
    return {"clean": str(out), "dropped": str(dropped_path), "samples": len(keep), "kept": int(keep.sum()),
            "dropped_samples": dropped_count, "by_reason": by_reason, "classes": int(len(np.unique(class_index))),
            "classes_kept": kept_classes, "angle": angle, "rule": rule}
