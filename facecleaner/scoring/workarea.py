"""score's resumable work area: each batch's measurements, kept beside ``--out`` as they are made.

The dominant sub-center vote needs every sample, so the manifest can only be written at the end. What can be
kept as the run goes are the measurements the vote and the angles are made from (:class:`BatchMeasurements`:
own-class cosines, nearest other class, readable/reason, resized; with ``--embeddings``, the embeddings).
``<out>.resume/`` holds them; a killed run leaves it behind, and ``--resume`` measures only the batches not in
it. The manifest is always made from these files, so a resumed run writes what an uninterrupted one writes.

- ``stamp.json`` says what the measurements belong to (model, input, batch size, precision, device kind,
  embeddings); ``--resume`` refuses a work area whose stamp differs. It also names the process using it, so
  that no run replaces the work area of one still going on this machine. The folder is published with its
  stamp, so it never exists without one.
- ``batches-<first>-<end>.npz`` holds the consecutive batches ``[first, end)`` of the one-process batch order,
  published atomically. Under torchrun every rank writes its own and rank 0 reads them all, one at a time, so
  the folder of ``--out`` must be one that every rank sees.
- ``embeddings.npy`` (with ``--embeddings``) is the final float16 array, made whole (zeros) when the run starts:
  each rank writes its own rows into it (plain writes, never a shared map), synced before the part that names
  them is published, and the finished run links it into place. No embedding ever travels between ranks.
- The work area is not a temporary: only a finished run, or a fresh run (without ``--resume``), removes it.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from facecleaner.errors import FaceCleanerError, InputError
from facecleaner.fileio import (
    atomic_output,
    owner_alive,
    owner_tag,
    publish,
    remove_dead_temporaries,
    temporary_beside,
)
from facecleaner.progress import logger
from facecleaner.scoring.measure import MEASURED, BatchMeasurements

WORK_SUFFIX = ".resume"
STAMP_FILE = "stamp.json"
FORMAT = "facecleaner-score-work/2"
EMBEDDINGS_FILE = "embeddings.npy"
#: A part is written at least every PART_ROWS samples, and at least PARTS_PER_PASS times in a pass, so a crash
#: loses at most that much work (a few seconds on a GPU, a twentieth of a small run).
PART_ROWS = 1 << 16
PARTS_PER_PASS = 20

_PART = re.compile(r"batches-(\d+)-(\d+)\.npz")
_PART_TEMPORARY = re.compile(r"\.(batches-\d+-\d+\.npz)\..+\.tmp")
_STAMP_NAMES = {"format": "format", "checkpoint_sha256": "model sha256", "input_fingerprint": "input fingerprint",
                "rows": "rows", "batch_size": "batch size", "precision": "precision", "device": "device",
                "embeddings": "embeddings"}


def work_area_path(out: Path) -> Path:
    """Where the work area of the scores manifest ``out`` lives: ``<out>.resume/`` beside it."""
    return out.with_name(out.name + WORK_SUFFIX)


def batches_per_part(batch_size: int, batches: int) -> int:
    """How many consecutive batches one part holds in a pass over ``batches`` batches."""
    return max(1, min(PART_ROWS // batch_size, batches // PARTS_PER_PASS))


class WorkArea:
    """The work area of one scores manifest (see the module notes)."""

    def __init__(self, out: Path) -> None:
        self.folder = work_area_path(Path(out))

    def start(self, stamp: dict[str, Any], resume: bool, embeddings: tuple[int, int] | None = None) -> None:
        """Make the work area ready for a run stamped ``stamp``: kept when resuming (if it is this run's),
        replaced otherwise; a fresh one holds the zeroed ``embeddings`` array of that (rows, dim) shape when
        asked. A folder of that name that is not a work area, or one a live process on this machine is using, is
        never touched."""
        remove_dead_temporaries(self.folder)
        stamp = {"format": FORMAT, **stamp}
        found = self._stamp()
        if found is not None:
            self._refuse_live_owner(str(found.get("owner", "")))
        if resume and found is not None:
            self._continue(found, stamp)
            return
        if found is not None:
            logger.warning("starting over: removed the work area %s of an earlier run (--resume would have "
                           "continued it)", self.folder)
            shutil.rmtree(self.folder)
        elif resume:
            logger.info("nothing to resume in %s: scoring from the start", self.folder)
        fresh = temporary_beside(self.folder, directory=True)
        (fresh / STAMP_FILE).write_text(_stamp_text(stamp), encoding="utf-8")
        if embeddings is not None:  # a sparse file: disk is used as rows are written
            store = np.lib.format.open_memmap(fresh / EMBEDDINGS_FILE, mode="w+", dtype=np.float16, shape=embeddings)
            del store  # closes the map: each rank maps the file itself
        publish(fresh, self.folder)

    def _continue(self, found: dict[str, Any], stamp: dict[str, Any]) -> None:
        """Take over the work area of an earlier run if it was stamped ``stamp``; refuse a foreign one."""
        differences = [f"{_STAMP_NAMES.get(key, key)} {_short(found.get(key))} there, {_short(value)} now"
                       for key, value in stamp.items() if found.get(key) != value]
        if differences:
            raise InputError(f"the work area {self.folder} belongs to another run ({'; '.join(differences)})",
                             "rerun with the model, data and options it was started with, or without --resume "
                             "to start over")
        for entry in self.folder.iterdir():
            temporary = _PART_TEMPORARY.fullmatch(entry.name)
            if temporary:
                remove_dead_temporaries(self.folder / temporary[1])
        with atomic_output(self.folder / STAMP_FILE) as tmp:
            tmp.write_text(_stamp_text(stamp), encoding="utf-8")

    def _refuse_live_owner(self, owner: str) -> None:
        """Another score process on this machine that is still running owns the work area: leave it alone."""
        mine = owner_tag()
        if owner and owner != mine and owner.rpartition("-")[0] == mine.rpartition("-")[0] and owner_alive(owner):
            raise InputError(f"the work area {self.folder} belongs to a score run that is still going (process "
                             f"{owner.rpartition('-')[2]})", "wait for it to finish, or give another --out")

    def _stamp(self) -> dict[str, Any] | None:
        """The stamp of the folder, None when there is no folder; InputError when the folder is not ours."""
        if not self.folder.exists() and not self.folder.is_symlink():
            return None
        try:
            stamp = json.loads((self.folder / STAMP_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            stamp = None
        if not isinstance(stamp, dict) or not str(stamp.get("format", "")).startswith("facecleaner-score-work/"):
            raise InputError(f"{self.folder} is in the way: it is not a score work area, and score keeps its "
                             "measurements there", "move it away, or choose another --out")
        return stamp

    def finished_batches(self) -> list[int]:
        """The batches whose measurements are kept, in order."""
        done: set[int] = set()
        for entry in self.folder.iterdir():
            match = _PART.fullmatch(entry.name)
            if match:
                done.update(range(int(match[1]), int(match[2])))
        return sorted(done)

    def writer(self, batches_per_part: int, embeddings: bool) -> PartWriter:
        """This process's writer of parts (and of its rows of the embeddings, when they are kept)."""
        path = self.folder / EMBEDDINGS_FILE
        if embeddings and not path.is_file():
            raise FaceCleanerError(f"the work area {self.folder} has lost its {EMBEDDINGS_FILE} (or this process "
                                   "cannot see it)", "run the same command without --resume to start over; under "
                                   "torchrun on several machines --out must be on a filesystem they all share")
        return PartWriter(self.folder, batches_per_part, EmbeddingRows(path) if embeddings else None)

    def _parts(self) -> list[Path]:
        return sorted(p for p in self.folder.iterdir() if _PART.fullmatch(p.name))

    def check_complete(self, batches: int) -> None:
        """An error naming the first missing batch unless the parts hold all ``batches``."""
        missing = sorted(set(range(batches)) - set(self.finished_batches()))
        if missing:
            raise FaceCleanerError(f"the work area {self.folder} lacks the measurements of {len(missing)} batches "
                                   f"(the first is batch {missing[0] + 1})",
                                   "under torchrun on several machines, --out must be on a filesystem they all "
                                   "share; run the same command with --resume to measure the rest")

    def parts(self, names: tuple[str, ...] = ("rows", *MEASURED)) -> Iterator[dict[str, np.ndarray]]:
        """The ``names`` arrays of each part, one part at a time, in row order (parts hold consecutive batches)."""
        for path in self._parts():
            with _load(path) as part:
                yield {name: part[name] for name in names}  # each access reads the file

    def take_embeddings(self, path: Path) -> None:
        """Give the finished embeddings array the name ``path`` too (a hard link; a copy when ``path`` is on
        another file system): the work area keeps its own name for it until the run is over, so a crash while the
        outputs are published loses nothing that ``--resume`` needs."""
        source = self.folder / EMBEDDINGS_FILE
        path.unlink(missing_ok=True)  # a temporary made for it by the caller
        try:
            os.link(source, path)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.ENOTSUP):
                raise
            shutil.copyfile(source, path)

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


