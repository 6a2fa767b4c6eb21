"""Crash-safe output files: written under a temporary name beside the target, renamed only when complete.

- A crash or an error never leaves half a manifest, model or export behind; finished files get the permissions
  the user's umask gives any new file (mkstemp alone would make them private), and each file and its folder
  are fsynced before and after the rename, so a power cut cannot leave a renamed but empty file.
- Temporary names carry their owner (host and PID): ``.<name>.<host>-<pid>.<random>.tmp``. A command calls
  :func:`recover_outputs` when it starts, which removes the temporaries of its outputs whose owner process
  is gone (a kill -9 leaves them) and never those of a live process or of another host.
- Several files that belong together (prune's clean, dropped and classes manifests; a RecordIO triple) are
  published by :func:`atomic_outputs` through a journal: all temporaries are complete and synced, the list of
  renames is written down, then the renames run. A process killed during the renames leaves the journal,
  and the next command on those outputs finishes the renames (or, for ``rollback`` groups, undoes them).
- :func:`check_distinct` refuses, before any work, an output that is one of the command's inputs or another
  of its outputs.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import secrets
import shutil
import socket
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

from facecleaner.errors import InputError

TEMP_SUFFIX = ".tmp"
JOURNAL_PREFIX = ".facecleaner-commit."
JOURNAL_SUFFIX = ".json"
#: The package's logger (``facecleaner.progress.logger``), named here so that this module imports nothing of ours
#: but the errors.
_logger = logging.getLogger("facecleaner")
_TAG = re.compile(r"\.(?P<host>[A-Za-z0-9_-]+)-(?P<pid>[0-9]+)\.[0-9a-f]{8}")


def _host() -> str:
    """This machine's name in temporary names: letters, digits, '_' and '-' only (no dots to split on)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())[:40] or "host"


def owner_tag() -> str:
    """``<host>-<pid>``: who owns a temporary or a journal, so that only dead owners' files are removed."""
    return f"{_host()}-{os.getpid()}"


def temporary_name(path: Path, suffix: str = TEMP_SUFFIX) -> Path:
    """A fresh hidden name beside ``path`` carrying this process's owner tag (nothing is created)."""
    return path.with_name(f".{path.name}.{owner_tag()}.{secrets.token_hex(4)}{suffix}")


def temporary_beside(path: Path, directory: bool = False) -> Path:
    """Create a new empty file (or folder) beside ``path`` under a temporary name, and return it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = temporary_name(path)
        try:
            if directory:
                tmp.mkdir(mode=0o700)
            else:
                os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
            return tmp
        except FileExistsError:
            continue


def owner_alive(tag: str) -> bool:
    """Whether the owner ``<host>-<pid>`` may still run: True for another host (it cannot be checked)."""
    host, _, pid = tag.rpartition("-")
    if host != _host():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _dead_owner(name: str, suffix: str) -> bool:
    match = _TAG.fullmatch(name[: -len(suffix)]) if name.endswith(suffix) else None
    return match is not None and not owner_alive(f"{match['host']}-{match['pid']}")


def remove_dead_temporaries(path: Path) -> list[Path]:
    """Delete the temporaries of ``path`` (files or folders) whose owner process is gone; returns them."""
    path = Path(path)
    folder = path.parent
    prefix = f".{path.name}."
    removed = []
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return removed
    for entry in entries:
        if entry.name.startswith(prefix) and _dead_owner(entry.name[len(prefix) - 1:], TEMP_SUFFIX):
            target = folder / entry.name
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(target, ignore_errors=True)
            else:
                target.unlink(missing_ok=True)
            removed.append(target)
    return removed


def fsync_path(path: Path) -> None:
    """Flush a file's (or a folder's entries') data to disk."""
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if Path(path).is_dir() else 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    except OSError as exc:  # some filesystems cannot sync a folder; the rename is still atomic
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def _umask_mode(directory: bool) -> int:
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


def publish(tmp: Path, path: Path) -> None:
    """Give ``tmp`` the umask's permissions, sync it, rename it onto ``path`` and sync the folder."""
    directory = tmp.is_dir()
    os.chmod(tmp, _umask_mode(directory))
    if not directory:
        fsync_path(tmp)
    os.replace(tmp, path)
    fsync_path(path.parent)


