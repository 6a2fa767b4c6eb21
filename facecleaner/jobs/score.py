"""The score job: embed every sample, vote the dominant sub-centers, write the scores manifest.

Each batch's measurements go to a work area beside ``--out`` as they are made (:mod:`facecleaner.scoring.workarea`),
so a killed run continues with ``--resume``; the manifest, its classes file and the embeddings are made from the
work area at the end and published together. Under torchrun each rank measures a share of the batches left and
rank 0 writes the outputs from every rank's parts, the same as one process.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from facecleaner.errors import FaceCleanerError, InputError, Interrupted, TooManyBadSamples
from facecleaner.fileio import atomic_outputs, check_distinct, check_file_outputs, fault_point, recover_outputs
from facecleaner.jobs.folds import is_folded, score_folds
from facecleaner.manifests.io import (
    input_sibling,
    manifest_metadata,
    new_run_id,
    parquet_writer,
    read_metadata,
    sibling,
    write_table,
)
from facecleaner.progress import logger
from facecleaner.pruning.rules import DEFAULT_ANGLE
from facecleaner.sources import open_source, source_root, table_fingerprint
from facecleaner.sources.base import check_decoding_options, too_many_unreadable
from facecleaner.sources.labels import lookup_labels

if TYPE_CHECKING:
    import pandas as pd

    from facecleaner.distributed import Dist
    from facecleaner.model.checkpoint import LoadedModel
    from facecleaner.scoring.merge import ScoresOutput
    from facecleaner.scoring.workarea import WorkArea
    from facecleaner.sources import Source

T = TypeVar("T")


def score(run_dir: str | Path, data: str | Path, out: str | Path, batch_size: int = 256, device: str = "auto",
          precision: str = "auto", workers: int | None = None, embeddings: str | Path | None = None,
          max_bad_fraction: float = 0.01, progress: bool = True, resume: bool = False, *,
          judge: bool = True) -> dict[str, Any]:
    """Write the scores manifest of ``data`` under the model in ``run_dir``; returns the summary.

    With ``resume``, the measurements a killed or interrupted run kept beside ``out`` are used and only the rest
    is measured; without it, such leftovers are discarded. A ``run_dir`` of ``train --folds`` gives held-out
    scores (:mod:`facecleaner.jobs.folds`). ``judge=False`` keeps the model-health warnings off the log (held-out
    scoring judges the merged scores, not each fold's).
    """
    from facecleaner import distributed
    from facecleaner.config import default_workers
    from facecleaner.model.checkpoint import check_finite_weights, load_model
    from facecleaner.model.runtime import resolve_device, resolve_precision
    from facecleaner.scoring.measure import batch_rows, measure_batches
    from facecleaner.scoring.workarea import WorkArea, batches_per_part
    from facecleaner.sources.dataset import DecodedImages

    run_dir, data, out = Path(run_dir), Path(data), Path(out)
    embeddings = Path(embeddings) if embeddings is not None else None
    _check_options(batch_size, workers, max_bad_fraction, embeddings)
    if is_folded(run_dir):  # held-out scoring: each fold's model, then each sample from the one that left it out
        check_distinct({"DATA": data, "RUN_DIR": run_dir},
                       {"--out": out, "--out (its classes file)": sibling(out, "classes"), "--embeddings": embeddings})
        return score_folds(run_dir, data, out, embeddings, resume, batch_size=batch_size, device=device,
                           precision=precision, workers=workers, max_bad_fraction=max_bad_fraction,
                           progress=progress)
    outputs = {"--out": out, "--out (its classes file)": sibling(out, "classes"), "--embeddings": embeddings}
    check_distinct(_inputs(run_dir, data), outputs)
    check_file_outputs(outputs)
    model = load_model(run_dir)
    check_finite_weights({**{f"backbone.{k}": v for k, v in model.backbone.state_dict().items()},
                          "head.weight": model.head.weight.detach()}, f"the model in {run_dir}",
                         ", or score an earlier model")
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
    world = distributed.init(torch_device)
    torch_device = world.device(torch_device)
    count = len(table)
    area = WorkArea(out)
    stamp = {"checkpoint_sha256": model.sha256, "input_fingerprint": table_fingerprint(table), "rows": count,
             "batch_size": batch_size, "precision": chosen_precision, "device": torch_device.type,
             "embeddings": "kept" if embeddings is not None else "none"}

    def start() -> list[int]:
        recover_outputs([p for p in outputs.values() if p is not None])
        area.start(stamp, resume, (count, spec.embedding_size) if embeddings is not None else None)
        return area.finished_batches()

    finished = on_rank0(world, start)
    resumed = sum(len(batch_rows(b, batch_size, count)) for b in finished)
    if finished and world.is_main:
        logger.info("resuming from %s: %d of %d samples already measured", area.folder, resumed, count)
    remaining = sorted(set(range(math.ceil(count / batch_size))) - set(finished))
    first, end = distributed.shard_range(len(remaining), world.world, world.rank)
    mine = remaining[first:end]
    writer = area.writer(batches_per_part(batch_size, len(mine)), embeddings is not None)
    try:
        measured = measure_batches(model.backbone, model.head, DecodedImages(source, spec.image_size), class_index,
                                   torch_device, chosen_precision, [batch_rows(b, batch_size, count) for b in mine],
                                   default_workers(torch_device) if workers is None else workers,
                                   embeddings is not None, progress and world.is_main)
        for done, (batch, measurements) in enumerate(zip(mine, measured, strict=True), start=1):
            writer.add(batch, measurements)
            fault_point(f"score batch {done}")  # crash tests only
        writer.flush()
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted by Ctrl-C; the measurements made so far are kept in {area.folder}",
                          "run the same command with --resume to continue") from None
    except BaseException:  # a full disk, out of memory: what was measured is kept too
        logger.warning("stopped: the measurements made so far are kept in %s; run the same command with --resume "
                       "to continue", area.folder)
        raise
    world.barrier()

    def finish() -> dict[str, Any]:
        try:
            summary = _write_outputs(area, model, source, table, class_index, out, embeddings, max_bad_fraction,
                                     judge, math.ceil(count / batch_size))
        except TooManyBadSamples:
            area.remove()  # the same files give the same count again: nothing worth resuming
            raise
        area.remove()
        return {**summary, "resumed": resumed, "device": str(torch_device), "precision": chosen_precision,
                **({"world_size": world.world} if world.enabled else {})}

    return on_rank0(world, finish)


def _write_outputs(area: WorkArea, model: LoadedModel, source: Source, table: pd.DataFrame, class_index: np.ndarray,
                   out: Path, embeddings: Path | None, max_bad_fraction: float, judge: bool,
                   batches: int) -> dict[str, Any]:
    """Rank 0's end of the run: the parts of every rank → the vote, the angles, and the three outputs, streamed
    (:mod:`facecleaner.scoring.merge`)."""
    from facecleaner.scoring.merge import merge_parts, tally

    spec = model.spec
    count = len(table)
    area.check_complete(batches)
    found = tally(area, count)
    if len(found.reasons) > max_bad_fraction * count:
        raise too_many_unreadable(source, sorted(found.reasons), found.reasons.get, max_bad_fraction)
    scores = merge_parts(area, source, table, class_index, len(spec.classes), spec.subcenters, found)
    if not np.isfinite(scores.angle[scores.readable]).any():
        raise TooManyBadSamples(f"none of the {count} samples gave a finite angle (each is unreadable or has a "
                                "non-finite embedding), so there is no median angle and nothing to prune by",
                                "check the images and the model (with --precision fp16/bf16, try fp32)")
    meta = manifest_metadata(
        "scores", model={"backbone": spec.backbone, "subcenters": spec.subcenters, "margin": spec.margin,
                         "scale": spec.scale, "embedding_size": spec.embedding_size, "image_size": spec.image_size},
        num_classes=len(spec.classes), checkpoint_sha256=model.sha256, input=source.description,
        input_fingerprint=table_fingerprint(table), input_root=source_root(source))
    summary = finish_scores(scores, meta, out, embeddings, area.take_embeddings, judge)
    paths = pa.array(table["path"], from_pandas=True)
    duplicates = len(paths) - paths.null_count - pc.count_distinct(paths, mode="only_valid").as_py()
    if duplicates:
        logger.warning("%d rows repeat a path already listed: each is scored as its own sample", duplicates)
    if found.non_finite:
        logger.warning("%d samples gave a non-finite embedding and are recorded as unreadable (with --precision "
                       "fp16/bf16 an overflow does this: try fp32)", found.non_finite)
    return {**summary, "classes": len(spec.classes), "non_finite": found.non_finite, "resized": found.resized,
            "duplicate_paths": duplicates}


def finish_scores(scores: ScoresOutput, meta: dict[str, Any], out: Path, embeddings: Path | None,
                  write_embeddings: Callable[[Path], None], judge: bool = True) -> dict[str, Any]:
    """Judge a finished scores manifest — model health and the suggested threshold, from its own angles — record
    both in its metadata, and publish it with its classes table (and the embeddings) together, its rows written
    as they stream; returns the summary every score shares."""
    from facecleaner.pruning.threshold import choose_threshold
    from facecleaner.scoring.health import assess

    readable = scores.readable
    angle = scores.angle[readable].astype(np.float64)
    auto = choose_threshold(angle, fallback=DEFAULT_ANGLE)
    health = assess(angle, scores.angle_other[readable].astype(np.float64), auto.noise_share, auto.angle)
    meta = meta | {"run_id": new_run_id(), "health": health.as_dict(), "auto_threshold": auto.as_dict()}
    paths = [out, sibling(out, "classes")] + ([embeddings] if embeddings is not None else [])
    with atomic_outputs(paths) as temps:
        _write_stream(temps[0], scores.batches(), meta | {"rows": scores.rows})
        write_table(temps[1], scores.classes, meta | {"kind": "classes", "rows": scores.classes.num_rows})
        if embeddings is not None:
            write_embeddings(temps[2])
    for warning in health.warnings if judge else ():
        logger.warning("%s", warning)
    return {"scores": str(out), "samples": scores.rows, "unreadable": int((~readable).sum()),
            "median_angle": health.median_angle, "over_75": int((angle > DEFAULT_ANGLE).sum()),
            "non_dominant": scores.non_dominant, "suggested_angle": auto.angle,
            "auto_threshold": auto.as_dict(), "health": health.as_dict()}


def _write_stream(path: Path, batches: Iterator[pa.Table], meta: dict[str, Any]) -> None:
    """Write a stream of tables (one schema) as one Parquet file, opened on the first table."""
    first = next(batches)
    with parquet_writer(path, first.schema, meta) as write:
        write(first)
        for batch in batches:
            write(batch)


def _check_options(batch_size: int, workers: int | None, max_bad_fraction: float, embeddings: Path | None) -> None:
    """The API's own check of what the CLI's option types check."""
    check_decoding_options(batch_size, workers, max_bad_fraction, "samples")
    if embeddings is not None and embeddings.suffix != ".npy":
        raise InputError(f"--embeddings {embeddings} must end in .npy", "embeddings are saved as a float16 .npy array")


def _inputs(run_dir: Path, data: Path) -> dict[str, Path]:
    """What score reads: the model, DATA, a RecordIO's index, and the classes file beside one of our manifests."""
    from facecleaner.model.checkpoint import MODEL_FILE

    inputs = {"model": run_dir / MODEL_FILE if run_dir.is_dir() else run_dir, "DATA": data}
    rec = data / "train.rec" if data.is_dir() else data
    if rec.suffix.lower() == ".rec" and rec.is_file():
        inputs["DATA's RecordIO"] = rec
        inputs["DATA's index"] = rec.with_suffix(".idx")
    elif data.suffix.lower() == ".parquet":
        try:
            read_metadata(data)
            inputs["DATA's classes file"] = input_sibling(data, "classes")
        except InputError:
            pass  # not one of our manifests: it has no classes file of ours
    return inputs


def on_rank0(world: Dist, step: Callable[[], T]) -> T:
    """Run ``step`` on rank 0 only and give its result to every rank; its failure fails every rank."""
    if not world.enabled:
        return step()
    if world.is_main:
        try:
            result = step()
        except BaseException as exc:
            world.broadcast_object({"error": str(exc)})
            raise
        world.broadcast_object({"result": result})
        return result
    outcome = world.broadcast_object(None)
    if "error" in outcome:
        raise FaceCleanerError(f"rank 0 failed: {outcome['error']}", "see rank 0's error above")
    return outcome["result"]