class EmbeddingRows:
    """One process's writes into the work area's embeddings array: each run of consecutive rows is one ``pwrite``
    at its byte offset. Never a shared memory map: on NFS a write through a map writes whole pages back, with the
    rows of another rank that share the page as this process last read them (zeros)."""

    def __init__(self, path: Path) -> None:
        self._file = open(path, "r+b", buffering=0)  # noqa: SIM115 - held for the writer's life
        version = np.lib.format.read_magic(self._file)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
            np.lib.format.read_array_header_2_0
        shape, _, dtype = read_header(self._file)
        self._start = self._file.tell()
        self._dtype = dtype
        self._row_bytes = int(np.prod(shape[1:])) * dtype.itemsize

    def write(self, rows: np.ndarray, values: np.ndarray) -> None:
        """Put ``values[i]`` into row ``rows[i]``."""
        values = np.ascontiguousarray(values, dtype=self._dtype)
        breaks = np.flatnonzero(np.diff(rows) != 1) + 1
        for first, end in zip(np.r_[0, breaks], np.r_[breaks, len(rows)], strict=True):
            offset = self._start + int(rows[first]) * self._row_bytes
            os.pwrite(self._file.fileno(), values[first:end].tobytes(), offset)

    def sync(self) -> None:
        """Make the rows written so far durable (before the part that names them is published)."""
        os.fsync(self._file.fileno())


