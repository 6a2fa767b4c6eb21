"""The train job: check the paths, open the data, check or resume the run directory, run the loop, write the summary.

RUN_DIR's files are published atomically (a crash leaves the previous version, never half a file), and once
RUN_DIR is this run's, ``train.log`` records the whole job: settings, epochs, resumes, warnings, and the
error or interrupt that ends it.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Collection, Iterator
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from facecleaner.config import TrainConfig, load_config, resolve, resume_conflicts, save_config
from facecleaner.errors import CheckpointError, FaceCleanerError, InputError, Interrupted
from facecleaner.fileio import atomic_output, check_distinct, recover_outputs
from facecleaner.progress import logger
from facecleaner.sources import open_source, table_fingerprint
from facecleaner.sources.base import SubsetSource, matches_fingerprint
from facecleaner.sources.labels import encode_labels

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from facecleaner.scoring.health import Health
    from facecleaner.sources import Source

CONFIG_FILE = "config.json"
LOG_FILE = "train.log"
SUMMARY_FILE = "summary.json"


def train(data: str | Path, out: str | Path, config: TrainConfig | None = None, resume: bool = False,
          progress: bool = True, config_file: str | Path | None = None,
          given: Collection[str] | None = None, folds: int = 1) -> dict[str, Any]:
    """Train a sub-center ArcFace model on ``data``; writes ``out/model.pt`` and returns the summary.

    ``config_file`` is the ``--config`` file the settings came from, if any: it may not be one of RUN_DIR's
    files. With ``resume``, the settings named in ``given`` (by default, those in ``config`` that differ from
    ``TrainConfig()``'s) count as asked for, and any of them but ``epochs`` that differs from the run's is refused.
    ``folds`` > 1 trains that many models for held-out scoring instead (:mod:`facecleaner.jobs.folds`).

    Under torchrun every rank calls this: the backbone runs in DDP, the head is sharded by class, and
    rank 0 alone writes the run directory's files.
    """
    if folds > 1:
        from facecleaner.jobs.folds import train_folds

        return train_folds(data, out, folds, config, resume, progress, config_file, given)
    return train_run(data, out, config, resume, progress, config_file, given)


def train_run(data: str | Path, out: str | Path, config: TrainConfig | None = None, resume: bool = False,
              progress: bool = True, config_file: str | Path | None = None, given: Collection[str] | None = None,
              rows: np.ndarray | None = None) -> dict[str, Any]:
    """One model in ``out``: :func:`train` without folds; ``rows`` limits training to those samples of ``data``
    (the model still knows every identity of ``data``, so it can score every sample)."""
    run_dir = Path(out)
    config = config or TrainConfig()
    config.validate()
    _check_paths(Path(data), run_dir, config, config_file)
    with _RunLog(run_dir / LOG_FILE) as log, _ctrl_c_is_an_error(run_dir):
        return _train(data, run_dir, config, resume, progress, log, given, rows)


def _train(data: str | Path, run_dir: Path, config: TrainConfig, resume: bool, progress: bool,
           log: _RunLog, given: Collection[str] | None, rows: np.ndarray | None) -> dict[str, Any]:
    from facecleaner import distributed
    from facecleaner.jobs.folds import is_folded
    from facecleaner.model.checkpoint import CHECKPOINT_FILE, MODEL_FILE, ModelSpec
    from facecleaner.model.runtime import resolve_device
    from facecleaner.training.loop import METRICS_FILE, train_model

    world = distributed.init(resolve_device(config.device))
    if world.is_main:
        recover_outputs(run_files(run_dir))
    config_file = run_dir / CONFIG_FILE
    if is_folded(run_dir):
        raise InputError(f"{run_dir} holds the models of held-out training (train --folds)",
                         "give the same --folds to resume it, or choose another --out")
    if resume:
        if not (run_dir / CHECKPOINT_FILE).is_file():
            raise CheckpointError(f"{run_dir} has no {CHECKPOINT_FILE} to resume from",
                                  "start the run without --resume")
        if world.is_main:
            log.attach()
    elif (run_dir / CHECKPOINT_FILE).exists() or (run_dir / MODEL_FILE).exists():
        raise InputError(f"{run_dir} already holds a run", "pass --resume to continue it, or choose another --out")
    source = open_source(data)
    class_index, classes = encode_labels(source.table()["label"])
    if rows is not None:
        source, class_index = SubsetSource(source, rows), class_index[rows]
    table = source.table()
    if len(classes) < 2:
        raise InputError(f"{source.description} has only one identity",
                         "training separates identities: give a dataset with at least two")
    if len(classes) < world.world:
        raise InputError(f"{source.description} has {len(classes)} identities, fewer than the {world.world} "
                         "processes the head is sharded over", "run on fewer processes (torchrun --nproc-per-node)")
    fingerprint = table_fingerprint(table)
    if resume:
        resolved = _resumed_config(data, run_dir, config, given, table, fingerprint, len(classes))
    else:
        resolved = resolve(config, len(table), len(classes))
        if world.enabled and config.lr is None:  # the default LR follows the global batch (batch_size × world)
            resolved = replace(resolved, lr=resolved.lr * world.world)
    world.barrier()  # every rank has checked the run dir before rank 0 writes to it
    if world.is_main:
        if not resume:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / METRICS_FILE).unlink(missing_ok=True)
            log.attach()
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
        health = _guard(run_dir, source, class_index, resolved)
        summary |= {"health": health.as_dict(), "separated": health.separated,
                    "warning": "; ".join(health.warnings) or None}
        with atomic_output(run_dir / SUMMARY_FILE) as tmp:
            tmp.write_text(json.dumps(summary, indent=2) + "\n")
        for warning in health.warnings:
            logger.warning("%s", warning)
    return summary


def _guard(run_dir: Path, source: Source, class_index: np.ndarray, config: TrainConfig) -> Health:
    """The finished model's health on part of its training data, by the measure ``score`` records."""
    import torch

    from facecleaner.model.checkpoint import load_model
    from facecleaner.scoring.probe import probe_health

    return probe_health(load_model(run_dir), source, class_index, torch.device(config.device), config.precision,
                        config.workers, config.seed)


def _resumed_config(data: str | Path, run_dir: Path, asked: TrainConfig, given: Collection[str] | None,
                    table: pd.DataFrame, fingerprint: str, classes: int) -> TrainConfig:
    """The run's saved settings with ``asked``'s epochs, once the data and the settings asked for match it."""
    config_file = run_dir / CONFIG_FILE
    try:
        saved = json.loads(config_file.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{run_dir} has no readable {CONFIG_FILE}", "start a new run in another --out") from exc
    if not matches_fingerprint(table, saved.get("input_fingerprint"), fingerprint):
        raise CheckpointError(f"{data} is not the dataset {run_dir} was trained on",
                              "resume with the same DATA, or start a new run in another --out")
    saved_config = load_config(config_file)
    conflicts = resume_conflicts(asked, saved_config, len(table), classes, given)
    if conflicts:
        raise InputError(f"--resume with settings that differ from {config_file}: {', '.join(conflicts)}",
                         "give no settings but --epochs (the only one that may change), or start a new run in "
                         "another --out")
    return replace(saved_config, epochs=asked.epochs or saved_config.epochs)


def _check_paths(data: Path, run_dir: Path, config: TrainConfig, config_file: str | Path | None) -> None:
    """Refuse, before any work, a RUN_DIR that is DATA (or the folder of its train.rec) and a run file that is
    one of the inputs."""
    inputs: dict[str, str | Path | None] = {"DATA": data, "--config": config_file,
                                            "--init-backbone": config.init_backbone}
    if data.suffix.lower() == ".rec":
        inputs.update({"DATA's folder": data.parent, "DATA's index": data.with_suffix(".idx")})
    elif (data / "train.rec").is_file():
        inputs.update({"DATA's train.rec": data / "train.rec", "DATA's train.idx": data / "train.idx"})
    outputs: dict[str, str | Path | None] = {"--out": run_dir}
    outputs.update({f"--out ({path.name})": path for path in run_files(run_dir)})
    check_distinct(inputs, outputs)


def run_files(run_dir: Path) -> list[Path]:
    """Every file train writes in RUN_DIR."""
    from facecleaner.model.checkpoint import CHECKPOINT_FILE, MODEL_FILE
    from facecleaner.training.loop import METRICS_FILE

    return [run_dir / name for name in (CONFIG_FILE, LOG_FILE, METRICS_FILE, CHECKPOINT_FILE, MODEL_FILE,
                                        SUMMARY_FILE)]


@contextlib.contextmanager
def _ctrl_c_is_an_error(run_dir: Path) -> Iterator[None]:
    """Ctrl-C outside the training steps (which checkpoint first) ends with one line saying what to do next."""
    from facecleaner.model.checkpoint import CHECKPOINT_FILE

    try:
        yield
    except KeyboardInterrupt:
        if (run_dir / CHECKPOINT_FILE).is_file():
            raise Interrupted(f"interrupted by Ctrl-C; the last checkpoint is in {run_dir}",
                              "run the same command with --resume to continue") from None
        raise Interrupted("interrupted by Ctrl-C before the first checkpoint",
                          "run the same command again to start over") from None


class _RunLog:
    """``RUN_DIR/train.log``: once attached, the job's log lines go there too, then the error that ends it
    (only there: the CLI prints that on stderr itself)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.handler: logging.Handler | None = None
        self._level = logger.level

    def attach(self) -> None:
        self.handler = logging.FileHandler(self.path, encoding="utf-8")
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(self.handler)
        if logger.getEffectiveLevel() > logging.INFO:
            logger.setLevel(logging.INFO)

    def __enter__(self) -> _RunLog:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: Any) -> None:
        if self.handler is None:
            return
        if error is not None:
            known = isinstance(error, FaceCleanerError)
            message = str(error) if known else f"{kind.__name__}: {error}"
            self.handler.handle(logger.makeRecord(logger.name, logging.ERROR, __file__, 0, message, None,
                                                  None if known else (kind, error, trace)))
        logger.removeHandler(self.handler)
        self.handler.close()
        logger.setLevel(self._level)
