"""Held-out scoring: ``train --folds k`` trains k models, each without one fold of every class; ``score`` then takes
each sample's angles from the model that never saw it.

A model pulls the noisy images it trains on towards their labels (memorisation: with few images per identity
or many epochs, flipped images end well inside 75°). A model that did not train on an image cannot have done
that to it. It costs k trainings (each on (k−1)/k of the data) and k scoring passes: every model scores every
sample, so that each one's dominant sub-centers are voted by all of a class's images, and each sample keeps the
row of the model that left it out.

RUN_DIR holds ``folds.json`` (k, the seed, the input's fingerprint), ``folds.npy`` (each sample's fold) and one
ordinary run directory per fold, ``fold-1`` … ``fold-k``. ``--resume`` skips finished folds and resumes the one
that was running; ``score --resume`` keeps the folds already scored in ``OUT.folds/``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from facecleaner.config import TrainConfig
from facecleaner.errors import CheckpointError, InputError
from facecleaner.fileio import atomic_output, check_distinct
from facecleaner.manifests.io import manifest_metadata, read_metadata
from facecleaner.progress import logger
from facecleaner.sources import open_source, table_fingerprint
from facecleaner.sources.base import matches_fingerprint
from facecleaner.sources.labels import encode_labels

FOLDS_FILE = "folds.json"
ASSIGNMENT_FILE = "folds.npy"
MAX_FOLDS = 20
WORK_SUFFIX = ".folds"
#: What the held-out manifest's metadata takes from the folds' own (the model's settings, the input).
INHERITED = ("model", "num_classes", "input", "input_fingerprint", "input_root")


def is_folded(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` holds the k models of ``train --folds``."""
    return (Path(run_dir) / FOLDS_FILE).is_file()


