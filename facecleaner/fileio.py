"""Atomic output files: written under a temporary name beside the target, renamed only when complete.

A crash or an error never leaves half a manifest, model or export behind, and finished files get the
permissions the user's umask gives any new file (mkstemp alone would make them private).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


def temporary_beside(path: Path) -> Path:
    """A new empty file in ``path``'s folder, hidden and marked .tmp, for writing ``path`` atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    return Path(name)


def publish(tmp: Path, path: Path) -> None:
    """Give ``tmp`` the umask's permissions and rename it onto ``path``."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)


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
