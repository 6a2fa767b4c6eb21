"""The score job: embed every sample, vote the dominant sub-centers, write the scores manifest."""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Any

import numpy as np

from facecleaner.errors import FaceCleanerError, InputError, TooManyBadSamples
from facecleaner.fileio import atomic_output
from facecleaner.jobs.prune import DEFAULT_ANGLE
from facecleaner.manifests.io import manifest_metadata, sibling, write_manifest
from facecleaner.progress import logger
from facecleaner.sources import open_source, source_root, table_fingerprint
from facecleaner.sources.labels import lookup_labels


def score(run_dir: str | Path, data: str | Path, out: str | Path, batch_size: int = 256, device: str = "auto",
          precision: str = "auto", workers: int | None = None, embeddings: str | Path | None = None,
          max_bad_fraction: float = 0.01, progress: bool = True) -> dict[str, Any]:
    """Write the scores manifest of ``data`` under the model in ``run_dir``; returns the summary.

    Under torchrun each rank embeds a contiguous share of the samples; rank 0 gathers the measurements,
    votes the dominant sub-centers over all of them and writes the one manifest, the same as one process.
    """
    from facecleaner import distributed
    from facecleaner.config import default_workers
    from facecleaner.manifests.classes import classes_table
    from facecleaner.model.checkpoint import load_model
    from facecleaner.model.runtime import resolve_device, resolve_precision
    from facecleaner.scoring.measure import (
        measure,
        merge_measurements,
        scores_table,
        share_of_batches,
        summarize,
        take_rows,
    )
    from facecleaner.sources.dataset import DecodedImages

    if batch_size < 1:
        raise InputError("--batch-size must be at least 1", "give a positive batch size")
    model = load_model(Path(run_dir))
    source = open_source(data)
    table = source.table()
    spec = model.spec
    class_index = lookup_labels(table["label"], spec.classes)
    unknown = class_index < 0
    if unknown.any():
        examples = ", ".join(repr(v) for v in table["label"][unknown].unique()[:5].tolist())
        raise InputError(f"{int(unknown.sum())} samples have labels the model was not trained on ({examples})",
                         "score the dataset the model was trained on, or train on this one first")
    torch_device = resolve_device(device)
    chosen_precision = resolve_precision(precision, torch_device)
    out = Path(out)
    if embeddings is not None and Path(embeddings).suffix != ".npy":
        raise InputError(f"--embeddings {embeddings} must end in .npy", "embeddings are saved as a float16 .npy array")
    world = distributed.init(torch_device)
    torch_device = world.device(torch_device)
    with contextlib.ExitStack() as stack:
        embeddings_file = (stack.enter_context(atomic_output(embeddings))
                           if embeddings is not None and world.is_main else None)
        embeddings_store = _embeddings_memmap(embeddings_file, len(table), spec.embedding_size)
        share = share_of_batches(len(table), batch_size, world.world, world.rank) if world.enabled else None
        collected = _CollectedRows() if world.enabled and embeddings is not None else None
        raw = measure(model.backbone, model.head, DecodedImages(source, spec.image_size), class_index, torch_device,
                      chosen_precision, batch_size, default_workers(torch_device) if workers is None else workers,
                      progress and world.is_main, collected if world.enabled else embeddings_store, batches=share)
        if world.enabled:
            rows = np.array([i for batch in share for i in batch], dtype=np.int64)
            part = take_rows(raw, rows)
            part["embeddings"] = collected.parts if collected is not None else []
            parts = world.gather_objects(part)
            if world.is_main:
                raw = merge_measurements(parts, len(table), spec.subcenters)
                for gathered in parts:
                    for index, values in gathered["embeddings"]:
                        embeddings_store[index] = values
        unreadable = world.broadcast_object(int((~raw.readable).sum()) if world.is_main else None)
        if unreadable > max_bad_fraction * len(table):
            raise TooManyBadSamples(f"{unreadable} of {len(table)} samples are unreadable "
                                    f"(more than --max-bad-fraction {max_bad_fraction})",
                                    "fix or remove the broken files, or raise --max-bad-fraction")
        if not world.is_main:
            stack.close()
            return _follow_rank0(world)
        try:
            scores = summarize(raw, class_index, len(spec.classes))
            manifest = scores_table(table, class_index, scores)
            meta = manifest_metadata(
                "scores", model={"backbone": spec.backbone, "subcenters": spec.subcenters, "margin": spec.margin,
                                 "scale": spec.scale, "embedding_size": spec.embedding_size,
                                 "image_size": spec.image_size},
                num_classes=len(spec.classes), checkpoint_sha256=model.sha256, input=source.description,
                input_fingerprint=table_fingerprint(table), input_root=source_root(source))
            write_manifest(out, manifest, meta)
            write_manifest(sibling(out, "classes"),
                           classes_table(class_index, manifest["label"], raw.readable,
                                         scores.nearest, scores.dominant[class_index], spec.subcenters),
                           meta | {"kind": "classes"})
            if embeddings_store is not None:
                embeddings_store.flush()
        except BaseException as exc:
            world.broadcast_object({"error": str(exc)})
            raise
    angles = scores.angle[raw.readable]
    duplicates = int(table["path"].dropna().duplicated().sum())
    if duplicates:
        logger.warning("%d rows repeat a path already listed: each is scored as its own sample", duplicates)
    summary = {
        "scores": str(out), "samples": len(table), "classes": len(spec.classes), "unreadable": unreadable,
        "resized": int(raw.resized.sum()),
        "duplicate_paths": duplicates,
        "median_angle": float(np.median(angles)) if len(angles) else math.nan,
        "over_75": int((angles > DEFAULT_ANGLE).sum()),
        "non_dominant": int((scores.nearest[raw.readable] != scores.dominant[class_index][raw.readable]).sum()),
        "device": str(torch_device), "precision": chosen_precision,
    }
    if world.enabled:
        summary["world_size"] = world.world
    if len(angles) and summary["median_angle"] > DEFAULT_ANGLE:
        logger.warning("median angle %.0f° is over %.0f°: the model has not separated the classes, and pruning "
                       "at %.0f° would drop most samples; retrain (see `facecleaner train --help`)",
                       summary["median_angle"], DEFAULT_ANGLE, DEFAULT_ANGLE)
    return world.broadcast_object(summary)


class _CollectedRows:
    """Stands in for the embeddings memmap on ranks other than 0: keeps (rows, values) to send to rank 0."""

    def __init__(self) -> None:
        self.parts: list[tuple[np.ndarray, np.ndarray]] = []

    def __setitem__(self, rows: np.ndarray, values: np.ndarray) -> None:
        self.parts.append((np.asarray(rows), values))


def _follow_rank0(world: Any) -> dict[str, Any]:
    """A non-zero rank's result: rank 0's summary, or rank 0's failure raised here too."""
    result = world.broadcast_object(None)
    if "error" in result:
        raise FaceCleanerError(f"rank 0 failed: {result['error']}", "see rank 0's error above")
    return result


def _embeddings_memmap(path: Path | None, rows: int, dim: int) -> np.memmap | None:
    """A float16 (rows, dim) .npy memmap at ``path`` (the temporary name of --embeddings), or None."""
    if path is None:
        return None
    return np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(rows, dim))