class PartWriter:
    """Collects consecutive batches and publishes them as one part every ``batches_per_part`` batches; with a
    ``store`` (the work area's embeddings array), writes each batch's embeddings into their rows."""

    def __init__(self, folder: Path, batches_per_part: int, store: EmbeddingRows | None = None) -> None:
        self.folder = folder
        self.batches_per_part = batches_per_part
        self.store = store
        self._pending: list[tuple[int, BatchMeasurements]] = []

    def add(self, batch: int, measurements: BatchMeasurements) -> None:
        if self._pending and batch != self._pending[-1][0] + 1:
            self.flush()  # a part holds consecutive batches only
        if self.store is not None and measurements.embeddings is not None:
            self.store.write(measurements.rows, measurements.embeddings)
        self._pending.append((batch, measurements))
        if len(self._pending) >= self.batches_per_part:
            self.flush()

    def flush(self) -> None:
        """Publish the pending batches as one part (nothing when none are pending), their embeddings first."""
        if not self._pending:
            return
        if self.store is not None:
            self.store.sync()
        first, end = self._pending[0][0], self._pending[-1][0] + 1
        parts = [m.arrays() for _, m in self._pending]
        arrays = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
        with atomic_output(self.folder / f"batches-{first:09d}-{end:09d}.npz") as tmp, open(tmp, "wb") as handle:
            np.savez(handle, **arrays)
        self._pending = []


def _load(path: Path) -> np.lib.npyio.NpzFile:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise InputError(f"{path} is damaged ({exc})", "run the same command without --resume to start over") from exc


def _stamp_text(stamp: dict[str, Any]) -> str:
    """The stamp as written: with this process as the owner (not part of what must match)."""
    return json.dumps({**stamp, "owner": owner_tag()}, sort_keys=True)


def _short(value: object) -> str:
    text = str(value)
    return text[:12] + "…" if len(text) > 16 else text
