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

from pathlib import Path
from typing import Any

from facecleaner.errors import InputError
from facecleaner.exports.folder import LINKS
from facecleaner.exports.resolve import LABEL_COLUMNS, ExportInput, Tally
from facecleaner.progress import logger

FORMATS = ("rec", "folder", "csv", "lst")

__all__ = ["FORMATS", "LABEL_COLUMNS", "LINKS", "export_manifest"]


def export_manifest(manifest: str | Path, fmt: str, out: str | Path, link: str = "hardlink",
                    label_column: str = "new_label", progress: bool = True) -> dict[str, Any]:
    """Export the clean manifest ``manifest`` as ``fmt`` to ``out``; returns a JSON-ready summary.

    ``label_column`` is ``new_label`` (contiguous 0..C-1, the default) or ``label`` (the original identity);
    ``link`` applies to ``folder`` only. Rows whose image is missing or unreadable are skipped and counted
    (``skipped``, ``skipped_by_reason``, ``skipped_examples``); if none can be exported it is an InputError.
    """
    if fmt not in FORMATS:
        raise InputError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}", "choose rec, folder, csv or lst")
    if link not in LINKS:
        raise InputError(f"--link {link!r} is not one of {', '.join(LINKS)}", "choose hardlink, symlink or copy")
    if label_column not in LABEL_COLUMNS:
        raise InputError(f"--label-column {label_column!r} is not one of {', '.join(LABEL_COLUMNS)}",
                         "new_label is the cleaned set's class number, label the original identity")
    inp = ExportInput(Path(manifest), label_column)
    tally = Tally(rows=len(inp))
    try:
        if fmt == "rec":
            from facecleaner.exports.rec import export_rec

            written = export_rec(inp, Path(out), tally, progress)
        elif fmt == "folder":
            from facecleaner.exports.folder import export_folder

            written = export_folder(inp, Path(out), link, tally, progress)
        else:
            from facecleaner.exports.lists import export_list

            written = export_list(inp, Path(out), fmt, tally, progress)
    finally:
        inp.close()
    summary = {"format": fmt, "manifest": str(manifest), "label_column": label_column, **tally.summary(), **written}
    if tally.skipped:
        logger.warning("%d of %d images could not be exported (%s); first: %s", summary["skipped"], len(inp),
                       ", ".join(f"{n} {reason}" for reason, n in summary["skipped_by_reason"].items()),
                       tally.examples[0])
    return summary
