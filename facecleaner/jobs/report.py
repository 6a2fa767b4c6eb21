"""The report job: scores (and optionally a clean manifest) → a folder holding ``index.html``, its figures
(``figures/*.png``), contact-sheet thumbnails (``thumbs/*.jpg``) and ``summary.json`` with the same numbers.

The folder is built under a temporary name beside ``out`` and renamed into place when complete: an earlier
report there is replaced whole (and only a report: a folder holding anything else is refused), and an ``out``
that is, or holds, one of the report's inputs is refused before any work.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from facecleaner import __version__
from facecleaner.errors import InputError
from facecleaner.fileio import check_distinct, publish, recover_outputs, temporary_beside, temporary_name
from facecleaner.manifests.io import input_sibling, parquet_info
from facecleaner.progress import logger
from facecleaner.pruning.rules import DEFAULT_ANGLE

AUTO = "auto"
INDEX, SUMMARY, FIGURES = "index.html", "summary.json", "figures"
#: What a report folder holds; an ``out`` holding anything else is not replaced.
ENTRIES = frozenset({INDEX, SUMMARY, FIGURES, "thumbs"})
REPORT_KIND = "facecleaner report"
MAX_THUMBNAILS = 600
WORST_CLASSES = 20
SAMPLE_CLASSES = 5


def report(scores: str | Path, out: str | Path, clean: str | Path | None = None,
           angle: float | str = DEFAULT_ANGLE, max_thumbnails: int = MAX_THUMBNAILS,
           worst_classes: int = WORST_CLASSES, sample_classes: int = SAMPLE_CLASSES, seed: int = 0,
           root: str | Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Write a report on a scoring run into the folder ``out``; returns the summary (``out/summary.json``).

    Without ``clean``, kept and dropped follow the paper's rule at ``angle`` (degrees, or ``"auto"``: the
    valley :func:`facecleaner.pruning.threshold.choose_threshold` finds), as ``prune`` would decide; with it,
    kept are the clean manifest's rows and reasons come from its dropped companion. Contact sheets show the
    ``worst_classes`` identities losing the largest share and ``sample_classes`` others drawn with ``seed``,
    at most ``max_thumbnails`` thumbnails in all; ``root`` is where the images' relative paths start (or the
    ``train.rec`` of RecordIO rows) when the scores' metadata does not say.
    """
    from facecleaner.report import figures, page, sheets
    from facecleaner.report.data import REASON_NAMES, load_run, model_health

    _check_options(angle, max_thumbnails, worst_classes, sample_classes, seed)
    scores, out = Path(scores), Path(out)
    clean = Path(clean) if clean is not None else None
    root = Path(root) if root is not None else None
    if root is not None and not root.exists():
        raise InputError(f"--root {root} does not exist",
                         "give the folder relative paths start from, or the train.rec of RecordIO rows")
    _check_out(out, _inputs(scores, clean, root))
    view = load_run(scores, clean, angle)
    warnings = list(view.warnings)
    health, health_source = model_health(view)
    auto_angle = view.auto.angle if view.auto.noise_mode else None
    marks = figures.marks(view.threshold, auto_angle, DEFAULT_ANGLE)
    columns = view.columns
    present, samples, dropped = view.class_counts()
    nearest_other = _column(scores, "nearest_other_class")
    recover_outputs([out])
    tmp = temporary_beside(out, directory=True)
    try:
        (tmp / FIGURES).mkdir()
        numbers = {
            "angle_histogram": figures.angle_histogram(columns.angle, columns.readable, columns.is_dominant, marks,
                                                       tmp / FIGURES / "angles.png"),
            "kept_share": figures.kept_share(columns.angle, columns.readable, marks, tmp / FIGURES / "kept.png",
                                             (view.threshold, float(view.keep.mean()) if len(view) else 0.0)),
            "drop_rates": figures.drop_rates(samples, dropped, tmp / FIGURES / "drop_rates.png"),
            "health": figures.health_panel(health, tmp / FIGURES / "health.png"),
        }
        numbers["health"]["health"] = health
        planned = sheets.plan_sheets(view, worst_classes, sample_classes, seed, max_thumbnails, nearest_other)
        try:
            thumbs = sheets.write_thumbnails(planned, view, tmp / sheets.THUMBS, root, progress)
        except InputError as exc:  # the images cannot be located: the report stands without its pictures
            warnings.append(f"no thumbnails: {exc}")
            thumbs = {"planned": sum(len(s.kept_thumbs) + len(s.dropped_thumbs) for s in planned), "written": 0,
                      "failed": 0, "examples": []}
        if thumbs["failed"]:
            warnings.append(f"{thumbs['failed']} of {thumbs['planned']} images could not be drawn (first: "
                            f"{thumbs['examples'][0]})")
        health_warnings = numbers["health"]["warnings"]
        warnings.extend(f"the scores' model: {w}" for w in health_warnings)
        rate = dropped / np.maximum(samples, 1)
        order = np.lexsort((present, -dropped, -rate))[:WORST_CLASSES]
        summary = {
            "kind": REPORT_KIND, "facecleaner_version": __version__,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "out": str(out), "index": str(out / INDEX), "scores": str(scores), "scores_name": scores.name,
            "clean": str(clean) if clean is not None else None,
            "dropped_manifest": str(view.dropped) if view.dropped is not None else None,
            "scores_run_id": view.meta.get("run_id"), "clean_run_id": view.clean_meta.get("run_id"),
            "model": view.meta.get("model") if isinstance(view.meta.get("model"), dict) else None,
            "rule": view.rule,
            "threshold": {"angle": view.threshold, "choice": view.threshold_choice},
            "auto_threshold": view.auto.as_dict(),
            "counts": {"samples": len(view), "unreadable": int((~columns.readable).sum()),
                       "kept": int(view.keep.sum()), "dropped": int((~view.keep).sum()),
                       "by_reason": {name: int((view.reason == code).sum()) for code, name in enumerate(REASON_NAMES)
                                     if name != "unknown" or (view.reason == code).any()},
                       "classes": len(present), "classes_kept": int((dropped < samples).sum())},
            "worst_classes": [{"class_index": int(present[i]), "label": label, "samples": int(samples[i]),
                               "dropped": int(dropped[i]), "drop_share": float(rate[i])}
                              for i, label in zip(order, view.class_labels(present[order]), strict=True)],
            "figures": numbers, "health_source": health_source,
            "thumbnails": {**thumbs, "cap": max_thumbnails},
            "sheets": [s.as_dict() for s in planned],
            "options": {"angle": angle, "max_thumbnails": max_thumbnails, "worst_classes": worst_classes,
                        "sample_classes": sample_classes, "seed": seed, "root": str(root) if root else None},
            "warnings": warnings,
        }
        summary = _json_ready(summary)
        (tmp / INDEX).write_text(page.render(summary, planned), encoding="utf-8")
        (tmp / SUMMARY).write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n", encoding="utf-8")
        _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for warning in warnings:
        logger.warning("%s", warning)
    return summary


