"""The train job: open the data, check or resume the run directory, run the loop, write the summary."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from facecleaner.config import TrainConfig, load_config, resolve, save_config
from facecleaner.errors import CheckpointError, InputError
from facecleaner.progress import logger
from facecleaner.sources import open_source, table_fingerprint
from facecleaner.sources.labels import encode_labels

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
