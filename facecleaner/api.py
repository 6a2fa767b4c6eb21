"""The public API: each CLI subcommand's whole job as a function; the only module wiring layers together.

Every function validates its inputs before heavy work, raises :class:`facecleaner.errors.FaceCleanerError`
for anything the user can fix, and returns a JSON-ready summary (also saved as ``summary.json`` by train).
"""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from facecleaner.config import (
    DEMO_EPOCHS,
    DEMO_IDENTITIES,
    DEMO_IMAGES_PER_IDENTITY,
    DEMO_LR,
    TrainConfig,
    load_config,
    resolve,
    save_config,
)
from facecleaner.errors import CheckpointError, FaceCleanerError, InputError, PruneRefused, TooManyBadSamples
from facecleaner.fileio import atomic_output
from facecleaner.manifests.io import (
    ROW_GROUP_ROWS,
    manifest_metadata,
    manifest_writer,
    read_manifest,
    sibling,
    write_manifest,
)
from facecleaner.manifests.schema import NEW_LABEL, REASON, REASONS, STATUS_OK
from facecleaner.progress import logger
from facecleaner.sources import open_source, source_root, table_fingerprint
from facecleaner.sources.labels import encode_labels, lookup_labels

DEFAULT_ANGLE = 75.0
#: What prune reads whole; every other column is streamed through batch by batch.
DECISION_COLUMNS = ("class_index", "label", "status", "is_dominant", "angle", "nearest_subcenter",
                    "dominant_subcenter")
SUMMARY_FILE = "summary.json"


def train(data: str | Path, out: str | Path, config: TrainConfig | None = None, resume: bool = False,
          progress: bool = True) -> dict[str, Any]:
    """Train a sub-center ArcFace model on ``data``; writes ``out/model.pt`` and returns the summary.

    Under torchrun every rank calls this: the backbone runs in DDP, the head is sharded by class, and
    rank 0 alone writes the run directory's files.
    """
    from facecleaner import distributed
    from facecleaner.model.checkpoint import CHECKPOINT_FILE, MODEL_FILE, ModelSpec
    from facecleaner.model.runtime import resolve_device
    from facecleaner.training.loop import train_model

    run_dir = Path(out)
    config = config or TrainConfig()
    config.validate()
    world = distributed.init(resolve_device(config.device))
    source = open_source(data)
    table = source.table()
    class_index, classes = encode_labels(table["label"])
    if len(classes) < 2:
        raise InputError(f"{source.description} has only one identity",
                         "training separates identities: give a dataset with at least two")
    if len(classes) < world.world:
        raise InputError(f"{source.description} has {len(classes)} identities, fewer than the {world.world} "
                         "processes the head is sharded over", "run on fewer processes (torchrun --nproc-per-node)")
    fingerprint = table_fingerprint(table)
    config_file = run_dir / "config.json"
    if resume:
        if not (run_dir / CHECKPOINT_FILE).is_file():
            raise CheckpointError(f"{run_dir} has no {CHECKPOINT_FILE} to resume from",
                                  "start the run without --resume")
        try:
            saved = json.loads(config_file.read_text())
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{run_dir} has no readable config.json", "start a new run in another --out") from exc
        if saved.get("input_fingerprint") != fingerprint:
            raise CheckpointError(f"{data} is not the dataset {run_dir} was trained on",
                                  "resume with the same DATA, or start a new run in another --out")
        saved_config = load_config(config_file)
        resolved = replace(saved_config, epochs=config.epochs or saved_config.epochs)
    else:
        if (run_dir / CHECKPOINT_FILE).exists() or (run_dir / MODEL_FILE).exists():
            raise InputError(f"{run_dir} already holds a run",
                             "pass --resume to continue it, or choose another --out")
        resolved = resolve(config, len(table), len(classes))
        if world.enabled and config.lr is None:  # the default LR follows the global batch (batch_size × world)
            resolved = replace(resolved, lr=resolved.lr * world.world)
    world.barrier()  # every rank has checked the run dir before rank 0 writes to it
    if world.is_main:
        if not resume:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "metrics.jsonl").unlink(missing_ok=True)
        save_config(resolved, config_file, {"input_fingerprint": fingerprint, "input": source.description,
                                             "samples": len(table), "classes": len(classes),
                                             **({"world_size": world.world} if world.enabled else {})})
    world.barrier()
    spec = ModelSpec(backbone=resolved.backbone, embedding_size=resolved.embedding_size,
                     image_size=resolved.image_size, subcenters=resolved.subcenters, scale=resolved.scale,
                     margin=resolved.margin, classes=classes, dropout=resolved.dropout)
    logger.info("training %s on %d samples of %d identities (%s, %s, %d epochs, scale %.1f)", resolved.backbone,
                len(table), len(classes), resolved.device, resolved.precision, resolved.epochs, resolved.scale)
    result = train_model(source, class_index, spec, resolved, run_dir, resume=resume, progress=progress,
                         world=world)
    summary = {**asdict(result), "config": asdict(resolved)}
    if world.enabled:
        summary["world_size"] = world.world
    if world.is_main:
        (run_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    if result.warning and world.is_main:
        logger.warning("%s", result.warning)
    return summary


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


def export(manifest: str | Path, fmt: str, out: str | Path, link: str = "hardlink", label_column: str = "new_label",
           progress: bool = True) -> dict[str, Any]:
    """Write a clean manifest in a format other trainers read: ``rec``, ``folder``, ``csv`` or ``lst``."""
    from facecleaner.exports import export_manifest

    return export_manifest(Path(manifest), fmt, Path(out), link=link, label_column=label_column, progress=progress)


def _embeddings_memmap(path: Path | None, rows: int, dim: int) -> np.memmap | None:
    """A float16 (rows, dim) .npy memmap at ``path`` (the temporary name of --embeddings), or None."""
    if path is None:
        return None
    return np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(rows, dim))


