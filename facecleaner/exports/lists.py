"""Lists of absolute image paths: ``csv`` (``path,label``) and ``lst`` (mxnet im2rec's ``index\\tlabel\\tpath``).

Only files can be listed: a manifest of RecordIO records is refused with a pointer to ``folder`` or ``rec``.
Rows whose file is missing or unreadable are left out and counted; the list is written atomically and, like
every export, never replaces an existing file. The temporary a killed export left is removed by the next one.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

from facecleaner.errors import InputError
from facecleaner.exports.resolve import ExportInput, Tally, integer_labels
from facecleaner.fileio import atomic_output, recover_outputs
from facecleaner.progress import progress_bar

#: Characters a .lst line cannot hold inside a path (its fields are tab-separated, one record per line).
_LST_UNSAFE = ("\t", "\n", "\r")


def export_list(inp: ExportInput, dest: Path, fmt: str, tally: Tally, progress: bool) -> dict[str, Any]:
    """Write ``dest`` as a CSV or an im2rec .lst, in manifest order; returns the format's part of the summary."""
    if inp.record_rows:
        raise InputError(f"{inp.manifest} lists {inp.record_rows} RecordIO records, which have no file paths "
                         f"to put in a {fmt} list",
                         "export with --format folder (writes the images out as files) or --format rec")
    dest = Path(os.path.abspath(dest))
    if dest.is_dir():
        raise InputError(f"--out {dest} is a folder", f"give the name of the .{fmt} file to write")
    recover_outputs([dest])
    _refuse_existing(dest, fmt)
    labels = integer_labels(inp, "lst") if fmt == "lst" else None
    with atomic_output(dest) as tmp, open(tmp, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        if fmt == "csv":
            writer.writerow(["path", "label"])
        with progress_bar(len(inp), f"export {fmt}", progress) as bar:
            for sample in inp.samples():
                bar.update(1)
                path = sample.path
                if not os.path.isfile(path):
                    tally.skip("missing", f"{path}: no such file")
                    continue
                if not os.access(path, os.R_OK):
                    tally.skip("unreadable", f"{path}: not readable")
                    continue
                if fmt == "csv":
                    writer.writerow([path, sample.label])
                    tally.wrote(sample.label)
                    continue
                if any(char in path for char in _LST_UNSAFE):
                    tally.skip("unrepresentable", f"{path!r}: a .lst path cannot hold a tab or line break")
                    continue
                label = int(labels[sample.row])
                handle.write(f"{tally.written}\t{label}\t{path}\n")
                tally.wrote(label)
        tally.require_some(inp.manifest)
        _refuse_existing(dest, fmt)  # nobody created it meanwhile
    return {"dest": str(dest), "files": [str(dest)]}


def _refuse_existing(dest: Path, fmt: str) -> None:
    """InputError when ``dest`` exists (a dangling symlink included): an export never overwrites a file."""
    if dest.exists() or dest.is_symlink():
        raise InputError(f"--out {dest} already exists",
                         f"give a new name for the .{fmt} file, or remove the old one; an export never overwrites")