@contextlib.contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path``, on any error it is deleted."""
    target = Path(path)
    tmp = temporary_beside(target)
    try:
        yield tmp
        publish(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_outputs(paths: Sequence[str | Path], rollback: bool = False) -> Iterator[list[Path]]:
    """Yield one temporary path per target; on success all of them are published together.

    The renames are journaled (:func:`commit`): if the process dies among them, the next
    :func:`recover_outputs` on these targets completes them, or with ``rollback`` removes the ones done
    (for outputs that did not exist before, such as a RecordIO export into a new folder).
    """
    targets = [Path(p) for p in paths]
    temps: list[Path] = []
    try:
        for target in targets:
            temps.append(temporary_beside(target))
        yield temps
        commit(list(zip(temps, targets, strict=True)), rollback)
    except BaseException:
        for tmp in temps:
            tmp.unlink(missing_ok=True)
        raise


def commit(pairs: Sequence[tuple[Path, Path]], rollback: bool = False) -> None:
    """Rename every ``(temporary, target)`` pair as one step that survives a crash (see the module notes)."""
    for tmp, _ in pairs:
        os.chmod(tmp, _umask_mode(tmp.is_dir()))
        if not tmp.is_dir():
            fsync_path(tmp)
    folder = pairs[0][1].parent
    journal = folder / f"{JOURNAL_PREFIX}{owner_tag()}.{secrets.token_hex(4)}{JOURNAL_SUFFIX}"
    record = {"rollback": rollback, "pairs": [[os.path.abspath(t), os.path.abspath(p)] for t, p in pairs]}
    with open(journal, "x", encoding="utf-8") as handle:
        json.dump(record, handle)
        handle.flush()
        os.fsync(handle.fileno())
    fsync_path(folder)
    fault_point("journal written")
    for number, (tmp, target) in enumerate(pairs):
        if number:
            fault_point("between renames")
        os.replace(tmp, target)
    for target_folder in {p.parent for _, p in pairs}:
        fsync_path(target_folder)
    journal.unlink()
    fsync_path(folder)


def fault_point(where: str) -> None:
    """Crash tests set ``FACECLEANER_FAULT`` to a point's name to end the process there at once, as kill -9 would
    (no cleanup, no finally blocks; exit status 137). One mechanism for every command's named points."""
    if os.environ.get("FACECLEANER_FAULT") == where:
        os._exit(137)


def recover_journals(folder: Path) -> list[dict]:
    """Finish (or roll back) the journaled commits in ``folder`` whose process died; returns what was done and
    logs it, so every command says the same thing when it repairs what another left."""
    done = []
    try:
        names = [e.name for e in os.scandir(folder) if e.name.startswith(JOURNAL_PREFIX)]
    except (FileNotFoundError, NotADirectoryError):
        return done
    for name in names:
        if not _dead_owner(name[len(JOURNAL_PREFIX) - 1:], JOURNAL_SUFFIX):
            continue
        journal = Path(folder) / name
        try:
            record = json.loads(journal.read_text(encoding="utf-8"))
            pairs = [(Path(t), Path(p)) for t, p in record["pairs"]]
            rollback = bool(record["rollback"])
        except (OSError, ValueError, KeyError, TypeError):
            journal.unlink(missing_ok=True)  # cut off while written: no rename had started
            continue
        for tmp, target in pairs:
            if rollback:
                if tmp.exists():
                    tmp.unlink()
                else:
                    target.unlink(missing_ok=True)
            elif tmp.exists():
                os.replace(tmp, target)
        for target_folder in {p.parent for _, p in pairs}:
            fsync_path(target_folder)
        journal.unlink(missing_ok=True)
        targets = [str(p) for _, p in pairs]
        _logger.info("%s the unfinished publication of %s, which a killed process left",
                     "undid" if rollback else "completed", ", ".join(targets))
        done.append({"rolled_back" if rollback else "completed": targets})
    return done


def recover_outputs(paths: Iterable[str | Path]) -> list[dict]:
    """What a command does first for its outputs: finish or undo dead commits beside them, then remove the
    temporaries dead processes left. Returns the journals it acted on (already logged)."""
    paths = [Path(p) for p in paths]
    done = []
    for folder in dict.fromkeys(p.parent for p in paths):
        done.extend(recover_journals(folder))
    for path in paths:
        remove_dead_temporaries(path)
    return done


def row_position(path: str | Path, row: int) -> str:
    """Where data row ``row`` (0-based) of a table file is, as a person finds it: a CSV's file line (its header
    is line 1), else the row counted from 1."""
    return f"line {row + 2}" if Path(path).suffix.lower() == ".csv" else f"row {row + 1}"


def _same_file(a: Path, b: Path) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)  # hard links, bind mounts
    except OSError:
        return False


def check_file_outputs(outputs: Mapping[str, str | Path | None]) -> None:
    """Refuse, before any work, an output file whose path is an existing folder: the rename that publishes it
    would fail only after all the work, naming a temporary. Keys name the options in the message."""
    for name, path in outputs.items():
        if path is not None and Path(path).is_dir():
            raise InputError(f"{name} {path} is a folder", f"give {name.split()[0]} the name of the file to write")


def check_distinct(inputs: Mapping[str, str | Path | None], outputs: Mapping[str, str | Path | None]) -> None:
    """Refuse an output that resolves to an input or to another output; keys name the options in the message.

    Paths are compared as files or folders alike (an output folder that is the input folder is refused); an
    input *inside* an output folder is the caller's to check, as only the caller knows what it writes there.
    """
    given_inputs = [(name, Path(path)) for name, path in inputs.items() if path is not None]
    given_outputs = [(name, Path(path)) for name, path in outputs.items() if path is not None]
    for number, (name, path) in enumerate(given_outputs):
        for input_name, input_path in given_inputs:
            if _same_file(path, input_path):
                raise InputError(f"{name} {path} is the {input_name} {input_path}: writing it would destroy the input",
                                 f"choose another {name.split()[0]}")
        for other_name, other in given_outputs[:number]:
            if _same_file(path, other):
                raise InputError(f"{name} {path} and {other_name} {other} are the same file: one would overwrite "
                                 "the other", "give each output its own path")