def demo(out: str | Path = "facecleaner-demo", identities: int = DEMO_IDENTITIES,
         images_per_identity: int = DEMO_IMAGES_PER_IDENTITY, image_size: int = 32, epochs: int = DEMO_EPOCHS,
         lr: float = DEMO_LR, seed: int = 0, progress: bool = True) -> dict[str, Any]:
    """The embedded default: generate a noisy face set with known noise, train, score, prune, evaluate.

    Runs on the CPU with the tiny backbone and the demo recipe of :mod:`facecleaner.config`; reports
    precision, recall and F1 of the dropped set against the injected noise, and the share of clean samples
    kept, for the paper's rule and ``--drop-non-dominant``.
    """
    import pandas as pd

    from facecleaner.pruning.evaluate import kept_detection_metrics
    from facecleaner.sources.synthetic import generate_noisy_faces

    root = Path(out)
    if (root / "run").exists():
        raise InputError(f"{root} already holds a demo run", "remove it or give another --out")
    logger.info("generating %d identities × %d images with planted noise in %s", identities,
                images_per_identity, root / "data")
    manifest = generate_noisy_faces(root / "data", identities=identities, images_per_identity=images_per_identity,
                                    image_size=image_size, seed=seed, progress=progress)
    config = TrainConfig(backbone="tiny", image_size=image_size, epochs=epochs, lr=lr, device="cpu", seed=seed)
    trained = train(manifest, root / "run", config, progress=progress)
    scored = score(root / "run", manifest, root / "scores.parquet", device="cpu", progress=progress)
    truth = pd.read_parquet(manifest, columns=["is_noise"])["is_noise"].to_numpy()
    rules = {}
    for name, strict in (("paper", False), ("drop_non_dominant", True)):
        clean_path = root / ("clean_strict.parquet" if strict else "clean.parquet")
        pruned = prune(root / "scores.parquet", clean_path, drop_non_dominant=strict, force=True)
        kept = pd.read_parquet(clean_path, columns=["sample_id"])["sample_id"].to_numpy()
        rules[name] = {**kept_detection_metrics(kept, truth), "clean": pruned["clean"],
                       "dropped_file": pruned["dropped"]}
    summary = {"out": str(root), "samples": len(truth), "identities": identities,
               "train": {key: trained[key] for key in ("final_accuracy", "final_mean_angle", "epochs",
                                                       "images_per_second", "separated")},
               "median_angle": scored["median_angle"], "rules": rules}
    (root / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    return summary