def _check_options(angle: float | str, max_thumbnails: int, worst_classes: int, sample_classes: int,
                   seed: int) -> None:
    """The option ranges (the CLI enforces them as usage errors; library callers get an InputError)."""
    if angle != AUTO and not (isinstance(angle, int | float) and not isinstance(angle, bool)
                              and 0.0 < angle < 180.0):
        raise InputError(f"--angle {angle!r} is neither 'auto' nor in (0, 180) degrees",
                         "the paper's threshold is 75; 'auto' reads it from the scores")
    for name, value in (("--max-thumbnails", max_thumbnails), ("--worst-classes", worst_classes),
                        ("--sample-classes", sample_classes), ("--seed", seed)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise InputError(f"{name} {value!r} must be a whole number, 0 or more", "give a count such as 5")


def _inputs(scores: Path, clean: Path | None, root: Path | None) -> dict[str, Path | None]:
    """What the report reads, named as its error messages say them: the manifests and their companions, and
    where the images come from (``--root``, or the input folder or train.rec the scores' metadata names)."""
    inputs: dict[str, Path | None] = {"scores": scores, "scores' classes file": input_sibling(scores, "classes"),
                                      "--root": root}
    if clean is not None:
        inputs |= {"--clean": clean, "--clean's dropped file": input_sibling(clean, "dropped"),
                   "--clean's classes file": input_sibling(clean, "classes")}
    try:
        meta = parquet_info(scores)[0] if scores.is_file() else None
    except InputError:
        meta = None  # reading the scores says what is wrong with them
    source = (meta or {}).get("input_root")
    if isinstance(source, str):
        inputs["images' folder" if not source.endswith(".rec") else "source train.rec"] = Path(source)
        if source.endswith(".rec"):
            inputs["source train.idx"] = Path(source).with_suffix(".idx")
    return inputs


def _check_out(out: Path, inputs: dict[str, Path | None]) -> None:
    """Refuse an ``out`` that is an input, holds one, is a file or a link, or is a folder holding anything but an
    earlier report (which is replaced whole)."""
    check_distinct(inputs, {"--out": out})
    folder = Path(os.path.realpath(out))
    for name, path in inputs.items():
        if path is not None and folder in Path(os.path.realpath(path)).parents:
            raise InputError(f"--out {out} holds the {name} {path}: replacing the folder would destroy it",
                             "write the report into a new folder")
    if out.is_symlink():
        raise InputError(f"--out {out} is a symbolic link", "give the report folder itself, or a new folder")
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file", "give a folder for the report (a new one, or an earlier report)")
    if out.is_dir():
        entries = set(os.listdir(out))
        if entries and not _is_report(out):
            raise InputError(f"--out {out} is a folder holding other files (not an earlier report)",
                             "write the report into a new or empty folder")
        extra = sorted(entries - ENTRIES)
        if entries and extra:
            raise InputError(f"--out {out} is an earlier report that also holds {', '.join(extra[:3])}",
                             "move those files out, or write the report into a new folder")


def _is_report(folder: Path) -> bool:
    try:
        return json.loads((folder / SUMMARY).read_text(encoding="utf-8")).get("kind") == REPORT_KIND
    except (OSError, ValueError, AttributeError):
        return False


def _publish(tmp: Path, out: Path) -> None:
    """Rename the finished folder onto ``out``; an earlier report (or empty folder) there is moved aside first
    and removed after (a crash between the two renames leaves owner-tagged temporaries the next run removes)."""
    if not out.exists():
        publish(tmp, out)
        return
    old = temporary_name(out)
    os.replace(out, old)
    try:
        publish(tmp, out)
    except BaseException:
        os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _column(scores: Path, name: str) -> np.ndarray | None:
    """An integer column of the scores, -1 where null, or None when the file has no such column."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    if name not in pq.read_schema(scores).names:
        return None
    try:
        return pc.fill_null(pq.read_table(scores, columns=[name])[name].cast("int64"), -1).to_numpy()
    except (ValueError, TypeError, NotImplementedError):  # an edited column of another type: not drawn
        return None


def _json_ready(value: Any) -> Any:
    """``value`` with numpy scalars as Python numbers and non-finite floats as null (JSON has no NaN)."""
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_ready(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value