def assign_folds(class_index: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Each sample's fold (int8, 0..folds-1): within every class its samples, in a seeded random order, are dealt
    round-robin, so each fold holds a share of every class and each model trains on (k−1)/k of each class."""
    order = np.random.default_rng(seed).permutation(len(class_index))
    order = order[np.argsort(class_index[order], kind="stable")]  # grouped by class, random within
    starts = np.searchsorted(class_index[order], class_index[order], side="left")
    fold = np.empty(len(class_index), dtype=np.int8)
    fold[order] = (np.arange(len(order)) - starts) % folds
    return fold


def fold_dir(run_dir: Path, fold: int) -> Path:
    return run_dir / f"fold-{fold + 1}"


def train_folds(data: str | Path, out: str | Path, folds: int, config: TrainConfig | None = None,
                resume: bool = False, progress: bool = True, config_file: str | Path | None = None,
                given: Collection[str] | None = None) -> dict[str, Any]:
    """Train the ``folds`` models of held-out scoring into ``out``; returns the summary (one entry per fold)."""
    from facecleaner import distributed
    from facecleaner.jobs.score import on_rank0
    from facecleaner.jobs.train import SUMMARY_FILE, train_run
    from facecleaner.model.checkpoint import CHECKPOINT_FILE
    from facecleaner.model.runtime import resolve_device

    if not 2 <= folds <= MAX_FOLDS:
        raise InputError(f"--folds {folds} is outside 2..{MAX_FOLDS}", "5 is the usual choice")
    config = config or TrainConfig()
    run_dir = Path(out)
    check_distinct({"DATA": data}, {"--out": run_dir})
    source = open_source(data)
    table = source.table()
    class_index, _ = encode_labels(table["label"])
    record = {"folds": folds, "seed": config.seed, "input_fingerprint": table_fingerprint(table),
              "samples": len(table)}
    world = distributed.init(resolve_device(config.device))
    assignment = on_rank0(world, lambda: _start(run_dir, record, class_index, resume))
    summaries = []
    for fold in range(folds):
        fold_run = fold_dir(run_dir, fold)
        if (fold_run / SUMMARY_FILE).is_file():  # written last: the fold is finished
            summaries.append(json.loads((fold_run / SUMMARY_FILE).read_text()))
            continue
        logger.info("fold %d of %d: training on %d samples, %d held out", fold + 1, folds,
                    int((assignment != fold).sum()), int((assignment == fold).sum()))
        summaries.append(train_run(data, fold_run, config, (fold_run / CHECKPOINT_FILE).is_file(), progress,
                                   config_file, given, rows=np.flatnonzero(assignment != fold)))
    summary = {"run_dir": str(run_dir), "folds": folds, "samples": len(table), "fold_runs": summaries,
               "separated": all(s.get("separated", False) for s in summaries)}
    if world.is_main:
        with atomic_output(run_dir / SUMMARY_FILE) as tmp:
            tmp.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _start(run_dir: Path, record: dict[str, Any], class_index: np.ndarray, resume: bool) -> np.ndarray:
    """The fold of each sample: written to a new RUN_DIR, or read back (and checked) when resuming."""
    if resume:
        try:
            saved = json.loads((run_dir / FOLDS_FILE).read_text())
            assignment = np.load(run_dir / ASSIGNMENT_FILE, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{run_dir} holds no held-out training to resume ({FOLDS_FILE})",
                                  "start the run without --resume") from exc
        differ = [f"{key} {record[key]} (the run has {saved.get(key)})" for key in record
                  if saved.get(key) != record[key]]
        if differ or len(assignment) != len(class_index):
            raise InputError(f"--resume of {run_dir} with other data or folds: "
                             f"{', '.join(differ) or 'sample count'}",
                             "resume with the same DATA, --folds and --seed, or start a new run in another --out")
        return assignment
    if run_dir.exists() and any(run_dir.iterdir()):
        raise InputError(f"{run_dir} already holds files", "pass --resume to continue it, or choose another --out")
    run_dir.mkdir(parents=True, exist_ok=True)
    assignment = assign_folds(class_index, record["folds"], record["seed"])
    with atomic_output(run_dir / ASSIGNMENT_FILE) as tmp, open(tmp, "wb") as handle:
        np.save(handle, assignment)
    with atomic_output(run_dir / FOLDS_FILE) as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n")
    return assignment


def score_folds(run_dir: str | Path, data: str | Path, out: str | Path, embeddings: str | Path | None = None,
                resume: bool = False, **options: Any) -> dict[str, Any]:
    """The held-out scores manifest of ``data``: every fold's model scores every sample into ``OUT.folds/``, and
    each sample keeps the row (and embedding) of the model that did not train on it, with its ``fold``."""
    from facecleaner import distributed
    from facecleaner.jobs.score import finish_scores, on_rank0, score
    from facecleaner.model.runtime import resolve_device
    from facecleaner.scoring.measure import NON_FINITE
    from facecleaner.scoring.merge import ScoresOutput

    run_dir, out = Path(run_dir), Path(out)
    world = distributed.init(resolve_device(options.get("device", "auto")))
    record = json.loads((run_dir / FOLDS_FILE).read_text())
    assignment = np.load(run_dir / ASSIGNMENT_FILE, allow_pickle=False)
    table = open_source(data).table()
    if not matches_fingerprint(table, record["input_fingerprint"]):
        raise InputError(f"{data} is not the dataset the folds of {run_dir} were drawn from",
                         "held-out scores need the data the folds were trained on; score that DATA")
    work = out.with_name(out.name + WORK_SUFFIX)

    def prepare() -> None:
        if work.exists() and not resume:
            logger.warning("starting over: removed the folds an earlier run scored in %s (--resume would have "
                           "kept them)", work)
            shutil.rmtree(work)
        work.mkdir(parents=True, exist_ok=True)

    on_rank0(world, prepare)
    parts, held, first_summary = [], [], {}
    for fold in range(record["folds"]):
        part = work / f"fold-{fold + 1}.parquet"
        part_embeddings = work / f"fold-{fold + 1}.npy" if embeddings is not None else None
        if not part.is_file():
            logger.info("scoring with the model of fold %d of %d", fold + 1, record["folds"])
            summary = score(fold_dir(run_dir, fold), data, part, embeddings=part_embeddings, resume=resume,
                            judge=False, **options)
            first_summary = first_summary or summary
        rows = np.flatnonzero(assignment == fold)
        parts.append(pq.read_table(part).take(pa.array(rows)))
        held.append(rows)

    def merge() -> dict[str, Any]:
        order = np.argsort(np.concatenate(held), kind="stable")
        manifest = pa.concat_tables(parts).take(pa.array(order))
        manifest = manifest.append_column(pa.field("fold", pa.int8()), pa.array(assignment + 1, pa.int8()))
        shas = [read_metadata(work / f"fold-{f + 1}.parquet")["checkpoint_sha256"] for f in range(record["folds"])]
        first = read_metadata(work / "fold-1.parquet")
        meta = manifest_metadata("scores", **{key: first[key] for key in INHERITED if key in first}, folds=record[
            "folds"], fold_checkpoints=shas, checkpoint_sha256=hashlib.sha256("".join(shas).encode()).hexdigest())
        summary = finish_scores(ScoresOutput.from_table(manifest, first["model"]["subcenters"]), meta, out, embeddings,
                                lambda tmp: _merge_embeddings(work, held, tmp))
        shutil.rmtree(work)
        statuses = pc.value_counts(manifest["status"]).to_pylist()
        non_finite = sum(v["counts"] for v in statuses if v["values"] == f"unreadable: {NON_FINITE}")
        same_in_every_fold = {key: first_summary.get(key) for key in ("resized", "duplicate_paths")}
        return {**summary, "classes": first["num_classes"], "non_finite": non_finite, **same_in_every_fold,
                "folds": record["folds"]}

    return on_rank0(world, merge)


def _merge_embeddings(work: Path, held: list[np.ndarray], out: Path) -> None:
    """Each sample's embedding from the model that left it out, into the ``.npy`` at ``out``."""
    first = np.load(work / "fold-1.npy", mmap_mode="r")
    merged = np.lib.format.open_memmap(out, mode="w+", dtype=first.dtype, shape=first.shape)
    for fold, rows in enumerate(held):
        merged[rows] = np.load(work / f"fold-{fold + 1}.npy", mmap_mode="r")[rows]
    merged.flush()
