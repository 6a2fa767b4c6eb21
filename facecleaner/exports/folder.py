"""``DEST/<label>/<file>``: identity folders, with image files hard-linked, symlinked or copied.

Built in a hidden, owner-tagged temporary folder beside DEST (``.<dest>.<host>-<pid>.<hex>.tmp``) and renamed
into place at the end, so DEST is either absent or complete; the tree a killed export left is removed by the
next export to that DEST. Labels and file names are untrusted and pass through
:mod:`facecleaner.exports.names`; RecordIO rows are written out as ``<rec_index>.jpg`` (or the extension their
bytes call for).
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import Any

import pyarrow.compute as pc

from facecleaner.errors import InputError
from facecleaner.exports.names import FileNamer, label_folders
from facecleaner.exports.resolve import ExportInput, Sample, Tally, skip_reason
from facecleaner.fileio import publish, recover_outputs, temporary_beside
from facecleaner.progress import progress_bar

LINKS = ("hardlink", "symlink", "copy")
#: os.link failures that mean "this filesystem pair cannot hard-link": copy instead.
_NO_HARDLINK = frozenset({errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP})
_SIGNATURES = ((b"\xff\xd8\xff", ".jpg"), (b"\x89PNG\r\n\x1a\n", ".png"), (b"BM", ".bmp"), (b"GIF8", ".gif"),
               (b"II*\0", ".tif"), (b"MM\0*", ".tif"))


def image_suffix(data: bytes) -> str:
    """The file extension the encoded bytes call for; ``.jpg`` (insightface's usual) when unknown."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    for signature, suffix in _SIGNATURES:
        if data.startswith(signature):
            return suffix
    return ".jpg"


def check_new_folder(dest: Path) -> None:
    """DEST may be absent or an empty folder; anything else is an InputError (and nothing is touched)."""
    if dest.is_symlink() or (dest.exists() and not dest.is_dir()):
        raise InputError(f"--out {dest} exists and is not a folder", "give a new folder for the export")
    if dest.is_dir() and any(os.scandir(dest)):
        raise InputError(f"--out {dest} exists and is not empty",
                         "give a new or empty folder; an export never writes into existing data")


def export_folder(inp: ExportInput, dest: Path, link: str, tally: Tally, progress: bool) -> dict[str, Any]:
    """Write the identity folders; returns the format's part of the summary (``link`` is checked by the caller,
    :func:`facecleaner.exports.export_manifest`, before any work)."""
    dest = Path(os.path.abspath(dest))
    recover_outputs([dest])
    check_new_folder(dest)
    folders = label_folders(pc.unique(inp.labels).to_pylist())
    renamed = {label: name for label, name in folders.items()
               if not isinstance(label, int) and name != str(label)}
    build = temporary_beside(dest, directory=True)
    counts = {"hardlinked": 0, "symlinked": 0, "copied": 0, "hardlink_fell_back_to_copy": 0, "from_records": 0,
              "renamed_files": 0}
    namer = FileNamer()
    made: set[str] = set()
    try:
        with progress_bar(len(inp), "export folder", progress) as bar:
            for sample in inp.samples():
                bar.update(1)
                folder = folders[sample.label]
                if folder not in made:
                    (build / folder).mkdir()
                    made.add(folder)
                try:
                    data = inp.read_bytes(sample) if sample.path is None else None
                    wanted = (f"{sample.rec_index}{image_suffix(data)}" if data is not None
                              else os.path.basename(sample.path))
                    name = namer.pick(folder, wanted)
                    target = build / folder / name
                    if data is not None:
                        with open(target, "xb") as handle:
                            handle.write(data)
                        counts["from_records"] += 1
                    else:
                        counts[_place(sample, target, link)] += 1
                except OSError as exc:
                    tally.skip(skip_reason(exc), f"{inp.describe(sample)}: {exc.strerror or exc}")
                    continue
                namer.take(folder, name)
                counts["renamed_files"] += name != wanted
                tally.wrote(sample.label)
        tally.require_some(inp.manifest)
        for folder in made:  # a class whose every image failed leaves no empty folder behind
            with os.scandir(build / folder) as entries:
                if not any(entries):
                    (build / folder).rmdir()
        _publish_folder(build, dest)
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise
    examples = dict(list(renamed.items())[:5])
    return {"dest": str(dest), "link": link, **counts, "renamed_labels": len(renamed),
            "renamed_label_examples": {str(label): name for label, name in examples.items()}}


def _place(sample: Sample, target: Path, link: str) -> str:
    """Put the file of ``sample`` at ``target``; returns the counter to bump."""
    source = sample.path
    if link == "hardlink":
        try:
            os.link(source, target)
            return "hardlinked"
        except OSError as exc:
            if exc.errno not in _NO_HARDLINK:
                raise
        _copy(source, target)
        return "hardlink_fell_back_to_copy"
    if link == "symlink":
        if not os.path.isfile(source):
            raise FileNotFoundError(errno.ENOENT, "no such file", source)
        if not os.access(source, os.R_OK):
            raise PermissionError(errno.EACCES, "not readable", source)
        os.symlink(os.path.abspath(source), target)
        return "symlinked"
    _copy(source, target)
    return "copied"


def _copy(source: str, target: Path) -> None:
    try:
        shutil.copyfile(source, target)
    except BaseException:
        target.unlink(missing_ok=True)
        raise


def _publish_folder(build: Path, dest: Path) -> None:
    """Rename the build folder to DEST (which may only be an empty folder, as at the start)."""
    check_new_folder(dest)  # nobody filled it meanwhile
    publish(build, dest)  # the umask's permissions (the build folder is private), then an atomic rename
