"""Export a clean manifest for other trainers: ``rec``, ``folder``, ``csv`` or ``lst``.

One module per format (:mod:`.rec`, :mod:`.folder`, :mod:`.lists`); :mod:`.resolve` finds every row's image
(a file, or a record of the source RecordIO pair) and counts the rows that cannot be exported; :mod:`.names`
turns untrusted labels into safe folder names. Every format writes atomically: a failed export leaves DEST as
it was.

=========  ==========================================  ==============================================
format     DEST                                        content
=========  ==========================================  ==============================================
rec        a folder (new, or without the three files)  ``train.rec``, ``train.idx``, ``property``
folder     a new or empty folder                       ``DEST/<label>/<file>`` (hardlink|symlink|copy)
csv        a file                                      ``path,label`` with absolute paths
lst        a file                                      ``index<TAB>label<TAB>path`` (mxnet im2rec)
=========  ==========================================  ==============================================
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from facecleaner.errors import InputError
from facecleaner.exports.folder import LINKS
from facecleaner.exports.resolve import ExportInput, Tally
from facecleaner.fileio import check_distinct
from facecleaner.manifests.companions import check_companions
from facecleaner.manifests.io import input_sibling, is_csv, parquet_info
from facecleaner.progress import logger

FORMATS = ("rec", "folder", "csv", "lst")

__all__ = ["FORMATS", "LINKS", "export_manifest"]


def export_manifest(manifest: str | Path, fmt: str, out: str | Path, link: str = "hardlink",
                    label_column: str = "new_label", progress: bool = True, root: str | Path | None = None,
                    ) -> dict[str, Any]:
    """Export ``manifest`` as ``fmt`` to ``out``; returns a JSON-ready summary.

    ``manifest`` is a clean manifest written by ``prune``, or any Parquet or CSV table with ``path`` and
    ``label_column`` (``new_label`` by default, the contiguous 0..C-1; ``label`` the original identity; or
    any other column). ``root`` is the folder relative paths start from, or the ``train.rec`` RecordIO rows
    come from, when the manifest's metadata does not say. ``link`` applies to ``folder`` only. Rows whose
    image is missing or unreadable are skipped and counted (``skipped``, ``skipped_by_reason``,
    ``skipped_examples``); if none can be exported it is an InputError. When the manifest's prune companions
    come from another prune run, a warning says so.
    """
    if fmt not in FORMATS:
        raise InputError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}", "choose rec, folder, csv or lst")
    if link not in LINKS:
        raise InputError(f"--link {link!r} is not one of {', '.join(LINKS)}", "choose hardlink, symlink or copy")
    if not label_column:
        raise InputError("--label-column is empty", "name the column that holds each row's label")
    manifest, out = Path(manifest), Path(out)
    root = Path(root) if root is not None else None
    _check_outputs(manifest, fmt, out, root)
    inp = ExportInput(manifest, label_column, root)
    if inp.meta:
        warning = check_companions(manifest).warning()
        if warning:
            logger.warning(warning)
    tally = Tally(rows=len(inp))
    try:
        if fmt == "rec":
            from facecleaner.exports.rec import export_rec

            written = export_rec(inp, out, tally, progress)
        elif fmt == "folder":
            from facecleaner.exports.folder import export_folder

            written = export_folder(inp, out, link, tally, progress)
        else:
            from facecleaner.exports.lists import export_list

            written = export_list(inp, out, fmt, tally, progress)
    finally:
        inp.close()
    summary = {"format": fmt, "manifest": str(manifest), "label_column": label_column, **tally.summary(), **written}
    if tally.skipped:
        logger.warning("%d of %d images could not be exported (%s); first: %s", summary["skipped"], len(inp),
                       ", ".join(f"{n} {reason}" for reason, n in summary["skipped_by_reason"].items()),
                       tally.examples[0])
    return summary


def _check_outputs(manifest: Path, fmt: str, out: Path, root: Path | None) -> None:
    """Refuse, before reading anything but metadata, a DEST that would overwrite or hold an input: the
    manifest, its prune companions, ``--root`` or the source train.rec its metadata names."""
    from facecleaner.exports.rec import REC_FILES

    inputs = _inputs(manifest, root)
    if fmt in ("csv", "lst"):
        check_distinct(inputs, {"--out": out})
        return
    outputs = {"--out": out} | ({f"--out (its {name})": out / name for name in REC_FILES} if fmt == "rec" else {})
    check_distinct(inputs, outputs)
    folder = Path(os.path.realpath(out))
    for name, path in inputs.items():
        if path is not None and folder in Path(os.path.realpath(path)).parents:
            raise InputError(f"--out {out} holds the {name} {path}: the export would be written among its inputs",
                             "export into a new folder outside the manifest's")


def _inputs(manifest: Path, root: Path | None) -> dict[str, Path | None]:
    """What an export reads, named as its error messages say them."""
    inputs: dict[str, Path | None] = {"manifest": manifest, "--root": root,
                                      "manifest's classes file": input_sibling(manifest, "classes"),
                                      "manifest's dropped file": input_sibling(manifest, "dropped")}
    if is_csv(manifest) or not manifest.is_file():
        return inputs
    try:
        meta = parquet_info(manifest)[0] or {}
    except InputError:
        return inputs  # ExportInput says what is wrong with it
    companions = meta.get("companions") if isinstance(meta.get("companions"), dict) else {}
    folder = Path(os.path.realpath(manifest)).parent  # companion paths are relative to the file, not to a link
    for role, entry in companions.items():
        if isinstance(entry, dict) and isinstance(entry.get("path"), str):
            inputs[f"manifest's {role} companion"] = folder / entry["path"]
    source = meta.get("input_root")
    if isinstance(source, str) and source.endswith(".rec"):
        inputs |= {"source train.rec": Path(source), "source train.idx": Path(source).with_suffix(".idx")}
    return inputs
