"""The eval job: face verification with a run's backbone on a pair list (insightface .bin, CSV, LFW pairs.txt).

Every distinct image is embedded once (with flip test-time augmentation unless turned off), pairs are compared
by the squared L2 distance of their unit embeddings, and :mod:`facecleaner.verification.metrics` gives the
10-fold accuracy, TPR at FPR 1e-3 and 1e-4 and the ROC.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from facecleaner.errors import CheckpointError, InputError
from facecleaner.fileio import check_distinct, check_file_outputs
from facecleaner.jobs.folds import FOLDS_FILE, is_folded
from facecleaner.progress import logger
from facecleaner.sources.base import check_decoding_options
from facecleaner.verification.metrics import DEFAULT_FOLDS, FPR_TARGETS


def evaluate(run_dir: str | Path, pairs: str | Path, root: str | Path | None = None, flip: bool = True,
             roc: str | Path | None = None, batch_size: int = 256, device: str = "auto", precision: str = "auto",
             workers: int | None = None, max_bad_fraction: float = 0.01, folds: int = DEFAULT_FOLDS,
             fpr_targets: tuple[float, ...] = FPR_TARGETS, progress: bool = True) -> dict[str, Any]:
    """Verification accuracy of the model in ``run_dir`` on the pair list ``pairs``; returns the summary.

    ``root`` is where a CSV's or pairs.txt's image paths start [default: the pair file's folder]. ``roc`` writes
    the ROC as a PNG. Pairs with an unreadable image are left out and counted; more than ``max_bad_fraction`` of
    the images unreadable is an error. ``folds`` splits the pairs in order when the list gives no folds.
    """
    from facecleaner.config import default_workers
    from facecleaner.model.checkpoint import MODEL_FILE, load_model
    from facecleaner.model.runtime import resolve_device, resolve_precision
    from facecleaner.sources.base import too_many_unreadable
    from facecleaner.verification import metrics
    from facecleaner.verification.embed import embed_images
    from facecleaner.verification.pairs import read_pairs

    run_dir, pairs_path = Path(run_dir), Path(pairs)
    roc_path = Path(roc) if roc is not None else None
    _check_options(batch_size, workers, max_bad_fraction, folds, fpr_targets, roc_path)
    if is_folded(run_dir):
        raise CheckpointError(f"{run_dir} holds the models of a held-out training ({FOLDS_FILE}), not one model",
                              f"evaluate one of them ({run_dir / 'fold-1'}), or train one model on all the data")
    model_file = run_dir / MODEL_FILE if run_dir.is_dir() else run_dir
    check_distinct({"model": model_file, "PAIRS": pairs_path}, {"--roc": roc_path})
    check_file_outputs({"--roc": roc_path})
    listed = read_pairs(pairs_path, root)
    _check_roc_is_no_image(roc_path, listed.images)
    model = load_model(run_dir)
    spec = model.spec
    torch_device = resolve_device(device)
    chosen_precision = resolve_precision(precision, torch_device)
    images = listed.images
    count = len(images.table())
    logger.info("embedding %d images of %s%s", count, listed.description, " with flip TTA" if flip else "")
    embedded = embed_images(model.backbone, images, spec.image_size, spec.embedding_size, torch_device,
                            chosen_precision, batch_size, default_workers(torch_device) if workers is None else workers,
                            flip=flip, progress=progress)
    unreadable = np.flatnonzero(~embedded.readable)
    if len(unreadable) > max_bad_fraction * count:
        raise too_many_unreadable(images, unreadable.tolist(), lambda row: embedded.reasons[row] or None,
                                  max_bad_fraction)
    usable = embedded.readable[listed.first] & embedded.readable[listed.second]
    unit = metrics.unit_rows(embedded.embeddings)
    distance = metrics.squared_distances(unit[listed.first[usable]], unit[listed.second[usable]])
    same = listed.same[usable]
    fold_of = _folds(listed.folds, usable, folds, pairs_path)
    if same.all() or not same.any():
        raise InputError(f"{pairs_path} has only {'matched' if same.any() else 'mismatched'} pairs "
                         f"({len(same)} evaluated)", "verification needs both matched and mismatched pairs")
    result = metrics.kfold_accuracy(distance, same, fold_of)
    curve = metrics.roc_curve(distance, same)
    rates = {metrics.fpr_key(t): metrics.tpr_at_fpr(distance, same, t) for t in fpr_targets}
    threshold = float(np.mean(result.thresholds))
    summary = {
        "pairs_file": str(pairs_path), "format": listed.format, "model": str(model_file),
        "pairs": len(listed.same), "evaluated_pairs": int(usable.sum()), "unreadable_pairs": int((~usable).sum()),
        "matched_pairs": int(same.sum()), "mismatched_pairs": int((~same).sum()),
        "images": count, "unreadable_images": len(unreadable), "flip": flip, "folds": len(result.accuracies),
        "accuracy": float(np.mean(result.accuracies)), "accuracy_std": float(np.std(result.accuracies)),
        "fold_accuracies": result.accuracies.tolist(),
        "threshold": threshold, "threshold_angle": metrics.distance_to_degrees(threshold),
        "fold_thresholds": result.thresholds.tolist(),
        "tpr_at_fpr": {key: rate.tpr for key, rate in rates.items()},
        "tpr_at_fpr_threshold": {key: rate.threshold for key, rate in rates.items()},
        "tpr_at_fpr_needs_mismatched": {key: rate.needs_negatives for key, rate in rates.items()},
        "auc": curve.auc, "roc": str(roc_path) if roc_path is not None else None,
        "image_size": spec.image_size, "device": str(torch_device), "precision": chosen_precision,
    }
    if len(unreadable):
        logger.warning("%d of %d images are unreadable: %d of %d pairs left out", len(unreadable), count,
                       summary["unreadable_pairs"], summary["pairs"])
    if roc_path is not None:
        from facecleaner.verification.figure import save_roc

        title = (f"{pairs_path.name}: accuracy {summary['accuracy']:.4f} ± {summary['accuracy_std']:.4f} "
                 f"({summary['evaluated_pairs']} pairs, flip {'on' if flip else 'off'})")
        save_roc(roc_path, curve, title, summary["tpr_at_fpr"])
    return summary


def _check_roc_is_no_image(roc: Path | None, images: Any) -> None:
    """--roc may not be one of the pair list's image files (a .png face would be overwritten)."""
    resolved_path = getattr(images, "resolved_path", None)
    if roc is None or resolved_path is None:
        return
    target = os.path.realpath(roc)
    for index in range(len(images.table())):
        if os.path.realpath(resolved_path(index)) == target:
            raise InputError(f"--roc {roc} is one of the images of the pair list: writing it would destroy it",
                             "choose another --roc")


def _folds(given: np.ndarray | None, usable: np.ndarray, folds: int, pairs_path: Path) -> np.ndarray:
    """Each evaluated pair's fold: the list's own, else ``folds`` parts in order."""
    from facecleaner.verification.metrics import contiguous_folds

    count = int(usable.sum())
    if given is not None:
        fold_of = given[usable]
        if len(np.unique(fold_of)) < 2:
            raise InputError(f"{pairs_path} puts every evaluated pair in one fold",
                             "give at least two folds, or leave the fold column out")
        return fold_of
    if count < folds:
        raise InputError(f"{pairs_path} has {count} evaluated pairs, fewer than the {folds} folds",
                         "give at least as many readable pairs as folds")
    return contiguous_folds(count, folds)


def _check_options(batch_size: int, workers: int | None, max_bad_fraction: float, folds: int,
                   fpr_targets: tuple[float, ...], roc: Path | None) -> None:
    """The API's own check of what the CLI's option types check."""
    check_decoding_options(batch_size, workers, max_bad_fraction, "images")
    if not 2 <= folds:
        raise InputError(f"folds={folds} must be at least 2", "the standard protocol uses 10")
    if not all(0 < t < 1 for t in fpr_targets):
        raise InputError(f"FPR targets {fpr_targets} must lie between 0 and 1", "give rates such as 1e-3")
    if roc is not None and roc.suffix.lower() != ".png":
        raise InputError(f"--roc {roc} must end in .png", "the ROC is written as a PNG image")
